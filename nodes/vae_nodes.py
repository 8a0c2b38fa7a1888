"""VAE nodes: decode latents to IMAGE, encode IMAGE to latents (plain, tiled, and for inpainting).

IMAGE is [B, H, W, C] in 0..1 on the CPU; the VAE works on [B, 3, H, W] in -1..1 on its device.
LATENT samples are the VAE's unscaled latents (the samplers scale them into model space).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine import In, Input, Node, NodeContext, Output
from engine.types import IMAGE, LATENT, MASK, VAE

__all__ = ["VAEDecode", "VAEEncode", "VAEDecodeTiled", "VAEEncodeTiled", "VAEEncodeForInpaint", "NODES"]


def _vae(ctx: NodeContext, vae: Any) -> Any:
    if vae is None:
        raise ValueError(f"node {ctx.node_id} ({ctx.node_type}) input 'vae': the checkpoint has no VAE; "
                         f"load one with VAELoader and connect it")
    return vae.vae


def _to_images(pixels: torch.Tensor) -> torch.Tensor:
    return ((pixels.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()  # (B, H, W, C)


def _crop_to_multiple(images: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Centre-crop [B,H,W,C] to a multiple of 8 (ComfyUI's vae_encode_crop_pixels)."""
    h, w = images.shape[1] // multiple * multiple, images.shape[2] // multiple * multiple
    if (h, w) == tuple(images.shape[1:3]):
        return images
    dy, dx = (images.shape[1] % multiple) // 2, (images.shape[2] % multiple) // 2
    return images[:, dy:dy + h, dx:dx + w, :]


def _to_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return (images[..., :3].movedim(-1, 1).float() * 2.0 - 1.0).to(device)  # (B, 3, H, W) in -1..1


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class VAEDecode(Node):
    """Decode latents into images."""

    category = "latent"
    outputs = (Output(IMAGE, tooltip="The decoded image."),)

    samples: In[LATENT]
    vae: In[VAE]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        vae = _vae(ctx, self.vae)
        with torch.inference_mode():
            return (_to_images(vae.decode(self.samples["samples"].to(_device(vae)))),)


class VAEEncode(Node):
    """Encode images into latents (the alpha channel is dropped)."""

    category = "latent"
    outputs = (Output(LATENT),)

    pixels: In[IMAGE]
    vae: In[VAE]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        vae = _vae(ctx, self.vae)
        with torch.inference_mode():
            latent = vae.encode(_to_pixels(_crop_to_multiple(self.pixels), _device(vae)))
        return ({"samples": latent.float().cpu()},)


def _tiles(ctx: NodeContext, tile_size: int, overlap: int) -> tuple[int, int]:
    """Pixel tile size and overlap to latent units; the overlap is capped at a quarter of the tile."""
    tile = max(1, tile_size // 8)
    over = min(overlap // 8, tile // 4)
    return tile, over


class VAEDecodeTiled(Node):
    """Decode latents tile by tile, to decode large images in little memory."""

    category = "_for_testing"
    outputs = (Output(IMAGE),)

    samples: In[LATENT]
    vae: In[VAE]
    tile_size: int = Input(512, ge=64, le=4096, step=32)
    overlap: int = Input(64, ge=0, le=4096, step=32)
    temporal_size: int = Input(64, ge=8, le=4096, step=4, tooltip="Only used for video VAEs: frames per tile.")
    temporal_overlap: int = Input(8, ge=4, le=4096, step=4, tooltip="Only used for video VAEs: overlapping frames.")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        vae = _vae(ctx, self.vae)
        tile, overlap = _tiles(ctx, self.tile_size, self.overlap)
        with torch.inference_mode():
            return (_to_images(vae.decode_tiled(self.samples["samples"].to(_device(vae)), tile, overlap)),)


class VAEEncodeTiled(Node):
    """Encode images tile by tile, to encode large images in little memory."""

    category = "_for_testing"
    outputs = (Output(LATENT),)

    pixels: In[IMAGE]
    vae: In[VAE]
    tile_size: int = Input(512, ge=64, le=4096, step=64)
    overlap: int = Input(64, ge=0, le=4096, step=32)
    temporal_size: int = Input(64, ge=8, le=4096, step=4, tooltip="Only used for video VAEs: frames per tile.")
    temporal_overlap: int = Input(8, ge=4, le=4096, step=4, tooltip="Only used for video VAEs: overlapping frames.")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        vae = _vae(ctx, self.vae)
        tile, overlap = _tiles(ctx, self.tile_size, self.overlap)
        with torch.inference_mode():
            latent = vae.encode_tiled(_to_pixels(_crop_to_multiple(self.pixels), _device(vae)), tile, overlap)
        return ({"samples": latent.float().cpu()},)


class VAEEncodeForInpaint(Node):
    """Encode an image for inpainting: the masked area is greyed out and becomes the noise mask.

    The mask is grown by `grow_mask_by` pixels so the new content blends into its surroundings.
    """

    category = "latent/inpaint"
    outputs = (Output(LATENT),)

    pixels: In[IMAGE]
    vae: In[VAE]
    mask: In[MASK]
    grow_mask_by: int = Input(6, ge=0, le=64, step=1)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        vae = _vae(ctx, self.vae)
        pixels = _crop_to_multiple(self.pixels)
        h, w = pixels.shape[1:3]
        mask = self.mask.reshape(-1, 1, self.mask.shape[-2], self.mask.shape[-1]).float()
        mask = F.interpolate(mask, size=(self.pixels.shape[1], self.pixels.shape[2]), mode="bilinear")
        dy, dx = (self.pixels.shape[1] % 8) // 2, (self.pixels.shape[2] % 8) // 2
        mask = mask[:, :, dy:dy + h, dx:dx + w]  # (B, 1, H, W), cropped as the pixels were
        grown = mask
        if self.grow_mask_by > 0:
            k = self.grow_mask_by
            kernel = torch.ones(1, 1, k, k)
            pad = k // 2  # = ceil((k - 1) / 2), as ComfyUI
            grown = F.conv2d(mask.round(), kernel, padding=pad).clamp(0, 1)[:, :, :h, :w]  # dilation
        keep = (1.0 - mask.round()).movedim(1, -1)  # (B, H, W, 1): 1 where the image stays
        greyed = (pixels[..., :3] - 0.5) * keep + 0.5  # masked pixels become neutral grey
        with torch.inference_mode():
            latent = vae.encode(_to_pixels(greyed, _device(vae)))
        return ({"samples": latent.float().cpu(), "noise_mask": grown.round()},)


NODES = (VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled, VAEEncodeForInpaint)
