"""latentgraph's graph runtime: typed nodes, workflows, validation, execution, caching, plugins.

The engine knows nothing about diffusion; node libraries (the built-in `nodes` package included)
plug into it through the hooks in `engine.plugins`. Everything a plugin author needs is importable
from here (`from engine import Node, In, Input, Output, hookimpl, LATENT`); names are resolved on
first use, so importing `engine` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.cache import CachePolicy, CachePolicyError, parse_cache_policy
    from engine.config import Settings
    from engine.executor import Event, ExecutionResult, Executor
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
    from engine.plugins import PluginHost, PluginRecord, hookimpl
    from engine.registry import NodeConflictError, NodeRegistrationError, NodeRegistry, UnknownNodeError
    from engine.types import (
        ANY,
        BOOLEAN,
        CLIP,
        COMBO,
        CONDITIONING,
        FLOAT,
        GUIDER,
        IMAGE,
        INT,
        LATENT,
        MASK,
        MODEL,
        NOISE,
        SAMPLER,
        SIGMAS,
        STRING,
        UPSCALE_MODEL,
        VAE,
        SocketType,
        TypeRegistry,
    )
    from engine.validate import ValidationResult, validate_prompt
    from engine.workflow import Workflow, WorkflowFormatError, editor_to_api, load_workflow, save_workflow

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ["Environment", "In", "Input", "InputSpec", "Interrupted", "Node", "NodeContext",
         "NodeDefinitionError", "NodeResult", "Output", "Problem"], "engine.node"),
    **dict.fromkeys(
        ["SocketType", "TypeRegistry", "ANY", "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE",
         "MASK", "SIGMAS", "SAMPLER", "NOISE", "GUIDER", "UPSCALE_MODEL", "INT", "FLOAT", "STRING",
         "BOOLEAN", "COMBO"], "engine.types"),
    **dict.fromkeys(["NodeRegistry", "NodeConflictError", "NodeRegistrationError", "UnknownNodeError"],
                    "engine.registry"),
    **dict.fromkeys(["hookimpl", "PluginHost", "PluginRecord"], "engine.plugins"),
    **dict.fromkeys(["Executor", "ExecutionResult", "Event"], "engine.executor"),
    **dict.fromkeys(["validate_prompt", "ValidationResult"], "engine.validate"),
    **dict.fromkeys(["CachePolicy", "CachePolicyError", "parse_cache_policy"], "engine.cache"),
    **dict.fromkeys(["load_workflow", "save_workflow", "editor_to_api", "Workflow", "WorkflowFormatError"],
                    "engine.workflow"),
    "Settings": "engine.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
