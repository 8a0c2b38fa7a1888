"""Image filters on IMAGE batches (float [B, H, W, C] in 0..1): Gaussian blur, unsharp mask, colour adjust."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine import IMAGE, In, Input, Node, NodeContext, Output

__all__ = [
    "gaussian_kernel",
    "gaussian_blur",
    "unsharp_mask",
    "adjust_colors",
    "luminance",
    "ImageGaussianBlur",
    "ImageSharpen",
    "ImageColorAdjust",
    "NODES",
]

# Rec. 709 luma weights for linear-ish RGB in 0..1
LUMA = (0.2126, 0.7152, 0.0722)


def gaussian_kernel(radius: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A normalised 1-D Gaussian of 2 * radius + 1 taps."""
    if radius < 0 or sigma <= 0:
        raise ValueError(f"gaussian_kernel: need radius >= 0 and sigma > 0, got radius={radius}, sigma={sigma}")
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(images: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, H, W, C] images; edges mirror (d c b | a b c d)."""
    assert images.ndim == 4, f"expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}"
    if radius == 0:
        return images.clone()
    b, h, w, c = images.shape
    # reflect padding needs pad < size; smaller images fall back to replicated edges
    mode = "reflect" if radius < min(h, w) else "replicate"
    kernel = gaussian_kernel(radius, sigma, images.dtype).to(images.device)
    x = images.permute(0, 3, 1, 2).reshape(b * c, 1, h, w)  # (B*C, 1, H, W): one channel per plane
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w).permute(0, 2, 3, 1).contiguous()


def unsharp_mask(images: torch.Tensor, radius: int, sigma: float, amount: float) -> torch.Tensor:
    """`image + amount * (image - blur(image))`, clamped to 0..1."""
    return (images + amount * (images - gaussian_blur(images, radius, sigma))).clamp(0.0, 1.0)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Rec. 709 luma of [B, H, W, 3] images, shape [B, H, W, 1]."""
    weights = images.new_tensor(LUMA)
    return (images[..., :3] * weights).sum(-1, keepdim=True)


def adjust_colors(images: torch.Tensor, brightness: float = 0.0, contrast: float = 1.0, saturation: float = 1.0,
                  gamma: float = 1.0) -> torch.Tensor:
    """Gamma (x ** (1 / gamma)), then brightness (added), contrast (about each image's mean luma),
    then saturation (blend with luma); clamped to 0..1. Channels past RGB (alpha) pass through."""
    if gamma <= 0:
        raise ValueError(f"adjust_colors: gamma must be > 0, got {gamma}")
    rgb = images[..., :3].clamp(0.0, 1.0) ** (1.0 / gamma) + brightness
    mean = luminance(rgb).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    rgb = (rgb - mean) * contrast + mean
    gray = luminance(rgb)
    rgb = (gray + (rgb - gray) * saturation).clamp(0.0, 1.0)
    return torch.cat([rgb, images[..., 3:]], dim=-1)


class ImageGaussianBlur(Node):
    """Blur images with a Gaussian kernel of the given radius and sigma."""

    category = "image/filters"
    outputs = (Output(IMAGE),)

    image: In[IMAGE]
    radius: int = Input(3, ge=0, le=64, tooltip="kernel half-width in pixels")
    sigma: float = Input(1.5, ge=0.1, le=32.0, step=0.1, tooltip="standard deviation in pixels")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (gaussian_blur(self.image, self.radius, self.sigma),)


class ImageSharpen(Node):
    """Sharpen images with an unsharp mask."""

    category = "image/filters"
    outputs = (Output(IMAGE),)

    image: In[IMAGE]
    radius: int = Input(2, ge=1, le=31)
    sigma: float = Input(1.0, ge=0.1, le=10.0, step=0.1)
    amount: float = Input(1.0, ge=0.0, le=5.0, step=0.05, tooltip="how much of the detail to add back")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (unsharp_mask(self.image, self.radius, self.sigma, self.amount),)


class ImageColorAdjust(Node):
    """Adjust gamma, brightness, contrast and saturation of images."""

    category = "image/filters"
    outputs = (Output(IMAGE),)

    image: In[IMAGE]
    brightness: float = Input(0.0, ge=-1.0, le=1.0, step=0.01)
    contrast: float = Input(1.0, ge=0.0, le=3.0, step=0.01)
    saturation: float = Input(1.0, ge=0.0, le=3.0, step=0.01)
    gamma: float = Input(1.0, ge=0.1, le=5.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (adjust_colors(self.image, self.brightness, self.contrast, self.saturation, self.gamma),)


NODES = (ImageGaussianBlur, ImageSharpen, ImageColorAdjust)
