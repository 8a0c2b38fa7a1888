"""latentgraph-extras: image filters, colour palettes (a PALETTE socket type), a sampler, schedules, a web widget.

A plugin like any other: the entry point `extras = "latentgraph_extras"` (group `latentgraph`) points
at this module, whose hook implementations register everything. Node modules are imported inside
the hooks, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import hookimpl

__all__ = [
    "__version__",
    "WEB_DIR",
    "register_types",
    "register_nodes",
    "register_samplers",
    "register_schedulers",
    "register_web_extensions",
]

__version__ = "0.1.0"
WEB_DIR = Path(__file__).parent / "web"


@hookimpl
def register_types(register: Callable[..., Any]) -> None:
    from latentgraph_extras.palette import PALETTE

    register(PALETTE)


@hookimpl
def register_nodes(register: Callable[..., Any]) -> None:
    from latentgraph_extras import filters, palette, sampling

    for cls in (*filters.NODES, *palette.NODES, *sampling.NODES):
        register(cls)


@hookimpl
def register_samplers(register: Callable[..., Any]) -> None:
    from latentgraph_extras.sampling import sample_ralston

    register("ralston", sample_ralston)


@hookimpl
def register_schedulers(register: Callable[..., Any]) -> None:
    from latentgraph_extras.sampling import vp_scheduler

    register("vp", vp_scheduler)


@hookimpl
def register_web_extensions(register: Callable[..., Any]) -> None:
    register(WEB_DIR)
