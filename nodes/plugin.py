"""The built-in node library as a plugin: it registers through the same hooks as any other.

Entry point `core = "nodes.plugin"` (group `latentgraph`). Node modules are imported inside the
hooks, so importing this module loads no torch model code.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.plugins import hookimpl

__all__ = ["NODE_MODULES", "DEFAULT_CHECKPOINT", "SHIPPED_CHECKPOINT", "node_classes", "register_nodes", "register_samplers",
           "register_schedulers", "startup", "ensure_default_checkpoint", "free_models"]

# Every module here exports NODES, a tuple of node classes.
NODE_MODULES = (
    "nodes.primitives",
    "nodes.image",
    "nodes.image_io",
    "nodes.latent",
    "nodes.latent_io",
    "nodes.loaders",
    "nodes.text",
    "nodes.conditioning",
    "nodes.sampling",
    "nodes.custom_sampling",
    "nodes.sigmas",
    "nodes.vae_nodes",
)


def node_classes() -> list[type]:
    """Every built-in node class, module by module."""
    classes: list[type] = []
    for name in NODE_MODULES:
        classes.extend(importlib.import_module(name).NODES)
    return classes


@hookimpl
def register_nodes(register: Callable[..., Any]) -> None:
    """Every node class of NODE_MODULES."""
    for cls in node_classes():
        register(cls)


@hookimpl
def register_samplers(register: Callable[..., Any]) -> None:
    """ComfyUI's samplers (nodes/diffusion/samplers.py), by ComfyUI's names."""
    from nodes.diffusion import samplers

    for name, sampler in samplers.SAMPLERS.items():
        register(name, sampler)  # a Sampler is callable in k-diffusion's signature and keeps its flags


@hookimpl
def register_schedulers(register: Callable[..., Any]) -> None:
    """ComfyUI's schedulers (nodes/diffusion/schedules.py), by ComfyUI's names."""
    from nodes.diffusion import schedules

    for name, fn in schedules.SCHEDULERS.items():
        register(name, fn)


DEFAULT_CHECKPOINT = "latentgraph_demo.safetensors"
# The embedded demo model, trained by the project (docs/demo_model.md); shipped inside the package.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "diffusion" / "data" / DEFAULT_CHECKPOINT


@hookimpl
def startup(env: Any) -> None:
    """Put the embedded demo model into models/checkpoints on first start, so the default workflow runs.

    It is latentgraph's own tiny SDXL-architecture model (coloured shapes only, docs/demo_model.md);
    real images need a real SDXL checkpoint in models/checkpoints. Set `default_model` to false in the
    settings to skip it.
    """
    env.services.setdefault("free", functools.partial(free_models, env))
    if env.settings.get("default_model", True) is False:
        return
    ensure_default_checkpoint(env.settings)


def free_models(env: Any, unload_models: bool = False, free_memory: bool = False) -> None:
    """The server's `POST /free`: drop every cached model (they reload on next use)."""
    if unload_models or free_memory:
        from nodes.models import model_cache

        model_cache(env).clear()


def ensure_default_checkpoint(settings: dict[str, Any]) -> Path:
    """The default checkpoint's path, copied (atomically) into models/checkpoints if it is missing."""
    from nodes import folders

    existing = folders.find_model(settings, "checkpoints", DEFAULT_CHECKPOINT)
    if existing is not None:
        return Path(existing)
    target = folders.model_folders(settings, "checkpoints")[0] / DEFAULT_CHECKPOINT
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(SHIPPED_CHECKPOINT, partial)
        os.replace(partial, target)  # readers never see a half-written file
    finally:
        partial.unlink(missing_ok=True)
    return target
