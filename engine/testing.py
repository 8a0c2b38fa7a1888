"""pytest fixtures for plugin authors: a plugin host, temporary plugins, and running workflows.

Installed as a pytest plugin (entry point `pytest11`), so a plugin's tests can write::

    def test_my_node(register_plugin, run_workflow):
        register_plugin(my_plugin)
        outputs = run_workflow({"1": {"class_type": "MyNode", "inputs": {...}}})
        assert outputs["1"]["text"] == ["..."]

`plugin_host` loads no entry points (so neither installed plugins nor the built-in library), runs on
the CPU and writes into the test's tmp folder; `load_entry_point("core")` (or your plugin's entry point
name) adds an installed plugin to it. `run_node(MyNode, image=...)` runs one node on in-memory inputs
(tensors included) and returns its `NodeResult`. Nothing is imported or loaded until a fixture is used.
"""

from __future__ import annotations

import functools
import importlib.metadata
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from engine.node import Node, NodeResult
    from engine.plugins import PluginHost, PluginRecord

__all__ = ["plugin_host", "register_plugin", "run_workflow", "run_node", "load_entry_point",
           "WorkflowRunError", "PluginLoadError", "nodes_plugin"]


class WorkflowRunError(AssertionError):
    """A workflow run in a test was invalid or failed; the message lists every error."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class PluginLoadError(AssertionError):
    """A plugin registered in a test failed to load; the message carries its traceback."""


def nodes_plugin(*classes: type, name: str = "test") -> types.SimpleNamespace:
    """A plugin object whose `register_nodes` registers the given node classes."""
    from engine.plugins import hookimpl

    @hookimpl
    def register_nodes(register: Callable[[Any], Any]) -> None:
        for cls in classes:
            register(cls)

    return types.SimpleNamespace(__name__=name, register_nodes=register_nodes)


@functools.lru_cache(maxsize=None)
def _host_class() -> type[PluginHost]:
    from engine.plugins import PluginHost

    class TestPluginHost(PluginHost):
        """A PluginHost for tests: CPU settings in a tmp folder, and `add_nodes` for node classes."""

        settings: dict[str, Any]

        def add_nodes(self, *classes: type, name: str = "test") -> PluginRecord:
            """Register node classes as plugin `name`; raises PluginLoadError if that fails."""
            record = self.add_plugin(nodes_plugin(*classes, name=name), name=name)
            if record.status != "ok":
                raise PluginLoadError(f"plugin {name!r} failed to load:\n{record.error}")
            return record

        def environment(self, settings: Any = None) -> Any:
            """The test settings (or the given ones) plus the plugin services."""
            return super().environment(self.settings if settings is None else settings)

    return TestPluginHost


def _make_host(tmp_path: Path) -> PluginHost:
    host = _host_class()(entry_points=False)
    host.settings = {  # type: ignore[attr-defined]
        "output_dir": str(tmp_path / "output"), "input_dir": str(tmp_path / "input"),
        "temp_dir": str(tmp_path / "temp"), "user_dir": str(tmp_path / "user"),
        "models_dir": str(tmp_path / "models"), "device": "cpu", "precision": "fp32", "preview": "none",
    }
    return host.load()


@pytest.fixture
def plugin_host(tmp_path: Path) -> PluginHost:
    """A loaded PluginHost, entry points off; `.settings` point into tmp_path; `.add_nodes(*classes)`."""
    return _make_host(tmp_path)


@pytest.fixture
def register_plugin(plugin_host: PluginHost) -> Iterator[Callable[..., PluginRecord]]:
    """`register_plugin(obj_or_module, name=None, strict=True)`: load a plugin for this test only.

    With `strict`, a plugin that fails raises PluginLoadError with its traceback; otherwise the
    failed record is returned. Every plugin registered here is removed when the test ends.
    """
    added: list[str] = []

    def register(plugin: Any, name: str | None = None, strict: bool = True) -> PluginRecord:
        record = plugin_host.add_plugin(plugin, name=name)
        added.append(record.name)
        if strict and record.status != "ok":
            raise PluginLoadError(f"plugin {record.name!r} failed to load:\n{record.error}")
        return record

    yield register
    for name in reversed(added):
        if plugin_host.record(name) is not None:
            plugin_host.remove_plugin(name)


@pytest.fixture
def run_workflow(plugin_host: PluginHost) -> Callable[..., dict[str, Any]]:
    """`run_workflow(workflow, targets=None, settings=None)`: run on the CPU, return the UI outputs.

    `workflow` is an API prompt, an editor graph, or a path to a JSON or PNG file. Raises
    WorkflowRunError naming every problem when the workflow is invalid or a node fails.
    """

    def run(workflow: Any, targets: list[str] | None = None,
            settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from engine.executor import Executor
        from engine.workflow import load_workflow

        loaded = load_workflow(workflow, plugin_host.nodes)
        values = dict(plugin_host.settings)  # type: ignore[attr-defined]
        values.update(settings or {})
        Path(values["output_dir"]).mkdir(parents=True, exist_ok=True)
        env = plugin_host.environment(values)
        executor = Executor(plugin_host.nodes, env, cache="none")
        result = executor.execute(loaded.api, prompt_id=str(uuid.uuid4()), targets=targets,
                                  extra_data={"extra_pnginfo": loaded.extra_pnginfo()})
        if result.status != "success":
            raise WorkflowRunError(_describe_failure(result), result)
        outputs: dict[str, Any] = result.outputs
        return outputs

    return run


@pytest.fixture
def load_entry_point(register_plugin: Callable[..., PluginRecord]) -> Callable[..., PluginRecord]:
    """`load_entry_point(name, strict=True)`: load the installed plugin with entry point `name` (group
    `latentgraph`) into `plugin_host` for this test, as `main.py` would; `"core"` is the built-in library.
    """

    def load(name: str, strict: bool = True) -> PluginRecord:
        from engine.plugins import ENTRY_POINT_GROUP

        found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name))
        if not found:
            installed = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
            raise PluginLoadError(
                f"no installed plugin has the entry point {name!r} in group {ENTRY_POINT_GROUP!r} (installed: "
                f"{', '.join(installed) or 'none'}); install your plugin (pip install -e .) and check "
                f"[project.entry-points.{ENTRY_POINT_GROUP}] in its pyproject.toml")
        entry = found[0]
        try:
            obj = entry.load()
        except Exception as exc:
            raise PluginLoadError(f"plugin {name!r} ({entry.value}) failed to import: {exc!r}") from exc
        record = register_plugin(obj, name=name, strict=strict)
        dist = getattr(entry, "dist", None)
        record.source, record.version = "entry point", getattr(dist, "version", None) or record.version
        return record

    return load


@pytest.fixture
def run_node(plugin_host: PluginHost) -> Callable[..., NodeResult]:
    """`run_node(node, **inputs)`: run one node (a class, or the name of a registered one) on the CPU.

    Inputs are Python values (tensors for links), checked by the node's pydantic model; returns the
    `NodeResult` (`.values`, one per declared output, and `.ui`).
    """

    def run(node: type[Node] | str, **inputs: Any) -> NodeResult:
        from engine.node import NodeContext, NodeResult

        cls = plugin_host.nodes.get(node) if isinstance(node, str) else node
        if cls is None:
            known = ", ".join(plugin_host.nodes.names()) or "none"
            raise PluginLoadError(f"no node type {node!r} is registered (registered: {known}); "
                                  f"register its plugin first (register_plugin / load_entry_point)")
        ctx = NodeContext(node_id="1", node_type=cls.node_type, env=plugin_host.environment())
        returned = cls(**inputs).run(ctx)
        result = returned if isinstance(returned, NodeResult) else NodeResult(tuple(returned or ()))
        result.values = tuple(result.values)
        if len(result.values) != len(cls.outputs):
            raise AssertionError(f"node {cls.node_type}: run() returned {len(result.values)} value(s) but the node "
                                 f"declares {len(cls.outputs)} output(s)")
        return result

    return run


def _describe_failure(result: Any) -> str:
    error = result.error or {}
    lines: list[str] = []
    if result.node_errors or result.validation is not None and not result.validation.ok:
        lines.append(f"workflow is invalid: {error.get('message', '')}")
        for node_id, entry in result.node_errors.items():
            for problem in entry.get("errors", []):
                lines.append(f"  node {node_id} ({entry.get('class_type')}): {problem.get('message')} "
                             f"{problem.get('details', '')}".rstrip())
        return "\n".join(lines)
    lines.append(f"workflow {result.status}: node {error.get('node_id')} ({error.get('node_type')}) raised "
                 f"{error.get('exception_type')}: {error.get('exception_message')}")
    trace = error.get("traceback")
    if trace:
        text = "".join(trace) if isinstance(trace, list) else str(trace)
        lines.append(f"Traceback (most recent call last):\n{text}".rstrip())
    return "\n".join(lines)
