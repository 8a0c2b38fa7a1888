"""Latent nodes: empty latents, upscaling, batch slicing, noise masks.

LATENT is a dict: `samples` [B, C, H/8, W/8], plus optional `noise_mask` (where to denoise) and
`batch_index` (which noise slices of a larger batch these samples take, for LatentFromBatch).
"""

from __future__ import annotations

from typing import Any

import torch

from engine import In, Input, Node, NodeContext, Output
from engine.types import LATENT, MASK
from nodes._resample import LATENT_METHODS, resize

__all__ = [
    "EmptyLatentImage",
    "LatentUpscale",
    "LatentUpscaleBy",
    "LatentFromBatch",
    "RepeatLatentBatch",
    "SetLatentNoiseMask",
    "NODES",
]

MAX_RESOLUTION = 16384


def _copy(latent: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(latent)
    out.update(changes)
    return out


class EmptyLatentImage(Node):
    """An all-zero latent batch to start text-to-image from."""

    category = "latent"
    outputs = (Output(LATENT),)

    width: int = Input(512, ge=16, le=MAX_RESOLUTION, step=8)
    height: int = Input(512, ge=16, le=MAX_RESOLUTION, step=8)
    batch_size: int = Input(1, ge=1, le=4096, tooltip="The number of latent images in the batch.")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return ({"samples": torch.zeros(self.batch_size, 4, self.height // 8, self.width // 8)},)


def _upscale(latent: dict[str, Any], width: int, height: int, method: str, crop: str) -> dict[str, Any]:
    """Resize latent samples to pixel size width x height (latent size // 8); drops the noise mask."""
    samples = latent["samples"]
    out = _copy(latent, samples=resize(samples, max(1, width // 8), max(1, height // 8), method, crop))
    out.pop("noise_mask", None)  # a mask of the old size no longer lines up
    return out


class LatentUpscale(Node):
    """Resize latents to a pixel width and height (0 keeps the aspect ratio)."""

    category = "latent"
    outputs = (Output(LATENT),)

    samples: In[LATENT]
    upscale_method: str = Input("nearest-exact", choices=LATENT_METHODS)
    width: int = Input(1024, ge=0, le=MAX_RESOLUTION, step=8)
    height: int = Input(1024, ge=0, le=MAX_RESOLUTION, step=8)
    crop: str = Input("disabled", choices=("disabled", "center"))

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        h, w = self.samples["samples"].shape[-2] * 8, self.samples["samples"].shape[-1] * 8
        width, height = self.width, self.height
        if width == 0 and height == 0:
            return (self.samples,)
        if width == 0:
            width = max(64, round(w * height / h))
        elif height == 0:
            height = max(64, round(h * width / w))
        return (_upscale(self.samples, width, height, self.upscale_method, self.crop),)


class LatentUpscaleBy(Node):
    """Resize latents by a factor."""

    category = "latent"
    outputs = (Output(LATENT),)

    samples: In[LATENT]
    upscale_method: str = Input("nearest-exact", choices=LATENT_METHODS)
    scale_by: float = Input(1.5, ge=0.01, le=8.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        h, w = self.samples["samples"].shape[-2:]
        width, height = round(w * self.scale_by) * 8, round(h * self.scale_by) * 8
        return (_upscale(self.samples, width, height, self.upscale_method, "disabled"),)


class LatentFromBatch(Node):
    """Take `length` latents from a batch, starting at `batch_index`."""

    category = "latent/batch"
    outputs = (Output(LATENT),)

    samples: In[LATENT]
    batch_index: int = Input(0, ge=0, le=63)
    length: int = Input(1, ge=1, le=64)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        s = self.samples["samples"]
        start = min(s.shape[0] - 1, self.batch_index)
        length = min(s.shape[0] - start, self.length)
        out = _copy(self.samples, samples=s[start:start + length].clone())
        mask = self.samples.get("noise_mask")
        if mask is not None:
            if mask.shape[0] == 1:
                out["noise_mask"] = mask.clone()
            else:
                if mask.shape[0] < s.shape[0]:  # a short mask batch repeats to cover the samples
                    mask = mask.repeat((s.shape[0] + mask.shape[0] - 1) // mask.shape[0], 1, 1, 1)[: s.shape[0]]
                out["noise_mask"] = mask[start:start + length].clone()
        # Keep each item's place in the original batch, so its noise is the same as there.
        indexes = self.samples.get("batch_index") or list(range(s.shape[0]))
        out["batch_index"] = list(indexes[start:start + length])
        return (out,)


class RepeatLatentBatch(Node):
    """Repeat a latent batch `amount` times."""

    category = "latent/batch"
    outputs = (Output(LATENT),)

    samples: In[LATENT]
    amount: int = Input(1, ge=1, le=64)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        s = self.samples["samples"]
        out = _copy(self.samples, samples=s.repeat(self.amount, 1, 1, 1))
        mask = self.samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            if mask.shape[0] < s.shape[0]:
                mask = mask.repeat((s.shape[0] + mask.shape[0] - 1) // mask.shape[0], 1, 1, 1)[: s.shape[0]]
            out["noise_mask"] = mask.repeat(self.amount, 1, 1, 1)
        if "batch_index" in self.samples:
            # Repeats continue after the highest index, so each copy gets fresh noise.
            idx = list(self.samples["batch_index"])
            offset = max(idx) - min(idx) + 1
            out["batch_index"] = [i + k * offset for k in range(self.amount) for i in idx]
        return (out,)


class SetLatentNoiseMask(Node):
    """Limit denoising to the masked area (1 = denoise, 0 = keep)."""

    category = "latent/inpaint"
    outputs = (Output(LATENT),)

    samples: In[LATENT]
    mask: In[MASK]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        mask = self.mask
        mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))  # (B, 1, H, W)
        return (_copy(self.samples, noise_mask=mask),)


NODES = (EmptyLatentImage, LatentUpscale, LatentUpscaleBy, LatentFromBatch, RepeatLatentBatch, SetLatentNoiseMask)
