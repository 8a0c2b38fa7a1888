"""Glue between sampling nodes and nodes/diffusion: conditioning lists to `Cond`s with the model's
vector conditioning, denoisers with LoRA stacks applied, progress with latent previews, interrupts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine import NodeContext
from nodes.diffusion.guidance import CFGGuider, Cond
from nodes.diffusion.model_sampling import Denoiser
from nodes.diffusion.preview import LatentPreviewer
from nodes.diffusion.samplers import Sampler, SamplingInterrupted, get_sampler
from nodes.diffusion.text_encoder import refiner_adm, sdxl_adm
from nodes.models import ModelHandle

__all__ = ["to_conds", "sampler_named", "sampler_choices", "Progress", "sampling", "GuiderSpec", "interrupted"]


def sampler_choices(env: Any) -> list[str]:
    """Registered samplers (built-ins plus plugins'), in registration order."""
    from nodes.diffusion.samplers import SAMPLER_NAMES

    registered = env.services.get("samplers") if env is not None else None
    return list(registered) if registered else list(SAMPLER_NAMES)


def sampler_named(ctx: NodeContext, name: str) -> Sampler:
    return get_sampler(name, ctx.env.services.get("samplers") or None)


def _adm(family: str, pooled: torch.Tensor, opts: dict[str, Any], latent_shape: Sequence[int],
         negative: bool) -> torch.Tensor | None:
    """The UNet's vector input for one entry, as ComfyUI's encode_adm: options win over the defaults."""
    if family == "sd1":
        return None
    width = int(opts.get("width") or latent_shape[-1] * 8)
    height = int(opts.get("height") or latent_shape[-2] * 8)
    crop_w, crop_h = int(opts.get("crop_w", 0)), int(opts.get("crop_h", 0))
    if family == "sdxl_refiner":
        score = float(opts.get("aesthetic_score", 2.5 if negative else 6.0))
        return refiner_adm(pooled, width, height, crop_w, crop_h, score)
    return sdxl_adm(pooled, width, height, crop_w, crop_h, int(opts.get("target_width") or width),
                    int(opts.get("target_height") or height))


def to_conds(conditioning: Sequence[Any], model: ModelHandle, latent_shape: Sequence[int],
             negative: bool = False, who: str = "") -> list[Cond]:
    """ComfyUI CONDITIONING ([context, options] pairs) as guidance `Cond`s with `y` built for the model."""
    conds = []
    for context, opts in conditioning:
        cond = Cond.from_comfy(context, opts)
        if model.family != "sd1" and cond.y is None:
            pooled = opts.get("pooled_output")
            if pooled is None:
                raise ValueError(f"{who}: this {model.family} model needs a pooled text embedding, but the "
                                 f"conditioning has none; encode the prompt with this model's CLIP")
            cond = replace(cond, y=_adm(model.family, pooled, opts, latent_shape, negative))
        expected = getattr(model.unet.config, "context_dim", None)
        if expected is not None and context.shape[-1] != expected:
            raise ValueError(f"{who}: the conditioning has {context.shape[-1]} features per token but the model "
                             f"takes {expected}; encode the prompt with the CLIP of the same checkpoint "
                             f"(a refiner needs its own CLIP)")
        conds.append(cond)
    return conds


@dataclass
class GuiderSpec:
    """A GUIDER: which model, the raw conditioning and the cfg; built into a CFGGuider per latent shape."""

    model: ModelHandle
    positive: Sequence[Any]
    negative: Sequence[Any] | None
    cfg: float

    def build(self, denoiser: Callable[..., torch.Tensor], latent_shape: Sequence[int], who: str) -> CFGGuider:
        positive = to_conds(self.positive, self.model, latent_shape, False, who)
        negative = to_conds(self.negative, self.model, latent_shape, True, who) if self.negative is not None else None
        return CFGGuider(denoiser, positive, negative, self.cfg, self.model.model_sampling)


class Progress:
    """A sampler callback: `ctx.progress(step, total, preview)` with a latent preview of x0 per step."""

    def __init__(self, ctx: NodeContext, model: ModelHandle, total: int) -> None:
        self.ctx, self.total = ctx, max(1, int(total))
        self.previewer = None
        if str(ctx.env.settings.get("preview", "auto")).lower() != "none":
            self.previewer = LatentPreviewer(model.family)

    def __call__(self, payload: dict[str, Any]) -> None:
        step = min(int(payload.get("i", 0)) + 1, self.total)
        preview = None
        if self.previewer is not None and payload.get("denoised") is not None:
            preview = self.previewer(payload["denoised"])
        self.ctx.progress(step, self.total, preview)


@contextmanager
def sampling(model: ModelHandle) -> Iterator[Denoiser]:
    """A Denoiser for the model with its LoRA stack applied for the duration; no autograd."""
    with model.patched() as unet, torch.inference_mode():
        yield Denoiser(unet, model.model_sampling)


def interrupted(ctx: NodeContext, exc: SamplingInterrupted) -> Exception:
    """The engine's Interrupted for a sampler stopped between steps."""
    from engine import Interrupted

    return Interrupted(f"node {ctx.node_id} ({ctx.node_type}) interrupted: {exc}")
