"""Conditioning edits: zero out, combine, concatenate, timestep range, area.

CONDITIONING is ComfyUI's list of `[context, options]` pairs: context [B, tokens, dim], options a
dict with `pooled_output` and others (`start_percent`, `end_percent`, `area`, `strength`, ...).
These nodes only edit the list; the guider (nodes/diffusion/guidance.py) gives the options meaning.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from engine import In, Input, Node, NodeContext, Output
from engine.types import CONDITIONING

__all__ = [
    "ConditioningZeroOut",
    "ConditioningCombine",
    "ConditioningConcat",
    "ConditioningSetTimestepRange",
    "ConditioningSetArea",
    "set_options",
    "NODES",
]

MAX_RESOLUTION = 16384
log = logging.getLogger(__name__)


def set_options(conditioning: list[Any], **options: Any) -> list[Any]:
    """A new conditioning list with `options` set on every entry (tensors are shared, not copied)."""
    return [[context, {**opts, **options}] for context, opts in conditioning]


class ConditioningZeroOut(Node):
    """Replace the context and pooled output with zeros (SDXL's usual empty negative)."""

    category = "advanced/conditioning"
    outputs = (Output(CONDITIONING),)

    conditioning: In[CONDITIONING]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        out = []
        for context, opts in self.conditioning:
            opts = dict(opts)
            if opts.get("pooled_output") is not None:
                opts["pooled_output"] = torch.zeros_like(opts["pooled_output"])
            out.append([torch.zeros_like(context), opts])
        return (out,)


class ConditioningCombine(Node):
    """Both conditionings, each denoised and their predictions averaged."""

    category = "conditioning"
    outputs = (Output(CONDITIONING),)

    conditioning_1: In[CONDITIONING]
    conditioning_2: In[CONDITIONING]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (list(self.conditioning_1) + list(self.conditioning_2),)


class ConditioningConcat(Node):
    """Append the tokens of `conditioning_from` to each entry of `conditioning_to`."""

    category = "conditioning"
    outputs = (Output(CONDITIONING),)

    conditioning_to: In[CONDITIONING]
    conditioning_from: In[CONDITIONING]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        if not self.conditioning_from:
            return (self.conditioning_to,)
        if len(self.conditioning_from) > 1:
            log.warning("node %s (ConditioningConcat): conditioning_from has %d entries; only the first is "
                        "appended", ctx.node_id, len(self.conditioning_from))
        source = self.conditioning_from[0][0]
        out = []
        for context, opts in self.conditioning_to:
            extra = source.to(context.dtype)
            if extra.shape[0] != context.shape[0]:
                extra = extra[:1].expand(context.shape[0], -1, -1)
            out.append([torch.cat((context, extra), dim=1), dict(opts)])
        return (out,)


class ConditioningSetTimestepRange(Node):
    """Apply the conditioning only between two fractions of the schedule (0 = first step)."""

    category = "advanced/conditioning"
    outputs = (Output(CONDITIONING),)

    conditioning: In[CONDITIONING]
    start: float = Input(0.0, ge=0.0, le=1.0, step=0.001)
    end: float = Input(1.0, ge=0.0, le=1.0, step=0.001)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (set_options(self.conditioning, start_percent=self.start, end_percent=self.end),)


class ConditioningSetArea(Node):
    """Apply the conditioning to one rectangle of the image (in pixels), with a strength."""

    category = "conditioning"
    outputs = (Output(CONDITIONING),)

    conditioning: In[CONDITIONING]
    width: int = Input(64, ge=64, le=MAX_RESOLUTION, step=8)
    height: int = Input(64, ge=64, le=MAX_RESOLUTION, step=8)
    x: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    y: int = Input(0, ge=0, le=MAX_RESOLUTION, step=8)
    strength: float = Input(1.0, ge=0.0, le=10.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        # ComfyUI's convention: area = (height, width, y, x) in latent cells (pixels // 8).
        area = (self.height // 8, self.width // 8, self.y // 8, self.x // 8)
        return (set_options(self.conditioning, area=area, strength=self.strength, set_area_to_bounds=False),)


NODES = (ConditioningZeroOut, ConditioningCombine, ConditioningConcat, ConditioningSetTimestepRange,
         ConditioningSetArea)
