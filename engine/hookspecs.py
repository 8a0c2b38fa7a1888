"""The plugin hooks: each takes a `register` callback bound to the calling plugin's name.

A plugin is a module (or any object) with functions marked `@hookimpl` named after these hooks::

    from engine import hookimpl

    @hookimpl
    def register_nodes(register):
        register(MyNode)

An implementation may accept fewer arguments than the spec (pluggy's opt-in arguments), so hooks
only ever gain arguments without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from engine.node import Environment

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "latentgraph"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_types(register: Callable[..., Any]) -> None:
    """Register socket types: `register(SocketType(...))`.

    .. versionadded:: 0.1
    """


@hookspec
def register_nodes(register: Callable[..., Any]) -> None:
    """Register node classes: `register(NodeClass)` for each `engine.Node` subclass.

    .. versionadded:: 0.1
    """


@hookspec
def register_samplers(register: Callable[..., Any]) -> None:
    """Register samplers: `register(name, fn)` with fn in k-diffusion's sampler signature.

    .. versionadded:: 0.1
    """


@hookspec
def register_schedulers(register: Callable[..., Any]) -> None:
    """Register noise schedules: `register(name, fn)` with `fn(model_sampling, steps) -> sigmas`.

    .. versionadded:: 0.1
    """


@hookspec
def register_model_loaders(register: Callable[..., Any]) -> None:
    """Register model loaders: `register(name, loader)` for a kind of model file.

    .. versionadded:: 0.1
    """


@hookspec
def register_web_extensions(register: Callable[..., Any]) -> None:
    """Register a static folder of editor extensions: `register(path)`, served at `/extensions/<plugin>/`.

    .. versionadded:: 0.1
    """


@hookspec
def register_routes(register: Callable[..., Any]) -> None:
    """Register aiohttp routes: `register(route_def)`, mounted under `/api/ext/<plugin>/`.

    .. versionadded:: 0.1
    """


@hookspec
def startup(env: Environment) -> Any:
    """Run once when the engine starts, with its Environment; may return an awaitable.

    .. versionadded:: 0.1
    """
