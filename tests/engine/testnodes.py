"""Test-only nodes for the engine's tests (and anyone else's): constants, arithmetic, failures, UI.

Every node records its run in the environment (`calls(env)[node_id]`, `trace(env)`), so tests count
executions without global state. `make_registry()` registers them all under the plugin "tests".
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.node import Environment, In, Input, Node, NodeContext, NodeResult, Output, Problem
from engine.registry import NodeRegistry
from engine.types import ANY, BOOLEAN, FLOAT, INT, STRING, SocketType

__all__ = [
    "WIDGET", "GADGET", "calls", "trace", "make_registry", "NODES",
    "IntConst", "FloatConst", "StringConst", "BoolConst", "Add", "AddFloat", "Concat", "Show",
    "Slow", "Fail", "FileText", "Dice", "MakeWidget", "UseWidget", "MakeGadget", "Pick", "PickFile",
    "CheckedFile", "NeedsCount", "BadReturn", "BadCount", "Pair", "Sink",
]

WIDGET = SocketType("WIDGET", color="#123456", description="A test-only custom socket type.")
GADGET = SocketType("GADGET", color="#654321", description="Another test-only custom socket type.")


def calls(env: Environment) -> Counter[str]:
    """How many times each node id ran in this environment."""
    counter: Counter[str] = env.service("calls", lambda _: Counter())
    return counter


def trace(env: Environment) -> list[str]:
    """Node ids in the order they ran in this environment."""
    order: list[str] = env.service("trace", lambda _: [])
    return order


def _record(ctx: NodeContext) -> None:
    calls(ctx.env)[ctx.node_id] += 1
    trace(ctx.env).append(ctx.node_id)


class IntConst(Node):
    """An integer constant."""

    outputs = (Output(INT),)
    value: int = Input(0, ge=-1000, le=1000)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.value,)


class FloatConst(Node):
    """A float constant."""

    outputs = (Output(FLOAT),)
    value: float = Input(0.5, ge=0.0, le=1.0)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.value,)


class StringConst(Node):
    """A string constant."""

    outputs = (Output(STRING),)
    text: str = Input("", multiline=True)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.text,)


class BoolConst(Node):
    """A boolean constant."""

    outputs = (Output(BOOLEAN),)
    flag: bool = Input(False)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.flag,)


class Add(Node):
    """a + b, where b may be typed in or linked."""

    outputs = (Output(INT, "sum"),)
    a: In[INT]
    b: int = Input(0, ge=-1_000_000, le=1_000_000)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.a + self.b,)


class AddFloat(Node):
    """x + y as floats (x accepts INT links too)."""

    outputs = (Output(FLOAT),)
    x: In[FLOAT]
    y: float = Input(1.0, ge=0.0, le=10.0)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (float(self.x) + self.y,)


class Concat(Node):
    """a followed by b."""

    outputs = (Output(STRING),)
    a: In[STRING]
    b: str = Input("")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.a + self.b,)


class Show(Node):
    """Output node: shows any value as text in the UI."""

    output_node = True
    value: In[ANY]

    def run(self, ctx: NodeContext) -> NodeResult:
        _record(ctx)
        return NodeResult(ui={"text": [str(self.value)]})


class Sink(Node):
    """Output node that returns no UI."""

    output_node = True
    value: In[ANY]

    def run(self, ctx: NodeContext) -> None:
        _record(ctx)
        return None


class Slow(Node):
    """Counts to `steps`, reporting progress (with a preview on the last step) and honouring interrupt."""

    outputs = (Output(INT),)
    value: In[INT]
    steps: int = Input(5, ge=1, le=1000)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        for i in range(1, self.steps + 1):
            ctx.progress(i, self.steps, preview=f"preview-{i}" if i == self.steps else None)
        return (self.value + self.steps,)


class Fail(Node):
    """Raises RuntimeError(message) when run."""

    outputs = (Output(INT),)
    value: In[INT] = None
    message: str = Input("boom")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        raise RuntimeError(self.message)


class FileText(Node):
    """Reads a text file; its fingerprint is the file's SHA-256, so edits to the file re-run it."""

    outputs = (Output(STRING),)
    path: str = Input("")

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return hashlib.sha256(Path(inputs["path"]).read_bytes()).hexdigest()

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (Path(self.path).read_text(),)


