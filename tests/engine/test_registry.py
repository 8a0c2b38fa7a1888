"""NodeRegistry: registration rules, conflicts, lookups and schema."""

from __future__ import annotations

from typing import Any

import pytest

from engine.node import Input, Node, NodeContext, Output
from engine.registry import NodeConflictError, NodeRegistrationError, NodeRegistry, UnknownNodeError
from engine.types import INT
from tests.engine.testnodes import NODES, WIDGET, Add, IntConst, make_registry


def _other_int_const() -> type[Node]:
    class IntConst(Node):  # same node_type as the test node, different class
        """A rival integer constant."""

        outputs = (Output(INT),)
        value: int = Input(1)

        def run(self, ctx: NodeContext) -> tuple[Any, ...]:
            return (self.value,)

    return IntConst


def test_register_and_lookup() -> None:
    registry = make_registry()
    assert registry.get("Add") is Add
    assert registry["IntConst"] is IntConst
    assert registry.get("Nope") is None
    assert "Add" in registry and "Nope" not in registry
    assert registry.owner("Add") == "tests"
    assert registry.owner("Nope") is None
    assert list(registry) == [cls.node_type for cls in NODES]
    assert registry.names() == list(registry) and len(registry) == len(NODES)
    assert registry.by_plugin("tests") == registry.names()
    assert "WIDGET" in registry.types and registry.types.owner("WIDGET") == "tests"


def test_same_class_same_plugin_is_a_noop() -> None:
    registry = NodeRegistry()
    assert registry.register(Add) is Add
    assert registry.register(Add) is Add
    assert len(registry) == 1 and registry.owner("Add") == "core"


def test_conflict_names_both_plugins_and_the_type() -> None:
    registry = NodeRegistry()
    registry.register(IntConst, plugin="alpha")
    with pytest.raises(NodeConflictError) as err:
        registry.register(_other_int_const(), plugin="beta")
    text = str(err.value)
    assert "'IntConst'" in text and "'alpha'" in text and "'beta'" in text
    with pytest.raises(NodeConflictError):
        registry.register(IntConst, plugin="beta")  # same class, other plugin: still a conflict
    assert registry.get("IntConst") is IntConst and registry.owner("IntConst") == "alpha"


def test_rejects_non_nodes_and_nodes_without_run() -> None:
    registry = NodeRegistry()
    with pytest.raises(NodeRegistrationError, match="not a Node subclass"):
        registry.register(dict, plugin="p")
    with pytest.raises(NodeRegistrationError, match="not a Node subclass"):
        registry.register(Add(a=1), plugin="p")

    class NoRun(Node):
        """Forgot run."""

        outputs = (Output(INT),)

    with pytest.raises(NodeRegistrationError, match=r"NoRun.*does not define run"):
        registry.register(NoRun, plugin="p")
    assert len(registry) == 0


def test_close_matches_and_unknown_lookup_error() -> None:
    registry = make_registry()
    assert registry.close_matches("IntConts")[0] == "IntConst"
    assert "Add" in registry.close_matches("add")
    assert registry.close_matches("Zzzzzzzz") == []
    with pytest.raises(UnknownNodeError, match=r"unknown node type 'Concatt'; did you mean 'Concat'"):
        registry["Concatt"]


def test_object_info_and_json_schema() -> None:
    registry = make_registry()
    info = registry.object_info()
    assert set(info) == set(registry.names())
    add = info["Add"]
    assert add["python_module"] == "tests"
    assert add["input"]["required"]["a"] == ["INT"]
    assert add["input"]["required"]["b"] == ["INT", {"default": 0, "min": -1_000_000, "max": 1_000_000}]
    assert add["output"] == ["INT"] and add["output_name"] == ["sum"]
    assert info["Show"]["output_node"] is True
    assert info["UseWidget"]["input"]["required"]["widget"] == [WIDGET.name]
    schema = registry.json_schema()
    assert schema["Pick"]["properties"]["mode"]["enum"] == ["fast", "slow", "exact"]
    assert schema["Add"]["x-node"]["plugin"] == "tests"
