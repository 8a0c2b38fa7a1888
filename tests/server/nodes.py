"""Test-only nodes for the server tests, loaded as the plugin "servertest"."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from engine.hookspecs import hookimpl
from engine.node import In, Input, Node, NodeContext, NodeResult, Output
from engine.types import INT

__all__ = ["Number", "Sleep", "Boom", "SaveNumber", "Gate", "register_nodes", "gate"]


def gate(env: Any) -> threading.Event:
    """An event the Gate node waits on (set it to let gated prompts finish)."""
    event: threading.Event = env.service("gate", lambda _: threading.Event())
    return event


class Number(Node):
    """An integer constant."""

    outputs = (Output(INT),)
    value: int = Input(1, ge=-1_000_000, le=1_000_000)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.value,)


class Sleep(Node):
    """Passes `value` through after `seconds`, in `steps` progress steps, optionally with previews."""

    outputs = (Output(INT),)
    value: In[INT]
    seconds: float = Input(0.0, ge=0.0, le=60.0)
    steps: int = Input(4, ge=1, le=1000)
    preview: bool = Input(False)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        for i in range(1, self.steps + 1):
            time.sleep(self.seconds / self.steps)
            image = Image.new("RGB", (16, 16), (i * 20 % 256, 0, 0)) if self.preview else None
            ctx.progress(i, self.steps, preview=image)
        return (self.value,)


class Gate(Node):
    """Waits (checking interrupt) until the test sets `gate(env)`, then passes `value` through."""

    outputs = (Output(INT),)
    value: In[INT]
    tag: str = Input("")  # different tags make otherwise identical prompts miss the cache

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        event = gate(ctx.env)
        while not event.wait(0.01):
            ctx.check_interrupted()
        return (self.value,)


class Boom(Node):
    """Raises ValueError(message)."""

    outputs = (Output(INT),)
    value: In[INT]
    message: str = Input("boom")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        raise ValueError(self.message)


class SaveNumber(Node):
    """Output node: writes an 8x8 grey PNG of `value` into the output folder and shows it."""

    output_node = True
    value: In[INT]
    prefix: str = Input("number")

    def run(self, ctx: NodeContext) -> NodeResult:
        folder = Path(ctx.env.settings["output_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}_{self.value}_{uuid.uuid4().hex[:8]}.png"
        Image.new("L", (8, 8), self.value % 256).save(folder / name)
        return NodeResult(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})


@hookimpl
def register_nodes(register: Any) -> None:
    for cls in (Number, Sleep, Gate, Boom, SaveNumber):
        register(cls)
