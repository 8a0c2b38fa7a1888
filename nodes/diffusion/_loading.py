"""Building a model from checkpoint tensors: on the meta device, names and shapes checked, weights assigned once.

Shared by the UNet / VAE loader (checkpoint.py) and the text-encoder loader (text_encoder.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["IGNORED_SUFFIXES", "convert", "load_on_meta"]

# Tensors that checkpoints carry but no model of ours has: CLIP's position_ids buffer, CLIP's logit_scale.
IGNORED_SUFFIXES = ("position_ids", "logit_scale")


def convert(t: torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A tensor on `device`; floating ones also in `dtype` (integer buffers keep theirs)."""
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)


def _named(keys: Sequence[str], prefix: str, limit: int = 20) -> str:
    return ", ".join(prefix + k for k in keys[:limit])


def load_on_meta(
    model_cls: Callable[[Any], torch.nn.Module],
    config: Any,
    shapes: Mapping[str, Sequence[int]],
    fetch: Callable[[str], torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    prefix: str,
    fail: Callable[[str], Exception],
    allow_unexpected: bool = False,
) -> torch.nn.Module:
    """`model_cls(config)` in eval mode without gradients, holding the tensors `fetch(key)` for its state-dict keys.

    The model is built on `meta`, so no weights are allocated before the real ones arrive; `shapes`
    (our key -> shape) is checked against its state dict first, and any missing, misshapen (or, unless
    `allow_unexpected`, unknown) tensors raise `fail(message)`, the message naming each key as
    `prefix + key`. Then each tensor is fetched and converted once and assigned as the parameter
    (assign=True: nothing is allocated and then overwritten).
    """
    with torch.device("meta"):
        model = model_cls(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(shapes))
    unexpected = [] if allow_unexpected else sorted(set(shapes) - set(expected))
    wrong = [f"{k} {tuple(shapes[k])} (expected {tuple(expected[k].shape)})"
             for k in expected if k in shapes and tuple(shapes[k]) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_named(missing, prefix)}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_named(unexpected, prefix)}")
    if wrong:
        problems.append(f"wrong shape: {_named(wrong, prefix)}")
    if problems:
        raise fail("; ".join(problems))
    tensors = {k: convert(fetch(k), dtype, device) for k in expected}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)
