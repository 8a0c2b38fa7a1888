"""Text encoding nodes: CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner.

They produce ComfyUI's CONDITIONING: `[[context, {"pooled_output": pooled, size options...}]]`. The
size / crop / aesthetic options become the UNet's vector input at sampling time, where the latent
size is known (nodes/_sampling.py), as ComfyUI's encode_adm does.
"""

from __future__ import annotations

from typing import Any

import torch

from engine import In, Input, Node, NodeContext, Output
from engine.types import CLIP, CONDITIONING
from nodes.models import models_lock

__all__ = ["CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "encode", "NODES"]

MAX_RESOLUTION = 16384


def encode(ctx: NodeContext, clip: Any, method: str, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `clip.<method>(*args)` with the clone's LoRA stack applied only for the call."""
    if clip is None:
        raise ValueError(f"node {ctx.node_id} ({ctx.node_type}) input 'clip': the checkpoint has no text encoders; "
                         f"load one that does, or connect another CLIP")
    fn = getattr(clip, method, None)
    if fn is None:
        raise ValueError(f"node {ctx.node_id} ({ctx.node_type}) input 'clip': a {type(clip).__name__} cannot "
                         f"{method.replace('_', ' ')}; use CLIPTextEncode for this model")
    with models_lock, torch.inference_mode():
        try:
            context, pooled = fn(*args)
        finally:
            clip.unpatch()  # the shared encoders go back to the base weights
    return context.cpu(), pooled.cpu()


class CLIPTextEncode(Node):
    """Encode a prompt with a CLIP model into conditioning for the diffusion model."""

    category = "conditioning"
    outputs = (Output(CONDITIONING, tooltip="A conditioning containing the embedded text used to guide the diffusion model."),)

    text: str = Input("", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded.")
    clip: In[CLIP]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        context, pooled = encode(ctx, self.clip, "encode", self.text)
        return ([[context, {"pooled_output": pooled}]],)


class CLIPTextEncodeSDXL(Node):
    """SDXL text encoding with separate prompts for the two encoders and size conditioning."""

    category = "advanced/conditioning"
    outputs = (Output(CONDITIONING),)

    clip: In[CLIP]
    width: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    height: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    crop_w: int = Input(0, ge=0, le=MAX_RESOLUTION)
    crop_h: int = Input(0, ge=0, le=MAX_RESOLUTION)
    target_width: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    target_height: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    text_g: str = Input("", multiline=True, dynamic_prompts=True)
    text_l: str = Input("", multiline=True, dynamic_prompts=True)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        context, pooled = encode(ctx, self.clip, "encode_sdxl", self.text_g, self.text_l)
        options = {"pooled_output": pooled, "width": self.width, "height": self.height, "crop_w": self.crop_w,
                   "crop_h": self.crop_h, "target_width": self.target_width, "target_height": self.target_height}
        return ([[context, options]],)


class CLIPTextEncodeSDXLRefiner(Node):
    """SDXL refiner text encoding with an aesthetic score (higher = 'more aesthetic')."""

    category = "advanced/conditioning"
    outputs = (Output(CONDITIONING),)

    ascore: float = Input(6.0, ge=0.0, le=1000.0, step=0.01)
    width: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    height: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    text: str = Input("", multiline=True, dynamic_prompts=True)
    clip: In[CLIP]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        context, pooled = encode(ctx, self.clip, "encode", self.text)
        options = {"pooled_output": pooled, "aesthetic_score": self.ascore, "width": self.width, "height": self.height}
        return ([[context, options]],)


NODES = (CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner)
