"""Test-only plugins for the browser tests: a generic image maker with progress and previews, a
web extension (served from ./extension), and a plugin that fails to load (shown in the banner)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from engine.node import Input, Node, NodeContext, Output
from engine.plugins import hookimpl
from engine.types import IMAGE
from tests.engine.testnodes import Fail, Show

EXTENSION_DIR = Path(__file__).parent / "extension"


class SolidImage(Node):
    """An image of the given size in one colour, made in `steps` steps (progress and previews)."""

    category = "testing"
    outputs = (Output(IMAGE),)
    width: int = Input(64, ge=8, le=1024, step=8)
    height: int = Input(48, ge=8, le=1024, step=8)
    steps: int = Input(4, ge=1, le=100)
    seed: int = Input(0, ge=0, le=2**32, control_after_generate=True)
    delay: float = Input(0.05, ge=0.0, le=2.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        colour = ((self.seed * 67) % 256, (self.seed * 141) % 256, 200)
        for i in range(1, self.steps + 1):
            time.sleep(self.delay)
            ctx.progress(i, self.steps, preview=Image.new("RGB", (self.width, self.height), colour))
        pixels = torch.tensor(colour, dtype=torch.float32) / 255.0
        return (pixels.expand(1, self.height, self.width, 3).clone(),)


class WebTestPlugin:
    """Registers SolidImage, the engine tests' Fail and Show nodes and the test web extension."""

    @hookimpl
    def register_nodes(self, register: Callable[..., Any]) -> None:
        register(SolidImage)
        register(Fail)
        register(Show)

    @hookimpl
    def register_web_extensions(self, register: Callable[..., Any]) -> None:
        register(EXTENSION_DIR)


class BrokenPlugin:
    """Fails while registering: the editor must list it in its banner."""

    @hookimpl
    def register_nodes(self, register: Callable[..., Any]) -> None:
        raise RuntimeError("broken on purpose for the editor test")
