"""Images in and out: LoadImage / LoadImageMask from input/, SaveImage to output/, PreviewImage to temp/.

Saved PNGs carry ComfyUI's metadata: a `prompt` tEXt chunk (the API graph) and one chunk per key
of `extra_data["extra_pnginfo"]` (the editor sends `workflow`), so every loader of workflows can
read them back. File names follow ComfyUI: `{prefix}_{counter:05}_.png`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from engine import Environment, In, Input, Node, NodeContext, NodeResult, Output, Problem
from engine.types import IMAGE, MASK
from nodes import folders

__all__ = [
    "LoadImage",
    "LoadImageMask",
    "SaveImage",
    "PreviewImage",
    "pil_to_image",
    "image_to_pil",
    "png_metadata",
    "save_images",
    "NODES",
]


def image_to_pil(image: torch.Tensor) -> Image.Image:
    """One IMAGE item [H, W, C] in 0..1 to an 8-bit PIL image (RGB, RGBA or L)."""
    array = (image.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    if array.shape[-1] == 1:
        return Image.fromarray(array[..., 0], mode="L")
    return Image.fromarray(array)


def pil_to_image(img: Image.Image) -> torch.Tensor:
    """A PIL image to an RGB IMAGE item [H, W, 3] in 0..1 (16-bit 'I' images are scaled down)."""
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 255))
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb.copy())


def _alpha_mask(img: Image.Image) -> torch.Tensor | None:
    """1 - alpha as [H, W], or None when the image has no transparency."""
    if "A" not in img.getbands():
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        else:
            return None
    alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
    return 1.0 - torch.from_numpy(alpha.copy())


def _frames(path: Path) -> list[Image.Image]:
    img = Image.open(path)
    frames = []
    for frame in ImageSequence.Iterator(img):
        frames.append(ImageOps.exif_transpose(frame).copy())
        if img.format == "MPO":  # multi-picture JPEGs: the rest are depth maps or previews
            break
    return frames


def _image_problem(inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
    name = inputs.get("image")
    try:
        folders.find_input(env.settings, name)
    except (folders.UnsafePathError, FileNotFoundError, TypeError) as exc:
        yield Problem("image", f"{exc}", name)


def _image_fingerprint(inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
    try:
        return folders.file_sha256(folders.find_input(env.settings, inputs.get("image")))
    except (folders.UnsafePathError, FileNotFoundError, TypeError):
        return None


class LoadImage(Node):
    """Load an image from input/; the mask is 1 - alpha (zeros when there is no alpha)."""

    category = "image"
    outputs = (Output(IMAGE, "IMAGE"), Output(MASK, "MASK"))

    image: str = Input(choices=folders.input_choices(), image_upload=True)

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return _image_fingerprint(inputs, env)

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        return list(_image_problem(inputs, env))

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        images, masks = [], []
        size = None
        for frame in _frames(folders.find_input(ctx.env.settings, self.image)):
            if size is None:
                size = frame.size
            elif frame.size != size:  # frames of another size cannot share the batch
                continue
            images.append(pil_to_image(frame))
            mask = _alpha_mask(frame)
            masks.append(mask if mask is not None else torch.zeros(frame.size[1], frame.size[0]))
        return (torch.stack(images), torch.stack(masks))


class LoadImageMask(Node):
    """Load one channel of an image from input/ as a mask (alpha is inverted: 1 - alpha)."""

    category = "mask"
    outputs = (Output(MASK, "MASK"),)

    image: str = Input(choices=folders.input_choices(), image_upload=True)
    channel: str = Input("alpha", choices=("alpha", "red", "green", "blue"))

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return _image_fingerprint(inputs, env)

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        return list(_image_problem(inputs, env))

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        img = _frames(folders.find_input(ctx.env.settings, self.image))[0]
        if self.channel == "alpha":
            mask = _alpha_mask(img)
            if mask is None:
                mask = torch.zeros(img.size[1], img.size[0])
        else:
            band = {"red": "R", "green": "G", "blue": "B"}[self.channel]
            rgb = img.convert("RGBA") if img.mode not in ("RGB", "RGBA") else img
            mask = torch.from_numpy(np.asarray(rgb.getchannel(band), dtype=np.float32) / 255.0)
        return (mask.unsqueeze(0),)


def png_metadata(ctx: NodeContext) -> PngInfo | None:
    """ComfyUI's PNG chunks: `prompt`, then one per key of extra_data["extra_pnginfo"]."""
    if ctx.env.settings.get("disable_metadata"):
        return None
    info = PngInfo()
    if ctx.prompt:
        info.add_text("prompt", json.dumps(ctx.prompt))
    for key, value in (ctx.extra_data.get("extra_pnginfo") or {}).items():
        info.add_text(str(key), json.dumps(value))
    return info


def save_images(ctx: NodeContext, images: torch.Tensor, folder: Path, filename_prefix: str, kind: str,
                compress_level: int) -> list[dict[str, str]]:
    """Write a batch as PNGs named as ComfyUI does; returns the `ui.images` entries."""
    full, stem, counter, subfolder = folders.save_path(folder, filename_prefix, images.shape[2], images.shape[1])
    meta = png_metadata(ctx)
    results = []
    for batch_number, image in enumerate(images):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        image_to_pil(image).save(full / name, pnginfo=meta, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return results


class SaveImage(Node):
    """Save images to output/ as PNG with the prompt and workflow embedded."""

    category = "image"
    output_node = True
    outputs = ()

    images: In[IMAGE]
    filename_prefix: str = Input("ComfyUI", tooltip="File name prefix; may name sub-folders and use "
                                 "%date% style fields such as %width% and %batch_num%.")

    def run(self, ctx: NodeContext) -> NodeResult:
        folder = folders.settings_dir(ctx.env.settings, "output_dir")
        return NodeResult(ui={"images": save_images(ctx, self.images, folder, self.filename_prefix, "output", 4)})


class PreviewImage(Node):
    """Show images in the editor without keeping them: written to temp/."""

    category = "image"
    output_node = True
    outputs = ()

    images: In[IMAGE]

    def run(self, ctx: NodeContext) -> NodeResult:
        folder = folders.settings_dir(ctx.env.settings, "temp_dir")
        suffix = "".join(random.SystemRandom().choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        prefix = f"ComfyUI_temp_{suffix}"
        return NodeResult(ui={"images": save_images(ctx, self.images, folder, prefix, "temp", 1)})


NODES = (LoadImage, LoadImageMask, SaveImage, PreviewImage)
