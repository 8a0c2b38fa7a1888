"""Primitive value nodes (ComfyUI's names): one widget in, the same value out as a link."""

from __future__ import annotations

import sys
from typing import Any

from engine import Input, Node, NodeContext, Output
from engine.types import BOOLEAN, FLOAT, INT, STRING

__all__ = ["PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
           "NODES"]


class PrimitiveString(Node):
    """A text value."""

    category = "utils/primitive"
    display_name = "String"
    outputs = (Output(STRING),)

    value: str = Input("")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.value,)


class PrimitiveStringMultiline(Node):
    """A multi-line text value."""

    category = "utils/primitive"
    display_name = "String (Multiline)"
    outputs = (Output(STRING),)

    value: str = Input("", multiline=True)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.value,)


class PrimitiveInt(Node):
    """An integer value."""

    category = "utils/primitive"
    display_name = "Int"
    outputs = (Output(INT),)

    value: int = Input(0, ge=-sys.maxsize, le=sys.maxsize, control_after_generate=True)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.value,)


class PrimitiveFloat(Node):
    """A floating-point value."""

    category = "utils/primitive"
    display_name = "Float"
    outputs = (Output(FLOAT),)

    value: float = Input(0.0, ge=-sys.maxsize, le=sys.maxsize)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (float(self.value),)


class PrimitiveBoolean(Node):
    """A true/false value."""

    category = "utils/primitive"
    display_name = "Boolean"
    outputs = (Output(BOOLEAN),)

    value: bool = Input(False)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.value,)


NODES = (PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean)