class Dice(Node):
    """Not idempotent: a different number every run (the run count)."""

    outputs = (Output(INT),)
    not_idempotent = True
    sides: int = Input(6, ge=1, le=100)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (calls(ctx.env)[ctx.node_id] % self.sides,)


class MakeWidget(Node):
    """Produces a WIDGET (a custom socket type)."""

    outputs = (Output(WIDGET),)
    size: int = Input(1, ge=1, le=10)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return ({"widget": self.size},)


class MakeGadget(Node):
    """Produces a GADGET (a custom socket type)."""

    outputs = (Output(GADGET),)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return ({"gadget": True},)


class UseWidget(Node):
    """Takes a WIDGET and gives its size."""

    outputs = (Output(INT),)
    widget: In[WIDGET]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.widget["widget"],)


class Pick(Node):
    """A combo with fixed choices."""

    outputs = (Output(STRING),)
    mode: str = Input("fast", choices=["fast", "slow", "exact"])

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.mode,)


def _input_files(env: Environment) -> Sequence[str]:
    folder = Path(env.settings.get("input_dir", "."))
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


class PickFile(Node):
    """A combo whose choices are the files in the input folder (computed at validation)."""

    outputs = (Output(STRING),)
    name: str = Input("", choices=_input_files)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.name,)


class PickExplained(Node):
    """A folder-listing combo whose check_inputs explains a missing choice (where it looked)."""

    outputs = (Output(STRING),)
    name: str = Input("", choices=_input_files)

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        if inputs["name"] not in _input_files(env):
            yield Problem("name", f"looked in {env.settings.get('input_dir')}; copy the file there")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.name,)


class CheckedFile(Node):
    """Reports a Problem when the named file is missing or `copies` is odd (custom validation)."""

    outputs = (Output(STRING),)
    path: str = Input("missing.txt")
    copies: int = Input(2, ge=0, le=10)

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        if not Path(inputs["path"]).is_file():
            yield Problem("path", f"file {inputs['path']!r} does not exist; put it there or pick another")
        if inputs["copies"] % 2:
            yield Problem("copies", "copies must be even; use 0, 2, 4, ...", inputs["copies"])

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (Path(self.path).read_text() * self.copies,)


class NeedsCount(Node):
    """A widget input with no default (so it is required)."""

    outputs = (Output(INT),)
    count: int = Input(ge=0, le=10)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.count,)


class BadReturn(Node):
    """Returns a bare value instead of a tuple (a node bug)."""

    outputs = (Output(INT),)

    def run(self, ctx: NodeContext) -> Any:
        _record(ctx)
        return 3


class BadCount(Node):
    """Returns two values but declares one output (a node bug)."""

    outputs = (Output(INT),)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (1, 2)


class Pair(Node):
    """Two outputs: value and value * 10."""

    outputs = (Output(INT, "one"), Output(INT, "ten"))
    value: In[INT]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        _record(ctx)
        return (self.value, self.value * 10)


NODES: tuple[type[Node], ...] = (
    IntConst, FloatConst, StringConst, BoolConst, Add, AddFloat, Concat, Show, Sink, Slow, Fail,
    FileText, Dice, MakeWidget, MakeGadget, UseWidget, Pick, PickFile, PickExplained, CheckedFile, NeedsCount,
    BadReturn, BadCount, Pair,
)


def make_registry() -> NodeRegistry:
    """A registry holding every test node (plugin "tests") and the custom socket types."""
    registry = NodeRegistry()
    registry.types.register(WIDGET, plugin="tests")
    registry.types.register(GADGET, plugin="tests")
    for cls in NODES:
        registry.register(cls, plugin="tests")
    return registry
