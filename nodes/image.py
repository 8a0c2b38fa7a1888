"""Image transforms: scale, invert, batch. IMAGE is a float [B, H, W, C] tensor in 0..1."""

from __future__ import annotations

from typing import Any

import torch

from engine import In, Input, Node, NodeContext, Output
from engine.types import IMAGE
from nodes._resample import IMAGE_METHODS, resize

__all__ = ["ImageScale", "ImageScaleBy", "ImageInvert", "ImageBatch", "scale_images", "NODES"]

MAX_RESOLUTION = 16384


def scale_images(images: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize an IMAGE batch; a width or height of 0 keeps the aspect ratio from the other."""
    h, w = images.shape[1], images.shape[2]
    if width == 0 and height == 0:
        return images
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    out = resize(images.movedim(-1, 1), width, height, method, crop)
    return out.movedim(1, -1).clamp(0.0, 1.0) if method in ("bicubic", "lanczos") else out.movedim(1, -1)


class ImageScale(Node):
    """Resize images to a width and height (0 keeps the aspect ratio)."""

    category = "image/upscaling"
    outputs = (Output(IMAGE),)

    image: In[IMAGE]
    upscale_method: str = Input("nearest-exact", choices=IMAGE_METHODS)
    width: int = Input(512, ge=0, le=MAX_RESOLUTION, step=1)
    height: int = Input(512, ge=0, le=MAX_RESOLUTION, step=1)
    crop: str = Input("disabled", choices=("disabled", "center"))

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (scale_images(self.image, self.width, self.height, self.upscale_method, self.crop),)


class ImageScaleBy(Node):
    """Resize images by a factor."""

    category = "image/upscaling"
    outputs = (Output(IMAGE),)

    image: In[IMAGE]
    upscale_method: str = Input("nearest-exact", choices=IMAGE_METHODS)
    scale_by: float = Input(1.0, ge=0.01, le=8.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        h, w = self.image.shape[1], self.image.shape[2]
        width, height = max(1, round(w * self.scale_by)), max(1, round(h * self.scale_by))
        return (scale_images(self.image, width, height, self.upscale_method),)


class ImageInvert(Node):
    """Invert images: 1 - value."""

    category = "image"
    outputs = (Output(IMAGE),)

    image: In[IMAGE]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (1.0 - self.image,)


class ImageBatch(Node):
    """Join two image batches; the second is resized (bilinear, centre crop) to the first's size."""

    category = "image"
    outputs = (Output(IMAGE),)

    image1: In[IMAGE]
    image2: In[IMAGE]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        a, b = self.image1, self.image2
        if a.shape[1:3] != b.shape[1:3]:
            b = scale_images(b, a.shape[2], a.shape[1], "bilinear", "center")
        if a.shape[-1] != b.shape[-1]:
            channels = min(a.shape[-1], b.shape[-1])
            a, b = a[..., :channels], b[..., :channels]
        return (torch.cat((a, b.to(a.dtype)), dim=0),)


NODES = (ImageScale, ImageScaleBy, ImageInvert, ImageBatch)
