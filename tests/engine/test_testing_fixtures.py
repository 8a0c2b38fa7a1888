"""The pytest plugin for plugin authors (`engine.testing`): plugin_host, register_plugin, run_workflow."""

from __future__ import annotations

import json
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from engine.plugins import hookimpl
from engine.testing import PluginLoadError, WorkflowRunError, nodes_plugin
from engine.types import BUILTIN_TYPES
from tests.engine import testnodes

pytest_plugins = ["pytester"]

ADD_AND_SHOW = {
    "1": {"class_type": "IntConst", "inputs": {"value": 4}},
    "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 5}},
    "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
}


def test_plugin_host_has_no_entry_points_and_cpu_settings_in_tmp(plugin_host: Any, tmp_path: Path) -> None:
    assert plugin_host.records == [] and len(plugin_host.nodes) == 0
    assert [t.name for t in plugin_host.types] == [t.name for t in BUILTIN_TYPES]
    env = plugin_host.environment()
    assert env.settings["output_dir"] == str(tmp_path / "output")
    assert (env.settings["device"], env.settings["precision"]) == ("cpu", "fp32")
    assert env.services["plugin_host"] is plugin_host


def test_add_nodes_helper(plugin_host: Any) -> None:
    record = plugin_host.add_nodes(testnodes.IntConst, testnodes.Add, name="mine")
    assert (record.name, record.status, record.nodes) == ("mine", "ok", ["IntConst", "Add"])
    assert plugin_host.nodes.owner("Add") == "mine"
    with pytest.raises(PluginLoadError, match="plugin 'clash' failed to load"):
        plugin_host.add_nodes(testnodes.Add, name="clash")


def test_register_plugin_and_run_workflow(register_plugin: Any, run_workflow: Any) -> None:
    record = register_plugin(nodes_plugin(testnodes.IntConst, testnodes.Add, testnodes.Show, name="calc"))
    assert record.status == "ok"
    assert run_workflow(ADD_AND_SHOW) == {"3": {"text": ["9"]}}


def test_run_workflow_accepts_files_and_editor_format(register_plugin: Any, run_workflow: Any,
                                                      tmp_path: Path) -> None:
    register_plugin(nodes_plugin(testnodes.IntConst, testnodes.Add, testnodes.Show))
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(ADD_AND_SHOW))
    assert run_workflow(path) == {"3": {"text": ["9"]}}
    editor = {"nodes": [
        {"id": 1, "type": "IntConst", "mode": 0, "inputs": [], "widgets_values": [2]},
        {"id": 2, "type": "Show", "mode": 0, "inputs": [{"name": "value", "type": "*", "link": 1}]},
    ], "links": [[1, 1, 0, 2, 0, "INT"]], "version": 0.4}
    assert run_workflow(editor) == {"2": {"text": ["2"]}}


def test_run_workflow_targets_and_settings(register_plugin: Any, run_workflow: Any, tmp_path: Path) -> None:
    register_plugin(nodes_plugin(testnodes.IntConst, testnodes.Show, testnodes.FileText))
    text = tmp_path / "note.txt"
    text.write_text("from a file")
    prompt = {"1": {"class_type": "FileText", "inputs": {"path": str(text)}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "IntConst", "inputs": {"value": 1}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    assert run_workflow(prompt, targets=["2"]) == {"2": {"text": ["from a file"]}}


def test_run_workflow_raises_readably_when_invalid(register_plugin: Any, run_workflow: Any) -> None:
    register_plugin(nodes_plugin(testnodes.IntConst, testnodes.Add, testnodes.Show))
    bad = json.loads(json.dumps(ADD_AND_SHOW))
    bad["1"]["inputs"]["value"] = 5000
    with pytest.raises(WorkflowRunError) as info:
        run_workflow(bad)
    assert "workflow is invalid" in str(info.value)
    assert "node 1 (IntConst)" in str(info.value) and "5000" in str(info.value)


def test_run_workflow_raises_with_the_traceback_when_a_node_fails(register_plugin: Any, run_workflow: Any) -> None:
    register_plugin(nodes_plugin(testnodes.Fail, testnodes.Show))
    prompt = {"1": {"class_type": "Fail", "inputs": {"message": "kaput"}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    with pytest.raises(WorkflowRunError) as info:
        run_workflow(prompt)
    message = str(info.value)
    assert message.startswith("workflow error: node 1 (Fail) raised RuntimeError: kaput")
    assert "raise RuntimeError(self.message)" in message  # the node's frame
    assert info.value.result.status == "error"


def test_register_plugin_strict_and_lenient(register_plugin: Any) -> None:
    broken = types.SimpleNamespace(__name__="broken", register_nodes=hookimpl(lambda register: register(42)))
    with pytest.raises(PluginLoadError, match="which is not a Node subclass"):
        register_plugin(broken)
    lenient = types.SimpleNamespace(__name__="lenient", register_nodes=hookimpl(lambda register: register(42)))
    assert register_plugin(lenient, strict=False).status == "failed"


def test_fixtures_for_a_plugin_author_and_undo_after_each_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_author=textwrap.dedent("""
        from engine import INT, Input, Node, Output, NodeResult, hookimpl

        class Triple(Node):
            '''Three times a number.'''
            output_node = True
            value: int = Input(1)
            def run(self, ctx):
                return NodeResult(ui={"value": [3 * self.value]})

        @hookimpl
        def register_nodes(register):
            register(Triple)

        import sys
        SEEN = []

        def test_first(plugin_host, register_plugin, run_workflow):
            register_plugin(sys.modules[__name__], name="triple")
            SEEN.append(plugin_host)
            assert run_workflow({"1": {"class_type": "Triple", "inputs": {"value": 5}}}) == {"1": {"value": [15]}}

        def test_undone(plugin_host):
            (earlier,) = SEEN
            assert "Triple" not in earlier.nodes and earlier.record("triple") is None
            assert "Triple" not in plugin_host.nodes
    """))
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-o",
                                         "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(passed=2)
