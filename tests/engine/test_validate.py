"""validate_prompt: every kind of bad input, in ComfyUI's error shapes, with messages that locate it."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from engine.node import Environment, Input, Node, NodeContext, Output, Problem
from engine.types import INT
from engine.validate import ValidationResult, node_sort_key, topological_order, validate_prompt
from tests.engine.testnodes import make_registry

REGISTRY = make_registry()


def n(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def check(prompt: Any, env: Environment | None = None, targets: Iterable[str] | None = None) -> ValidationResult:
    return validate_prompt(prompt, REGISTRY, env or Environment(), targets)


def only_error(result: ValidationResult, node_id: str) -> dict[str, Any]:
    errors = result.node_errors[node_id]["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def assert_located(error: dict[str, Any], node_id: str, class_type: str, input_name: str | None, value: Any) -> None:
    assert set(error) == {"type", "message", "details", "extra_info"}
    assert error["extra_info"]["input_name"] == input_name
    assert error["extra_info"]["received_value"] == value
    text = error["message"] + " " + error["details"]
    assert f"node {node_id} ({class_type})" in text
    if input_name is not None:
        assert f"'{input_name}'" in text
    if value is not None:
        assert repr(value) in text or str(value) in text


def failed(result: ValidationResult) -> None:
    assert not result.ok
    assert result.error is not None
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert result.error["message"] == "Prompt outputs failed validation"
    assert result.error["extra_info"] == {}
    assert result.outputs == [] and result.order == []


def test_valid_prompt_gives_values_links_outputs_and_order() -> None:
    result = check({
        "1": n("IntConst", value=3),
        "2": n("Add", a=["1", 0]),
        "3": n("Show", value=["2", 0]),
        "4": n("StringConst", text="unused"),
    })
    assert result.ok and result.error is None and result.node_errors == {}
    assert result.outputs == ["3"]
    assert result.order == ["1", "2", "3"]  # node 4 feeds no output
    assert result.values["2"] == {"b": 0}  # the default fills the missing widget
    assert result.links["2"] == {"a": ("1", 0)}
    assert "4" not in result.values


def test_not_a_dict_and_empty() -> None:
    result = check([1, 2])
    assert not result.ok and result.error is not None
    assert result.error["type"] == "invalid_prompt" and "list" in result.error["details"]
    result = check({})
    assert result.error is not None and result.error["type"] == "prompt_no_outputs"


def test_no_output_nodes() -> None:
    result = check({"1": n("IntConst", value=1)})
    assert not result.ok and result.error is not None
    assert result.error["type"] == "prompt_no_outputs"
    assert "output node" in result.error["details"]


def test_unknown_class_type_lists_close_matches() -> None:
    result = check({"1": n("IntConts", value=1), "2": n("Show", value=["1", 0])})
    assert not result.ok and result.error is not None
    assert result.error["type"] == "invalid_prompt"
    assert result.error["extra_info"]["node_id"] == "1"
    error = only_error(result, "1")
    assert error["type"] == "missing_node_type"
    assert "node 1 (IntConts)" in error["details"] and "IntConst" in error["details"]
    assert error["extra_info"]["close_matches"][0] == "IntConst"
    assert result.node_errors["1"]["class_type"] == "IntConts"


def test_missing_class_type() -> None:
    result = check({"1": {"inputs": {}}, "2": n("Show", value=["3", 0]), "3": n("IntConst")})
    assert result.error is not None and result.error["type"] == "invalid_prompt"
    assert "class_type" in result.error["message"]
    assert only_error(result, "1")["type"] == "invalid_prompt"


def test_targets_select_nodes_and_unknown_targets_fail() -> None:
    prompt = {"1": n("IntConst", value=2), "2": n("Add", a=["1", 0], b=1), "3": n("Show", value=["2", 0]),
              "4": n("StringConst", text="x")}
    result = check(prompt, targets=["4"])
    assert result.ok and result.outputs == ["4"] and result.order == ["4"]
    result = check(prompt, targets=["2"])
    assert result.ok and result.outputs == ["2"] and result.order == ["1", "2"]
    result = check(prompt, targets=["9"])
    assert not result.ok and result.error is not None
    assert result.error["type"] == "invalid_prompt" and "9" in result.error["details"]


def test_required_inputs_missing() -> None:
    result = check({"1": n("Add", b=2), "2": n("NeedsCount"), "3": n("Show", value=["1", 0]),
                    "4": n("Show", value=["2", 0])})
    failed(result)
    error = only_error(result, "1")
    assert error["type"] == "required_input_missing"
    assert_located(error, "1", "Add", "a", None)
    assert "connect a INT output" in error["details"]
    error = only_error(result, "2")
    assert error["type"] == "required_input_missing"
    assert_located(error, "2", "NeedsCount", "count", None)
    assert error["extra_info"]["input_config"] == ["INT", {"min": 0, "max": 10}]


@pytest.mark.parametrize(("link", "why"), [
    (["9", 0], "not in the prompt"),
    (["1", 1], "has 1 output(s) (0: INT)"),
    (["1", -1], "has 1 output(s)"),
    (["1", 0, 0], "malformed link"),
    (["1"], "malformed link"),
    ([None, 0], "malformed link"),
    (["1", 0.5], "malformed link"),
    (["1", True], "malformed link"),
])
def test_bad_links(link: list[Any], why: str) -> None:
    result = check({"1": n("IntConst", value=1), "2": n("Add", a=link), "3": n("Show", value=["2", 0])})
    failed(result)
    error = only_error(result, "2")
    assert error["type"] == "bad_linked_input"
    assert_located(error, "2", "Add", "a", link)
    assert why in error["details"]
    assert result.node_errors["2"]["dependent_outputs"] == ["3"]
    assert "3" not in result.node_errors  # downstream nodes without errors of their own are left out


def test_lenient_link_forms() -> None:
    result = check({"1": n("IntConst", value=1), "2": n("Add", a=[1, 0.0]), "3": n("Show", value=["2", 0])})
    assert result.ok and result.links["2"] == {"a": ("1", 0)}


def test_type_mismatch_names_both_types() -> None:
    result = check({"1": n("IntConst", value=1), "2": n("Concat", a=["1", 0]), "3": n("Show", value=["2", 0])})
    failed(result)
    error = only_error(result, "2")
    assert error["type"] == "return_type_mismatch"
    assert_located(error, "2", "Concat", "a", ["1", 0])
    assert "expected STRING" in error["details"] and "gives INT" in error["details"]
    assert "node 1 (IntConst)" in error["details"]
    assert error["extra_info"]["received_type"] == "INT"


def test_custom_socket_types_and_compatible_links() -> None:
    bad = check({"1": n("MakeGadget"), "2": n("UseWidget", widget=["1", 0]), "3": n("Show", value=["2", 0])})
    failed(bad)
    assert only_error(bad, "2")["type"] == "return_type_mismatch"
    assert "expected WIDGET" in only_error(bad, "2")["details"] and "gives GADGET" in only_error(bad, "2")["details"]
    good = check({
        "1": n("MakeWidget", size=3), "2": n("UseWidget", widget=["1", 0]),
        "3": n("AddFloat", x=["2", 0]),  # INT feeds FLOAT
        "4": n("StringConst", text="slow"), "5": n("Pick", mode=["4", 0]),  # STRING feeds a combo
        "6": n("Show", value=["3", 0]), "7": n("Show", value=["5", 0]),
    })
    assert good.ok, good.node_errors
    combo_from_int = check({"1": n("IntConst"), "2": n("Pick", mode=["1", 0]), "3": n("Show", value=["2", 0])})
    assert only_error(combo_from_int, "2")["type"] == "return_type_mismatch"


def test_cycle_names_the_nodes_in_order() -> None:
    result = check({
        "1": n("Add", a=["3", 0]),
        "2": n("Add", a=["1", 0]),
        "3": n("Add", a=["2", 0]),
        "4": n("Show", value=["3", 0]),
        "5": n("Add", a=["5", 0]),
        "6": n("Show", value=["5", 0]),
    })
    failed(result)
    for node_id, source in (("1", "3"), ("2", "1"), ("3", "2")):
        error = only_error(result, node_id)
        assert error["type"] == "dependency_cycle"
        assert "1 -> 2 -> 3 -> 1" in error["details"]
        assert error["extra_info"]["cycle"] == ["1", "2", "3"]
        assert_located(error, node_id, "Add", "a", [source, 0])
        assert result.node_errors[node_id]["dependent_outputs"] == ["4"]
    assert "5 -> 5" in only_error(result, "5")["details"]
    assert "4" not in result.node_errors and "6" not in result.node_errors


@pytest.mark.parametrize(("node", "inputs", "kind", "name", "value"), [
    ("IntConst", {"value": "abc"}, "invalid_input_type", "value", "abc"),
    ("IntConst", {"value": True}, "invalid_input_type", "value", True),
    ("IntConst", {"value": 2.5}, "invalid_input_type", "value", 2.5),
    ("IntConst", {"value": None}, "invalid_input_type", "value", None),
    ("IntConst", {"value": 1001}, "value_bigger_than_max", "value", 1001),
    ("IntConst", {"value": -1001}, "value_smaller_than_min", "value", -1001),
    ("IntConst", {"value": "2000"}, "value_bigger_than_max", "value", "2000"),
    ("FloatConst", {"value": "x"}, "invalid_input_type", "value", "x"),
    ("FloatConst", {"value": False}, "invalid_input_type", "value", False),
    ("FloatConst", {"value": float("nan")}, "invalid_input_type", "value", "NaN"),
    ("FloatConst", {"value": 1.5}, "value_bigger_than_max", "value", 1.5),
    ("FloatConst", {"value": -0.25}, "value_smaller_than_min", "value", -0.25),
    ("StringConst", {"text": {"a": 1}}, "invalid_input_type", "text", {"a": 1}),
    ("BoolConst", {"flag": "yes"}, "invalid_input_type", "flag", "yes"),
    ("BoolConst", {"flag": 2}, "invalid_input_type", "flag", 2),
    ("Pick", {"mode": "medium"}, "value_not_in_list", "mode", "medium"),
    ("Pick", {"mode": 1}, "value_not_in_list", "mode", 1),
    ("Show", {"value": 5}, "invalid_input_type", "value", 5),
])
def test_bad_widget_values(node: str, inputs: dict[str, Any], kind: str, name: str, value: Any) -> None:
    prompt = {"1": n(node, **inputs), "2": n("Show", value=["1", 0])} if node != "Show" else {"1": n(node, **inputs)}
    result = check(prompt)
    failed(result)
    error = only_error(result, "1")
    assert error["type"] == kind
    if value == "NaN":  # NaN does not equal itself; check the message instead
        assert "got nan" in error["details"]
    else:
        assert_located(error, "1", node, name, value)


def test_range_message_says_the_bound_and_fix() -> None:
    error = only_error(check({"1": n("IntConst", value=1001), "2": n("Show", value=["1", 0])}), "1")
    assert error["details"] == ("node 1 (IntConst) input 'value': expected a value <= 1000, got 1001; "
                                "lower it into the allowed range")
    assert error["message"] == "Value bigger than max"
    assert error["extra_info"]["input_config"] == ["INT", {"default": 0, "min": -1000, "max": 1000}]


def test_values_are_coerced_as_comfyui_does() -> None:
    prompt = {
        "1": n("IntConst", value=3.0), "2": n("IntConst", value=" 7 "), "3": n("FloatConst", value=1),
        "4": n("FloatConst", value="0.25"), "5": n("StringConst", text=5), "6": n("BoolConst", flag="False"),
        "7": n("BoolConst", flag=1),
    }
    prompt.update({str(10 + i): n("Show", value=[str(i), 0]) for i in range(1, 8)})
    result = check(prompt)
    assert result.ok, result.node_errors
    got = {k: result.values[k] for k in "1234567"}
    assert got == {"1": {"value": 3}, "2": {"value": 7}, "3": {"value": 1.0}, "4": {"value": 0.25},
                   "5": {"text": "5"}, "6": {"flag": False}, "7": {"flag": True}}
    assert type(got["1"]["value"]) is int and type(got["3"]["value"]) is float


def test_combo_lists_at_most_20_choices_and_callable_choices(tmp_path: Path) -> None:
    for i in range(25):
        (tmp_path / f"f{i:02d}.png").write_bytes(b"x")
    env = Environment(settings={"input_dir": str(tmp_path)})
    good = check({"1": n("PickFile", name="f07.png"), "2": n("Show", value=["1", 0])}, env)
    assert good.ok and good.values["1"] == {"name": "f07.png"}
    bad = check({"1": n("PickFile", name="nope.png"), "2": n("Show", value=["1", 0])}, env)
    error = only_error(bad, "1")
    assert error["type"] == "value_not_in_list"
    assert "'f19.png'" in error["details"] and "'f20.png'" not in error["details"]
    assert "and 5 more" in error["details"]
    assert error["extra_info"]["input_config"][0][:2] == ["f00.png", "f01.png"]
    empty = check({"1": n("PickFile", name="a.png"), "2": n("Show", value=["1", 0])},
                  Environment(settings={"input_dir": str(tmp_path / "missing")}))
    assert "the list is empty" in only_error(empty, "1")["details"]


def test_unknown_inputs_are_ignored_with_a_warning() -> None:
    result = check({"1": n("IntConst", value=1, colour="red"), "2": n("Show", value=["1", 0])})
    assert result.ok and result.values["1"] == {"value": 1}
    assert result.warnings == ["node 1 (IntConst): ignoring unknown input 'colour'"]


def test_custom_validation_problems(tmp_path: Path) -> None:
    result = check({"1": n("CheckedFile", path=str(tmp_path / "x.txt"), copies=3), "2": n("Show", value=["1", 0])})
    failed(result)
    errors = result.node_errors["1"]["errors"]
    assert [e["type"] for e in errors] == ["custom_validation_failed"] * 2
    assert [e["extra_info"]["input_name"] for e in errors] == ["path", "copies"]
    assert_located(errors[1], "1", "CheckedFile", "copies", 3)
    assert "does not exist" in errors[0]["details"] and str(tmp_path / "x.txt") in errors[0]["details"]
    (tmp_path / "x.txt").write_text("hi")
    ok = check({"1": n("CheckedFile", path=str(tmp_path / "x.txt")), "2": n("Show", value=["1", 0])})
    assert ok.ok and ok.values["1"] == {"path": str(tmp_path / "x.txt"), "copies": 2}


def test_custom_validation_is_skipped_when_inputs_are_already_wrong() -> None:
    result = check({"1": n("CheckedFile", copies=11), "2": n("Show", value=["1", 0])})
    assert [e["type"] for e in result.node_errors["1"]["errors"]] == ["value_bigger_than_max"]


def test_check_inputs_that_raises_is_reported() -> None:
    class Grumpy(Node):
        """check_inputs has a bug."""

        outputs = (Output(INT),)
        value: int = Input(1)

        @classmethod
        def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
            raise KeyError("oops")

        def run(self, ctx: NodeContext) -> tuple[Any, ...]:
            return (self.value,)

    registry = make_registry()
    registry.register(Grumpy, plugin="t")
    result = validate_prompt({"1": n("Grumpy"), "2": n("Show", value=["1", 0])}, registry, Environment())
    error = only_error(result, "1")
    assert error["type"] == "exception_during_inner_validation"
    assert "node 1 (Grumpy)" in error["details"] and "KeyError" in error["details"]


def test_all_errors_are_collected_and_valid_outputs_still_run() -> None:
    result = check({
        "1": n("IntConst", value=5000),
        "2": n("Add", a=["1", 0], b="x"),
        "3": n("Show", value=["2", 0]),
        "4": n("Concat", a=["9", 0]),
        "5": n("Show", value=["4", 0]),
        "6": n("StringConst", text="fine"),
        "7": n("Show", value=["6", 0]),
    })
    assert result.ok  # as ComfyUI: outputs that validate still run
    assert result.outputs == ["7"] and result.order == ["6", "7"]
    assert set(result.node_errors) == {"1", "2", "4"}
    assert result.node_errors["1"]["dependent_outputs"] == ["3"]
    assert result.node_errors["4"]["dependent_outputs"] == ["5"]
    assert result.node_errors["2"]["class_type"] == "Add"
    everything_bad = check({"1": n("IntConst", value=5000), "2": n("Show", value=["1", 0]),
                            "3": n("Add", b=1), "4": n("Show", value=["3", 0])})
    failed(everything_bad)
    assert everything_bad.error is not None
    assert "2 error(s) in 2 node(s)" in everything_bad.error["details"]
    assert "node 1 (IntConst) input 'value'" in everything_bad.error["details"]


def test_optional_link_may_be_absent_or_null() -> None:
    result = check({"1": n("Fail"), "2": n("Fail", value=None), "3": n("Show", value=["1", 0]),
                    "4": n("Show", value=["2", 0])})
    assert result.ok and result.links["1"] == {} and result.values["2"] == {"message": "boom"}


def test_long_chain_validates_without_recursion() -> None:
    size = 5000
    prompt = {"1": n("IntConst", value=1)}
    prompt.update({str(i): n("Add", a=[str(i - 1), 0], b=1) for i in range(2, size)})
    prompt[str(size)] = n("Show", value=[str(size - 1), 0])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        start = time.perf_counter()
        result = check(prompt)
        elapsed = time.perf_counter() - start
    finally:
        sys.setrecursionlimit(limit)
    assert result.ok and len(result.order) == size
    assert result.order[:3] == ["1", "2", "3"] and result.order[-1] == str(size)
    assert elapsed < 5.0  # linear: about 50 ms here; quadratic would take minutes


def test_long_cycle_is_found_without_recursion() -> None:
    size = 3000
    prompt = {str(i): n("Add", a=[str(i - 1 if i > 1 else size), 0]) for i in range(1, size + 1)}
    prompt["out"] = n("Show", value=["1", 0])
    result = check(prompt)
    failed(result)
    assert result.node_errors["1"]["errors"][0]["extra_info"]["cycle"] == [str(i) for i in range(1, size + 1)]


def test_topological_order_matches_networkx() -> None:
    rng = random.Random(7)
    ids = [str(i) for i in rng.sample(range(1, 400), 120)] + ["a", "b2", "b10", "7:1", "7:10"]
    deps = {node: [] for node in ids}
    for i, node in enumerate(ids):
        for _ in range(rng.randint(0, 3)):
            if i:
                deps[node].append(ids[rng.randrange(i)])
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(ids)
    graph.add_edges_from((src, node) for node, sources in deps.items() for src in sources)
    expected = list(nx.lexicographical_topological_sort(graph, key=node_sort_key))
    order, left = topological_order(deps)
    assert order == expected and left == []
    assert sorted(["10", "9", "b10", "b2", "7:10", "7:1"], key=node_sort_key) == ["7:1", "7:10", "9", "10", "b2", "b10"]


def test_missing_choice_takes_the_nodes_own_explanation(tmp_path: Path) -> None:
    (tmp_path / "there.png").write_bytes(b"x")
    env = Environment(settings={"input_dir": str(tmp_path)})
    bad = check({"1": n("PickExplained", name="gone.png"), "2": n("Show", value=["1", 0])}, env)
    error = only_error(bad, "1")
    assert error["type"] == "value_not_in_list"
    assert error["extra_info"]["input_name"] == "name"
    assert "'there.png'" in error["details"]
    assert f"looked in {tmp_path}; copy the file there" in error["details"]
    assert len(bad.node_errors["1"]["errors"]) == 1  # not reported twice by the custom check
    assert check({"1": n("PickExplained", name="there.png"), "2": n("Show", value=["1", 0])}, env).ok
