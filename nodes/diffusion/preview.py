"""Latent previews: a cheap linear map from latent channels to RGB, per model family.

The factors project the sampler's x0 estimate (in the model's scaled latent space, as the sampler
sees it) to RGB in -1..1; pixels are (rgb + 1) / 2 clamped to 0..1, as ComfyUI's latent2rgb
previewer does. Sources: ComfyUI `comfy/latent_formats.py` (SDXL, SD1 factors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["LatentRGB", "LATENT_RGB", "latent_to_rgb", "LatentPreviewer", "MAX_PREVIEW_SIZE"]

MAX_PREVIEW_SIZE = 512


@dataclass(frozen=True)
class LatentRGB:
    """Rows are latent channels, columns R, G, B; `bias` is added per colour."""

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


LATENT_RGB: dict[str, LatentRGB] = {
    "sdxl": LatentRGB(
        factors=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                 (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
        bias=(0.1084, -0.0175, -0.0011),
    ),
    "sd1": LatentRGB(
        factors=((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                 (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
    ),
}
# Families that share a latent space share factors (the refiner and SDXL variants use SDXL's VAE).
_ALIASES = {"sdxl_refiner": "sdxl", "refiner": "sdxl", "sd15": "sd1", "sd1.5": "sd1", "sd2": "sd1"}


def _factors(family: str) -> LatentRGB:
    key = _ALIASES.get(family.lower(), family.lower())
    if key not in LATENT_RGB:
        raise KeyError(f"no latent preview factors for model family {family!r}; known: {', '.join(LATENT_RGB)}")
    return LATENT_RGB[key]


def latent_to_rgb(latent: torch.Tensor, family: str = "sdxl") -> torch.Tensor:
    """The first latent of a batch ([B,C,h,w] or [C,h,w]) as RGB [h, w, 3] in 0..1."""
    if latent.ndim == 4:
        latent = latent[0]
    table = _factors(family)
    factors = torch.tensor(table.factors, dtype=torch.float32)  # (C, 3)
    if latent.shape[0] != factors.shape[0]:
        raise ValueError(f"latent preview for {family!r} expects {factors.shape[0]} latent channels, "
                         f"got a latent of shape {tuple(latent.shape)}")
    x = latent.detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", x, factors) + torch.tensor(table.bias)  # (h, w, 3)
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)


class LatentPreviewer:
    """Turns a sampler's x0 estimate into a small PIL image (longest side at most `max_size`)."""

    def __init__(self, family: str = "sdxl", max_size: int = MAX_PREVIEW_SIZE) -> None:
        _factors(family)  # fail early on an unknown family
        self.family = family
        self.max_size = max_size

    def __call__(self, x0: torch.Tensor) -> Image.Image:
        rgb = latent_to_rgb(x0, self.family)
        array = (rgb.numpy() * 255.0).round().astype(np.uint8)
        image = Image.fromarray(array, mode="RGB")
        if max(image.size) > self.max_size:
            scale = self.max_size / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        return image
