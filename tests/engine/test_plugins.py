"""The plugin host: entry points, local folders, isolation of failures, every hook, disabling."""

from __future__ import annotations

import asyncio
import inspect
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine import hookspecs
from engine.node import In, Input, Node, NodeContext, Output
from engine.plugins import KNOWN_HOOKS, PluginHost, hookimpl
from engine.types import BUILTIN_TYPES, INT, SocketType

FIXTURE_PLUGINS = Path(__file__).parent / "fixtures" / "plugins"


class Const(Node):
    """An integer constant."""

    outputs = (Output(INT),)
    value: int = Input(1)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.value,)


class Double(Node):
    """Twice its input."""

    outputs = (Output(INT),)
    x: In[INT]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (2 * self.x,)


def plugin(name: str, **hooks: Any) -> types.SimpleNamespace:
    """A plugin object whose attributes are the given hook implementations."""
    return types.SimpleNamespace(__name__=name, **{k: hookimpl(v) for k, v in hooks.items()})


def nodes_of(*classes: type) -> Any:
    def register_nodes(register: Any) -> None:
        for cls in classes:
            register(cls)
    return register_nodes


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATENTGRAPH_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LATENTGRAPH_LOAD_PLUGINS", raising=False)


@pytest.fixture
def dist_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding installed-looking distributions with `latentgraph` entry points."""
    root = tmp_path / "site"
    root.mkdir()
    names: list[str] = []

    def add_dist(dist: str, version: str, module: str, source: str, entry: str) -> None:
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[latentgraph]\n{entry} = {module}\n")
        names.append(module)

    add_dist("latentgraph-demo", "1.2.3", "lg_test_demo", """
        from engine import INT, Input, Node, Output, hookimpl

        class DemoConst(Node):
            '''A constant from an installed plugin.'''
            outputs = (Output(INT),)
            value: int = Input(7)
            def run(self, ctx):
                return (self.value,)

        @hookimpl
        def register_nodes(register):
            register(DemoConst)
    """, "demo")
    add_dist("latentgraph-broken", "0.0.1", "lg_test_broken", """
        raise ImportError("lg_test_broken needs a library that is not installed")
    """, "broken")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for module in names:
        sys.modules.pop(module, None)


# ---- entry points ---------------------------------------------------------------------------------


def test_entry_points_load_with_versions_and_failures_isolated(
    dist_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATENTGRAPH_LOAD_PLUGINS", "demo,broken")
    host = PluginHost().load()
    records = {r.name: r for r in host.records}
    assert set(records) == {"demo", "broken"}
    demo, broken = records["demo"], records["broken"]
    assert (demo.source, demo.status, demo.version, demo.nodes, demo.module) == (
        "entry point", "ok", "1.2.3", ["DemoConst"], "lg_test_demo")
    assert host.nodes.owner("DemoConst") == "demo"
    assert (broken.status, broken.version) == ("failed", "0.0.1")
    assert broken.error is not None
    assert "plugin 'broken' failed to import" in broken.error
    assert "ImportError: lg_test_broken needs a library that is not installed" in broken.error


def test_load_plugins_env_empty_turns_entry_points_off(dist_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGRAPH_LOAD_PLUGINS", "")
    host = PluginHost(plugins=[plugin("obj", register_nodes=nodes_of(Const))]).load()
    assert [r.name for r in host.records] == ["obj"]


def test_entry_points_false_loads_none(dist_path: Path) -> None:
    assert PluginHost(entry_points=False).load().records == []


def test_core_entry_point_is_listed_first(dist_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGRAPH_LOAD_PLUGINS", "demo,core")
    host = PluginHost().load()
    assert [r.name for r in host.records] == ["core", "demo"]
    assert host.records[0].module == "nodes.plugin"


# ---- local folders --------------------------------------------------------------------------------


def test_local_folder_loads_files_and_packages_and_skips_private_and_disabled_names() -> None:
    host = PluginHost(entry_points=False, plugin_dirs=[FIXTURE_PLUGINS]).load()
    assert [(r.name, r.source, r.status) for r in host.records] == [
        ("local:arith", "local", "ok"), ("local:textpack", "local", "ok")]
    arith, textpack = host.records
    assert arith.version == "0.3.1"
    assert arith.nodes == ["IntConst", "AddInts", "CountSteps", "FailIfNegative", "SaveNumber"]
    assert arith.path == str(FIXTURE_PLUGINS / "arith.py")
    assert textpack.nodes == ["Shout"]  # imported through the package's relative import
    assert host.nodes.owner("Shout") == "local:textpack"
    assert host.nodes.get("Shout").object_info()["python_module"].startswith("_latentgraph_local_textpack_")


def test_local_plugin_that_raises_on_import_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("raise RuntimeError('bad plugin says no')\n")
    (tmp_path / "good.py").write_text(textwrap.dedent("""
        from engine import hookimpl
        from tests.engine.test_plugins import Const

        @hookimpl
        def register_nodes(register):
            register(Const)
    """))
    host = PluginHost(entry_points=False, plugin_dirs=[tmp_path]).load()
    bad, good = host.records
    assert (bad.name, bad.status) == ("local:bad", "failed")
    assert "RuntimeError: bad plugin says no" in (bad.error or "")
    assert (good.name, good.status, good.nodes) == ("local:good", "ok", ["Const"])
    assert not any(name.startswith("_latentgraph_local_bad_") for name in sys.modules)


def test_missing_plugin_folder_is_a_failed_record(tmp_path: Path) -> None:
    host = PluginHost(entry_points=False, plugin_dirs=[tmp_path / "nope"]).load()
    (record,) = host.records
    assert record.status == "failed"
    assert "does not exist or is not a folder" in (record.error or "")


# ---- isolation ------------------------------------------------------------------------------------


def test_plugin_raising_in_a_hook_is_rolled_back_and_others_stand() -> None:
    def register_nodes(register: Any) -> None:
        register(Double)
        raise ValueError("half-way failure")

    host = PluginHost(entry_points=False, plugins=[
        plugin("good", register_nodes=nodes_of(Const)), plugin("flaky", register_nodes=register_nodes),
    ]).load()
    good, flaky = host.records
    assert (good.status, good.nodes) == ("ok", ["Const"])
    assert flaky.status == "failed" and flaky.nodes == []
    assert "ValueError: half-way failure" in (flaky.error or "")
    assert host.nodes.names() == ["Const"]  # Double was rolled back


def test_plugin_failing_in_a_later_hook_loses_its_nodes_types_and_samplers() -> None:
    def register_routes(register: Any) -> None:
        register("not a route")

    host = PluginHost(entry_points=False, plugins=[plugin(
        "late", register_types=lambda register: register(SocketType("LATE")),
        register_nodes=nodes_of(Const), register_samplers=lambda register: register("s", print),
        register_routes=register_routes)]).load()
    (record,) = host.records
    assert record.status == "failed"
    assert "register_routes expects aiohttp route definitions" in (record.error or "")
    assert len(host.nodes) == 0 and "LATE" not in host.types and host.samplers == {}


class NotANode:
    """Not derived from Node."""


class NoRun(Node):
    """Forgot run()."""

    outputs = (Output(INT),)


@pytest.mark.parametrize(("bad", "message"), [
    (NotANode, "which is not a Node subclass"),
    (NoRun, "does not define run(self, ctx)"),
])
def test_bad_node_fails_only_its_plugin(bad: type, message: str) -> None:
    host = PluginHost(entry_points=False, plugins=[
        plugin("bad", register_nodes=nodes_of(Double, bad)), plugin("good", register_nodes=nodes_of(Const)),
    ]).load()
    bad_record, good = host.records
    assert bad_record.status == "failed" and message in (bad_record.error or "")
    assert good.status == "ok"
    assert host.nodes.names() == ["Const"]


def test_node_with_bad_outputs_declared_in_a_hook_fails_its_plugin() -> None:
    def register_nodes(register: Any) -> None:
        class BadOutputs(Node):
            outputs = ("INT",)  # type: ignore[assignment]

            def run(self, ctx: NodeContext) -> tuple[Any, ...]:
                return (1,)
        register(BadOutputs)

    host = PluginHost(entry_points=False, plugins=[plugin("badout", register_nodes=register_nodes)]).load()
    assert host.records[0].status == "failed"
    assert "outputs must be Output(...) entries" in (host.records[0].error or "")


def test_two_plugins_with_the_same_node_type_fail_the_second_naming_both() -> None:
    class Const2(Const):
        node_type = "Const"

    host = PluginHost(entry_points=False, plugins=[
        plugin("first", register_nodes=nodes_of(Const)), plugin("second", register_nodes=nodes_of(Double, Const2)),
    ]).load()
    first, second = host.records
    assert first.status == "ok" and second.status == "failed"
    assert "node type 'Const' from plugin 'second'" in (second.error or "")
    assert "registered by plugin 'first'" in (second.error or "")
    assert host.nodes.get("Const") is Const and "Double" not in host.nodes


def test_unknown_hook_fails_the_plugin_not_the_host() -> None:
    host = PluginHost(entry_points=False, plugins=[
        plugin("typo", register_node=nodes_of(Const)), plugin("fine", register_nodes=nodes_of(Double)),
    ]).load()
    typo, fine = host.records
    assert typo.status == "failed"
    assert "implements hooks this version of latentgraph does not know: register_node" in (typo.error or "")
    assert fine.status == "ok" and host.nodes.names() == ["Double"]


def test_hook_argument_not_in_the_spec_fails_the_plugin() -> None:
    def register_nodes(register: Any, registry: Any) -> None:
        pass

    host = PluginHost(entry_points=False, plugins=[plugin("args", register_nodes=register_nodes)]).load()
    assert host.records[0].status == "failed"
    assert "PluginValidationError" in (host.records[0].error or "")


def test_plugin_without_hooks_is_ok_with_no_nodes() -> None:
    host = PluginHost(entry_points=False, plugins=[types.ModuleType("empty_plugin")]).load()
    (record,) = host.records
    assert (record.name, record.status, record.nodes, record.hooks, record.source) == (
        "empty_plugin", "ok", [], [], "object")


# ---- disabling ------------------------------------------------------------------------------------


def test_disabled_by_argument_is_not_imported(tmp_path: Path) -> None:
    (tmp_path / "explodes.py").write_text("raise RuntimeError('must not be imported')\n")
    host = PluginHost(entry_points=False, plugin_dirs=[tmp_path, FIXTURE_PLUGINS],
                      disabled=["explodes", "local:textpack"]).load()
    assert [(r.name, r.status) for r in host.records] == [
        ("local:explodes", "disabled"), ("local:arith", "ok"), ("local:textpack", "disabled")]
    assert "Shout" not in host.nodes


def test_disabled_by_env_var(dist_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGRAPH_LOAD_PLUGINS", "demo,broken")
    monkeypatch.setenv("LATENTGRAPH_DISABLE_PLUGINS", " broken , obj")
    host = PluginHost(plugins=[plugin("obj", register_nodes=nodes_of(Const))]).load()
    assert [(r.name, r.status) for r in host.records] == [
        ("broken", "disabled"), ("demo", "ok"), ("obj", "disabled")]
    assert "lg_test_broken" not in sys.modules


# ---- each hook ------------------------------------------------------------------------------------


WIDGET = SocketType("WIDGET", color="#112233")


class MakeWidget(Node):
    """Outputs a plugin-defined type."""

    outputs = (Output(WIDGET),)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return ("w",)


def test_hook_register_types() -> None:
    host = PluginHost(entry_points=False, plugins=[plugin(
        "widgets", register_types=lambda register: register(WIDGET), register_nodes=nodes_of(MakeWidget))]).load()
    assert host.records[0].status == "ok"
    assert host.types.get("WIDGET") is WIDGET and host.types.owner("WIDGET") == "widgets"
    assert {t.name for t in BUILTIN_TYPES} <= {t.name for t in host.types}
    assert host.nodes.types is host.types


def test_hook_register_types_conflict_and_bad_value() -> None:
    other = SocketType("WIDGET", color="#ffffff")
    host = PluginHost(entry_points=False, plugins=[
        plugin("a", register_types=lambda register: register(WIDGET)),
        plugin("b", register_types=lambda register: register(other)),
        plugin("c", register_types=lambda register: register("WIDGET")),
    ]).load()
    assert [r.status for r in host.records] == ["ok", "failed", "failed"]
    assert "socket type 'WIDGET' from plugin 'b' conflicts with the one registered by plugin 'a'" in (
        host.records[1].error or "")
    assert "register_types expects engine.SocketType instances, got 'WIDGET'" in (host.records[2].error or "")
    assert host.types.get("WIDGET") is WIDGET


def test_hook_register_nodes() -> None:
    host = PluginHost(entry_points=False, plugins=[plugin("n", register_nodes=nodes_of(Const, Double))]).load()
    assert host.records[0].nodes == ["Const", "Double"]
    assert host.nodes.get("Double") is Double and host.nodes.owner("Double") == "n"


def euler(model: Any, x: Any, sigmas: Any, extra_args: Any = None, callback: Any = None) -> Any:
    return x


def karras(model_sampling: Any, steps: int) -> list[float]:
    return [1.0] * steps


def test_hook_register_samplers() -> None:
    host = PluginHost(entry_points=False, plugins=[
        plugin("s1", register_samplers=lambda register: register("euler_test", euler)),
        plugin("s2", register_samplers=lambda register: register("euler_test", karras)),
        plugin("s3", register_samplers=lambda register: register("x", 42)),
    ]).load()
    assert host.samplers == {"euler_test": euler}
    assert [r.status for r in host.records] == ["ok", "failed", "failed"]
    assert "sampler 'euler_test' from plugin 's2' conflicts with the one registered by plugin 's1'" in (
        host.records[1].error or "")
    assert "sampler 'x' must be callable, got 42" in (host.records[2].error or "")


def test_hook_register_schedulers() -> None:
    host = PluginHost(entry_points=False, plugins=[
        plugin("k", register_schedulers=lambda register: register("karras_test", karras))]).load()
    assert host.schedulers == {"karras_test": karras}
    assert host.schedulers["karras_test"](None, 3) == [1.0, 1.0, 1.0]


def test_hook_register_model_loaders() -> None:
    def load_upscaler(path: str) -> str:
        return f"loaded {path}"

    host = PluginHost(entry_points=False, plugins=[
        plugin("m", register_model_loaders=lambda register: register("upscaler", load_upscaler))]).load()
    assert host.model_loaders["upscaler"]("x.pth") == "loaded x.pth"


def test_hook_register_web_extensions(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    host = PluginHost(entry_points=False, plugins=[
        plugin("w", register_web_extensions=lambda register: register(tmp_path / "web")),
        plugin("missing", register_web_extensions=lambda register: register(str(tmp_path / "nope"))),
    ]).load()
    assert host.web_extensions == {"w": tmp_path / "web"}
    assert host.records[1].status == "failed"
    assert "web extension folder" in (host.records[1].error or "")


def test_hook_register_routes() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    table = web.RouteTableDef()
    table.get("/b")(hello)

    def register_routes(register: Any) -> None:
        register(web.get("/a", hello))
        register(table)

    host = PluginHost(entry_points=False, plugins=[plugin("r", register_routes=register_routes)]).load()
    routes = host.routes["r"]
    assert [(r.method, r.path) for r in routes] == [("GET", "/a"), ("GET", "/b")]


def test_hook_startup_sync_and_async_with_failures_recorded() -> None:
    seen: list[str] = []

    def sync_startup(env: Any) -> None:
        seen.append(f"sync {env.settings['x']}")

    async def async_body(env: Any) -> None:
        await asyncio.sleep(0)
        seen.append("async")

    def async_startup(env: Any) -> Any:
        return async_body(env)

    def no_args_startup() -> None:
        seen.append("no args")

    def failing_startup(env: Any) -> None:
        raise RuntimeError("startup broke")

    host = PluginHost(entry_points=False, plugins=[
        plugin("a", startup=sync_startup), plugin("b", startup=async_startup),
        plugin("c", startup=no_args_startup),
        plugin("d", startup=failing_startup, register_nodes=nodes_of(Const)),
    ]).load()
    host.startup(host.environment({"x": 1}))
    assert seen == ["sync 1", "no args", "async"]
    assert [r.status for r in host.records] == ["ok", "ok", "ok", "failed"]
    assert "RuntimeError: startup broke" in (host.records[3].error or "")
    assert host.records[3].nodes == ["Const"] and "Const" in host.nodes  # registered before startup


def test_startup_called_while_an_event_loop_runs_in_this_thread() -> None:
    seen: list[str] = []

    async def async_body(env: Any) -> None:
        await asyncio.sleep(0)
        seen.append("async")

    host = PluginHost(entry_points=False, plugins=[plugin("b", startup=lambda env: async_body(env))]).load()

    async def embedded() -> None:  # e.g. a notebook or an async application calling the CLI code
        host.startup(host.environment({}))

    asyncio.run(embedded())
    assert seen == ["async"] and host.records[0].status == "ok"


# ---- host behaviour -------------------------------------------------------------------------------


def test_load_is_idempotent() -> None:
    host = PluginHost(entry_points=False, plugins=[plugin("n", register_nodes=nodes_of(Const))])
    assert host.load() is host.load()
    assert len(host.records) == 1 and host.nodes.names() == ["Const"]


def test_environment_exposes_registries_as_services() -> None:
    from engine.config import Settings

    host = PluginHost(entry_points=False, plugins=[
        plugin("s", register_samplers=lambda register: register("euler_test", euler))])
    env = host.environment({"device": "cpu"})
    assert env.settings == {"device": "cpu"}
    assert env.services["samplers"] == {"euler_test": euler}
    assert env.services["schedulers"] == {} and env.services["model_loaders"] == {}
    assert env.services["plugin_host"] is host
    assert host.environment(Settings(output_dir=Path("/tmp/o"))).settings["output_dir"] == "/tmp/o"


def test_add_and_remove_plugin() -> None:
    host = PluginHost(entry_points=False, plugins=[plugin("base", register_nodes=nodes_of(Const))]).load()
    record = host.add_plugin(plugin("extra", register_nodes=nodes_of(Double),
                                    register_types=lambda register: register(WIDGET),
                                    register_schedulers=lambda register: register("k", karras)))
    assert record.status == "ok" and "Double" in host.nodes and host.schedulers == {"k": karras}
    host.remove_plugin("extra")
    assert host.nodes.names() == ["Const"] and "WIDGET" not in host.types and host.schedulers == {}
    assert [r.name for r in host.records] == ["base"]
    with pytest.raises(KeyError, match="no plugin named 'extra'"):
        host.remove_plugin("extra")


def test_records_serialise_for_the_cli_and_api() -> None:
    host = PluginHost(entry_points=False, plugins=[plugin("n", register_nodes=nodes_of(Const))]).load()
    assert host.records[0].to_dict() == {
        "name": "n", "version": None, "source": "object", "status": "ok", "error": None,
        "nodes": ["Const"], "hooks": ["register_nodes"], "module": "types", "path": None}


# ---- meta: every hook is documented and tested ----------------------------------------------------


def test_every_hookspec_is_documented_and_tested() -> None:
    specs = [name for name, fn in vars(hookspecs).items() if hasattr(fn, "latentgraph_spec")]
    assert sorted(specs) == sorted(KNOWN_HOOKS)
    tests = {name for name in globals() if name.startswith("test_hook_")}
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert doc.splitlines()[0].endswith(".") and ".. versionadded:: 0.1" in doc, name
        assert any(t.startswith(f"test_hook_{name}") for t in tests), f"no test_hook_{name}"
        assert "register" in inspect.signature(getattr(hookspecs, name)).parameters or name == "startup"
