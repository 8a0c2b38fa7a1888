"""latentgraph's graph runtime: typed nodes, workflows, validation, execution, caching, plugins.

The engine knows nothing about diffusion; node libraries (the built-in `nodes` package included)
plug into it through the hooks in `engine.plugins`.
"""

from engine.node import (
    Environment,
    In,
    Input,
    InputSpec,
    Interrupted,
    Node,
    NodeContext,
    NodeDefinitionError,
    NodeResult,
    Output,
    Problem,
)
from engine.types import SocketType, TypeRegistry

__all__ = [
    "Environment",
    "In",
    "Input",
    "InputSpec",
    "Interrupted",
    "Node",
    "NodeContext",
    "NodeDefinitionError",
    "NodeResult",
    "Output",
    "Problem",
    "SocketType",
    "TypeRegistry",
]
