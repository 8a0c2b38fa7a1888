"""The plugin host: loads plugins (entry points, local folders, objects) each in isolation.

Every plugin's hooks are called on their own, with `register` callbacks bound to its name; what it
registers is staged and committed only if all of its hooks succeed, so a plugin that fails to
import, raises in a hook, registers a bad node or collides with another plugin is recorded as
failed, and nothing it half-registered remains. The built-in node library is the entry point
`core = "nodes.plugin"` and goes through the same path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from engine import hookspecs
from engine.config import Settings
from engine.hookspecs import hookimpl
from engine.node import Environment, Node, Output
from engine.registry import NodeRegistry
from engine.types import SocketType, TypeConflictError, TypeRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginRecord",
    "PluginRegistrationError",
    "PluginConflictError",
    "hookimpl",
    "REGISTER_HOOKS",
]

ENTRY_POINT_GROUP = "latentgraph"
ENV_LOAD = "LATENTGRAPH_LOAD_PLUGINS"  # unset: all entry points; "": none; "a,b": only those
ENV_DISABLE = "LATENTGRAPH_DISABLE_PLUGINS"  # comma-separated plugin names

# Called in this order for each plugin, so its nodes may use the types it registers.
REGISTER_HOOKS = (
    "register_types", "register_nodes", "register_samplers", "register_schedulers",
    "register_model_loaders", "register_web_extensions", "register_routes",
)
KNOWN_HOOKS = REGISTER_HOOKS + ("startup",)


class PluginRegistrationError(TypeError):
    """A plugin passed something unusable to a `register` callback."""


class PluginConflictError(ValueError):
    """Two plugins registered the same sampler, scheduler or model loader name."""


@dataclass
class PluginRecord:
    """What happened to one plugin: where it came from, whether it loaded, and what it registered."""

    name: str
    version: str | None
    source: str  # "entry point" | "local" | "object"
    status: str = "ok"  # "ok" | "failed" | "disabled"
    error: str | None = None  # traceback text when failed
    nodes: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    module: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Candidate:
    name: str
    source: str
    load: Callable[[], Any]
    version: str | None = None
    module: str | None = None
    path: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass
class _Staged:
    types: list[SocketType] = field(default_factory=list)
    nodes: list[type[Node]] = field(default_factory=list)
    samplers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    schedulers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    model_loaders: dict[str, Any] = field(default_factory=dict)
    web: Path | None = None
    routes: list[Any] = field(default_factory=list)


class PluginHost:
    """Loads plugins and holds what they registered: nodes, types, samplers, routes, web folders.

    `plugins` are objects (modules, namespaces, instances) or `(name, object)` pairs; `plugin_dirs`
    are local folders; `disabled` names plugins not to load (local ones by `local:<name>` or `<name>`).
    """

    def __init__(
        self,
        entry_points: bool = True,
        plugins: Iterable[Any] = (),
        plugin_dirs: Iterable[str | Path] = (),
        disabled: Iterable[str] = (),
    ) -> None:
        self.entry_points = entry_points
        self.plugin_objects = list(plugins)
        self.plugin_dirs = [Path(d) for d in plugin_dirs]
        self.disabled = set(disabled)
        self.nodes = NodeRegistry()
        self.samplers: dict[str, Callable[..., Any]] = {}
        self.schedulers: dict[str, Callable[..., Any]] = {}
        self.model_loaders: dict[str, Any] = {}
        self.web_extensions: dict[str, Path] = {}
        self.routes: dict[str, list[Any]] = {}
        self.records: list[PluginRecord] = []
        self._owners: dict[str, dict[str, str]] = {"sampler": {}, "scheduler": {}, "model loader": {}}
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._loaded = False

    @property
    def types(self) -> TypeRegistry:
        """The socket types (built-ins plus plugins'), shared with the node registry."""
        return self.nodes.types

    # ---- loading -------------------------------------------------------------------------------

    def load(self) -> PluginHost:
        """Load every plugin once (later calls do nothing); failures are recorded, never raised."""
        if self._loaded:
            return self
        self._loaded = True
        disabled = self.disabled | _env_names(ENV_DISABLE)
        for candidate in self._candidates():
            self._load_candidate(candidate, disabled)
        return self

    def add_plugin(self, plugin: Any, name: str | None = None) -> PluginRecord:
        """Load one more plugin object now (e.g. in a test); returns its record."""
        self.load()
        candidate = _object_candidate(plugin, name)
        return self._load_candidate(candidate, set())

    def remove_plugin(self, name: str) -> None:
        """Undo a plugin: unregister its hooks and drop everything it registered."""
        record = self.record(name)
        if record is None:
            raise KeyError(f"no plugin named {name!r} is loaded; loaded: {', '.join(r.name for r in self.records)}")
        obj = self._pm.get_plugin(name)
        if obj is not None:
            self._pm.unregister(obj)
        self.records.remove(record)
        self._rebuild_without(name)

    def record(self, name: str) -> PluginRecord | None:
        """The record of the plugin called `name`, or None."""
        return next((r for r in self.records if r.name == name), None)

    def _candidates(self) -> Iterator[_Candidate]:
        if self.entry_points:
            yield from _entry_point_candidates()
        for folder in self.plugin_dirs:
            yield from _local_candidates(folder)
        for obj in self.plugin_objects:
            name = obj[0] if isinstance(obj, tuple) else None
            yield _object_candidate(obj[1] if isinstance(obj, tuple) else obj, name)

    def _load_candidate(self, cand: _Candidate, disabled: set[str]) -> PluginRecord:
        record = PluginRecord(name=cand.name, version=cand.version, source=cand.source,
                              module=cand.module, path=cand.path)
        self.records.append(record)
        if disabled & {cand.name, *cand.aliases}:
            record.status = "disabled"
            return record
        try:
            obj = cand.load()
        except (Exception, SystemExit):
            return _fail(record, f"plugin {cand.name!r} failed to import:\n{traceback.format_exc()}")
        if record.version is None:
            version = getattr(obj, "__version__", None)
            record.version = str(version) if version is not None else None
        record.module = record.module or getattr(obj, "__name__", type(obj).__name__)
        try:
            self._pm.register(obj, name=cand.name)
        except Exception:
            return _fail(record, f"plugin {cand.name!r} could not be registered:\n{traceback.format_exc()}")
        callers = self._pm.get_hookcallers(obj) or []
        record.hooks = sorted(c.name for c in callers)
        unknown = sorted(c.name for c in callers if not c.has_spec())
        if unknown:
            self._pm.unregister(obj)
            return _fail(record, (
                f"plugin {cand.name!r} implements hooks this version of latentgraph does not know: "
                f"{', '.join(unknown)}; known hooks are {', '.join(KNOWN_HOOKS)} (check the spelling, "
                f"or upgrade latentgraph)"
            ))
        staged = _Staged()
        try:
            for hook in REGISTER_HOOKS:
                if hook in record.hooks:
                    self._call(obj, hook, register=self._register_callback(hook, cand.name, staged))
            self._commit(cand.name, staged)
        except Exception:
            self._pm.unregister(obj)
            return _fail(record, f"plugin {cand.name!r} failed while registering:\n{traceback.format_exc()}")
        record.nodes = [cls.node_type for cls in staged.nodes]
        return record

    def _call(self, obj: Any, hook: str, **kwargs: Any) -> list[Any]:
        """Call one plugin's implementations of `hook`, passing only the arguments each accepts."""
        results: list[Any] = []
        for impl in getattr(self._pm.hook, hook).get_hookimpls():
            if impl.plugin is not obj:
                continue
            if impl.hookwrapper or impl.wrapper:
                raise PluginRegistrationError(
                    f"plugin {impl.plugin_name!r}: hook {hook} cannot be a wrapper; drop wrapper=True")
            results.append(impl.function(*[kwargs[name] for name in impl.argnames]))
        return results

    # ---- register callbacks: validate eagerly, stage, commit after all hooks succeed ---------------

    def _register_callback(self, hook: str, plugin: str, staged: _Staged) -> Callable[..., Any]:
        if hook == "register_types":
            return lambda socket_type: self._stage_type(plugin, staged, socket_type)
        if hook == "register_nodes":
            return lambda node_class: self._stage_node(plugin, staged, node_class)
        if hook == "register_samplers":
            return lambda name, fn: self._stage_named("sampler", plugin, staged.samplers, self.samplers, name, fn)
        if hook == "register_schedulers":
            return lambda name, fn: self._stage_named("scheduler", plugin, staged.schedulers, self.schedulers, name, fn)
        if hook == "register_model_loaders":
            return lambda name, loader: self._stage_named(
                "model loader", plugin, staged.model_loaders, self.model_loaders, name, loader)
        if hook == "register_web_extensions":
            return lambda path: self._stage_web(plugin, staged, path)
        if hook == "register_routes":
            return lambda route: self._stage_route(plugin, staged, route)
        raise AssertionError(f"no register callback for hook {hook}")

    def _stage_type(self, plugin: str, staged: _Staged, socket_type: Any) -> SocketType:
        if not isinstance(socket_type, SocketType):
            raise PluginRegistrationError(
                f"plugin {plugin!r}: register_types expects engine.SocketType instances, got {socket_type!r}"
            )
        existing = self.types.get(socket_type.name)
        if existing is not None and existing != socket_type:
            raise TypeConflictError(
                f"socket type {socket_type.name!r} from plugin {plugin!r} conflicts with the one registered "
                f"by plugin {self.types.owner(socket_type.name)!r}; rename one of them"
            )
        staged.types.append(socket_type)
        return socket_type

    def _stage_node(self, plugin: str, staged: _Staged, cls: Any) -> Any:
        scratch = NodeRegistry(self.types)
        for earlier in staged.nodes:
            scratch.register(earlier, plugin)
        scratch.register(cls, plugin)  # not a Node subclass, no run, duplicate within the plugin
        for out in cls.outputs:
            if not isinstance(out, Output) or not isinstance(out.type, SocketType):
                raise PluginRegistrationError(
                    f"plugin {plugin!r}: node {cls.node_type} declares output {out!r}; outputs must be "
                    f"Output(SOCKET_TYPE, name) entries"
                )
        if cls.node_type in self.nodes:
            self.nodes.register(cls, plugin)  # raises NodeConflictError naming both plugins
        if cls not in staged.nodes:
            staged.nodes.append(cls)
        return cls

    def _stage_named(self, kind: str, plugin: str, staged: dict[str, Any], committed: Mapping[str, Any],
                     name: Any, value: Any) -> Any:
        if not isinstance(name, str) or not name:
            raise PluginRegistrationError(f"plugin {plugin!r}: a {kind} name must be a non-empty string, got {name!r}")
        if not callable(value):
            raise PluginRegistrationError(f"plugin {plugin!r}: {kind} {name!r} must be callable, got {value!r}")
        if name in committed and committed[name] is not value:
            raise PluginConflictError(
                f"{kind} {name!r} from plugin {plugin!r} conflicts with the one registered by plugin "
                f"{self._owners[kind][name]!r}; register it under another name"
            )
        if name in staged and staged[name] is not value:
            raise PluginConflictError(f"plugin {plugin!r} registered two different {kind}s named {name!r}")
        staged[name] = value
        return value

    def _stage_web(self, plugin: str, staged: _Staged, path: Any) -> Path:
        folder = Path(path)
        if not folder.is_dir():
            raise PluginRegistrationError(
                f"plugin {plugin!r}: web extension folder {str(folder)!r} does not exist or is not a folder"
            )
        if staged.web is not None and staged.web != folder:
            raise PluginRegistrationError(
                f"plugin {plugin!r} registered two web extension folders ({staged.web}, {folder}); "
                f"a plugin serves one folder at /extensions/{plugin}/"
            )
        staged.web = folder
        return folder

    def _stage_route(self, plugin: str, staged: _Staged, route: Any) -> Any:
        from aiohttp import web

        if isinstance(route, web.RouteTableDef):
            staged.routes.extend(route)
            return route
        if not isinstance(route, web.AbstractRouteDef):
            raise PluginRegistrationError(
                f"plugin {plugin!r}: register_routes expects aiohttp route definitions "
                f"(web.get(path, handler), or a web.RouteTableDef), got {route!r}"
            )
        staged.routes.append(route)
        return route

    def _commit(self, plugin: str, staged: _Staged) -> None:
        for socket_type in staged.types:
            self.types.register(socket_type, plugin)
        for cls in staged.nodes:
            self.nodes.register(cls, plugin)
        for kind, target, values in (("sampler", self.samplers, staged.samplers),
                                     ("scheduler", self.schedulers, staged.schedulers),
                                     ("model loader", self.model_loaders, staged.model_loaders)):
            target.update(values)
            for name in values:
                self._owners[kind].setdefault(name, plugin)
        if staged.web is not None:
            self.web_extensions[plugin] = staged.web
        if staged.routes:
            self.routes.setdefault(plugin, []).extend(staged.routes)

    def _rebuild_without(self, plugin: str) -> None:
        types = TypeRegistry()
        for socket_type in self.types:
            owner = self.types.owner(socket_type.name) or "core"
            if owner != plugin:
                types.register(socket_type, owner)
        nodes = NodeRegistry(types)
        for name in self.nodes.names():
            owner = self.nodes.owner(name) or "core"
            cls = self.nodes.get(name)
            if owner != plugin and cls is not None:
                nodes.register(cls, owner)
        self.nodes = nodes
        for kind, target in (("sampler", self.samplers), ("scheduler", self.schedulers),
                             ("model loader", self.model_loaders)):
            for name in [n for n, o in self._owners[kind].items() if o == plugin]:
                del self._owners[kind][name]
                target.pop(name, None)
        self.web_extensions.pop(plugin, None)
        self.routes.pop(plugin, None)

    # ---- environment and startup ----------------------------------------------------------------

    def environment(self, settings: Mapping[str, Any] | Settings | None = None) -> Environment:
        """An Environment for nodes: the given settings plus the plugin registries as services."""
        self.load()
        values = settings.env_settings() if isinstance(settings, Settings) else dict(settings or {})
        return Environment(settings=values, services={
            "samplers": self.samplers, "schedulers": self.schedulers,
            "model_loaders": self.model_loaders, "plugin_host": self,
        })

    def start(self, env: Environment) -> list[tuple[PluginRecord, Awaitable[Any]]]:
        """Call every loaded plugin's `startup(env)`; return the awaitables some of them gave back."""
        pending: list[tuple[PluginRecord, Awaitable[Any]]] = []
        for record in self.records:
            obj = self._pm.get_plugin(record.name)
            if record.status != "ok" or obj is None or "startup" not in record.hooks:
                continue
            try:
                for result in self._call(obj, "startup", env=env):
                    if inspect.isawaitable(result):
                        pending.append((record, result))
            except Exception:
                _fail(record, f"plugin {record.name!r} failed in startup:\n{traceback.format_exc()}",
                      keep_nodes=True)
        return pending

    async def startup_async(self, env: Environment) -> None:
        """Run every plugin's startup hook and await what it returns; failures are recorded."""
        for record, awaitable in self.start(env):
            try:
                await awaitable
            except Exception:
                _fail(record, f"plugin {record.name!r} failed in startup:\n{traceback.format_exc()}",
                      keep_nodes=True)

    def startup(self, env: Environment) -> None:
        """Run the startup hooks from synchronous code (the CLI); the server awaits `startup_async`.

        Called from a thread whose event loop is running (a notebook, an async host), the hooks run
        on a fresh loop in a helper thread, since that loop cannot be re-entered.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.startup_async(env))
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self.startup_async(env)).result()

    def failed(self) -> list[PluginRecord]:
        """Records of plugins that failed to load."""
        return [r for r in self.records if r.status == "failed"]


def _fail(record: PluginRecord, error: str, *, keep_nodes: bool = False) -> PluginRecord:
    record.status = "failed"
    record.error = error
    if not keep_nodes:  # nothing it registered was kept
        record.nodes = []
    return record


def _env_names(var: str) -> set[str]:
    return {n.strip() for n in os.environ.get(var, "").split(",") if n.strip()}


def _entry_point_candidates() -> Iterator[_Candidate]:
    wanted = os.environ.get(ENV_LOAD)
    if wanted is not None and not wanted.strip():
        return
    only = _env_names(ENV_LOAD) if wanted is not None else None
    points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    points.sort(key=lambda ep: (ep.name != "core", ep.name))  # the built-in library first
    for ep in points:
        if only is not None and ep.name not in only:
            continue
        dist = getattr(ep, "dist", None)
        yield _Candidate(name=ep.name, source="entry point", load=ep.load, module=ep.value,
                         version=getattr(dist, "version", None))


def _local_candidates(folder: Path) -> Iterator[_Candidate]:
    if not folder.is_dir():
        def missing() -> Any:
            raise FileNotFoundError(f"plugins folder {str(folder)!r} does not exist or is not a folder")
        yield _Candidate(name=f"local:{folder}", source="local", load=missing, path=str(folder))
        return
    for path in sorted(folder.iterdir()):
        name = path.stem if path.is_file() else path.name
        if path.name.startswith(("_", ".")) or path.name.endswith(".disabled"):
            continue
        if (path.is_file() and path.suffix == ".py") or (path.is_dir() and (path / "__init__.py").is_file()):
            yield _Candidate(name=f"local:{name}", source="local", load=_local_loader(path, name),
                             path=str(path), aliases=(name,))


def _local_loader(path: Path, name: str) -> Callable[[], ModuleType]:
    def load() -> ModuleType:
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        module_name = f"_latentgraph_local_{re.sub(r'[^0-9A-Za-z_]', '_', name)}_{digest}"
        if path.is_dir():
            spec = importlib.util.spec_from_file_location(
                module_name, path / "__init__.py", submodule_search_locations=[str(path)])
        else:
            spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import local plugin {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # so the plugin's own relative imports resolve
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module
    return load


def _object_candidate(obj: Any, name: str | None) -> _Candidate:
    label = name or getattr(obj, "__name__", None) or type(obj).__name__
    module = obj.__name__ if isinstance(obj, ModuleType) else type(obj).__module__
    return _Candidate(name=str(label), source="object", load=lambda: obj, module=module)
