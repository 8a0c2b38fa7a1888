"""The fixtures added for plugin authors: `load_entry_point` and `run_node`."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from engine import INT, IMAGE, In, Input, Node, NodeContext, NodeResult, Output
from engine.testing import PluginLoadError, nodes_plugin


class Scale(Node):
    """Multiply an image."""

    outputs = (Output(IMAGE),)
    image: In[IMAGE]
    factor: float = Input(2.0, ge=0.0, le=10.0)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.image * self.factor,)


class TwoOutputsOneValue(Node):
    """Declares two outputs but returns one."""

    outputs = (Output(INT), Output(INT))

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (1,)


class Reports(Node):
    """Returns UI data and reads its environment."""

    outputs = (Output(INT),)
    output_node = True

    def run(self, ctx: NodeContext) -> NodeResult:
        return NodeResult([7], ui={"device": [ctx.env.settings["device"]], "node": [ctx.node_id, ctx.node_type]})


def test_load_entry_point_loads_installed_plugins_like_the_host(load_entry_point: Any, plugin_host: Any) -> None:
    record = load_entry_point("extras")
    assert (record.name, record.source, record.version, record.status) == ("extras", "entry point", "0.1.0", "ok")
    assert "PALETTE" in plugin_host.types and plugin_host.nodes.owner("ApplyPalette") == "extras"
    core = load_entry_point("core")
    assert core.source == "entry point" and "SaveImage" in plugin_host.nodes
    assert [r.name for r in plugin_host.records] == ["extras", "core"]


def test_load_entry_point_names_what_is_installed_when_missing(load_entry_point: Any) -> None:
    with pytest.raises(PluginLoadError) as info:
        load_entry_point("no_such_plugin")
    message = str(info.value)
    assert message.startswith("no installed plugin has the entry point 'no_such_plugin' in group 'latentgraph' "
                              "(installed: ")
    assert re.search(r"installed: [^)]*\bcore\b[^)]*\bextras\b", message)
    assert "[project.entry-points.latentgraph]" in message


def test_run_node_with_tensors_by_class_or_by_name(run_node: Any, register_plugin: Any) -> None:
    image = torch.full((1, 2, 2, 3), 0.25)
    result = run_node(Scale, image=image, factor=3.0)
    assert isinstance(result, NodeResult) and result.ui is None
    (out,) = result.values
    assert torch.equal(out, torch.full((1, 2, 2, 3), 0.75))
    register_plugin(nodes_plugin(Scale, Reports))
    assert torch.equal(run_node("Scale", image=image).values[0], torch.full((1, 2, 2, 3), 0.5))
    reported = run_node("Reports")
    assert reported.values == (7,) and reported.ui == {"device": ["cpu"], "node": ["1", "Reports"]}


def test_run_node_errors(run_node: Any) -> None:
    with pytest.raises(ValueError, match="less than or equal to 10"):
        run_node(Scale, image=torch.zeros(1, 1, 1, 3), factor=11.0)
    with pytest.raises(PluginLoadError, match="no node type 'Scale' is registered"):
        run_node("Scale", image=torch.zeros(1, 1, 1, 3))
    with pytest.raises(AssertionError, match=r"node TwoOutputsOneValue: run\(\) returned 1 value\(s\) but the node "
                                             r"declares 2 output\(s\)"):
        run_node(TwoOutputsOneValue)
