"""Executor: order, needed nodes only, Merkle caching, events, errors and interrupts."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.cache import CachePolicyError, LRUCache, RAMCache
from engine.executor import Event, ExecutionResult, Executor
from engine.node import Environment
from tests.engine.testnodes import calls, make_registry, trace

REGISTRY = make_registry()


def n(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


class Recorder:
    """A listener that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.type == kind]


def make(cache: Any = "lru:128") -> tuple[Executor, Environment]:
    env = Environment()
    return Executor(REGISTRY, env, cache=cache), env


def chain(length: int, start: int = 1, step: int = 1) -> dict[str, Any]:
    """IntConst(start) -> Add(+step) x (length - 2) -> Show, ids 1..length."""
    prompt = {"1": n("IntConst", value=start)}
    prompt.update({str(i): n("Add", a=[str(i - 1), 0], b=step) for i in range(2, length)})
    prompt[str(length)] = n("Show", value=[str(length - 1), 0])
    return prompt


def test_runs_in_topological_order_with_numeric_ties() -> None:
    executor, env = make()
    prompt = {
        "10": n("IntConst", value=1), "9": n("IntConst", value=2), "2": n("IntConst", value=3),
        "11": n("Add", a=["10", 0], b=5), "3": n("Add", a=["9", 0], b=["2", 0]),
        "20": n("Show", value=["11", 0]), "4": n("Show", value=["3", 0]),
    }
    result = executor.execute(prompt, prompt_id="p")
    assert result.status == "success"
    assert result.executed == ["2", "9", "3", "4", "10", "11", "20"] == trace(env)
    assert result.outputs == {"4": {"text": ["5"]}, "20": {"text": ["6"]}}


def test_only_nodes_the_outputs_need_run() -> None:
    executor, env = make()
    prompt = chain(4) | {"7": n("IntConst", value=9), "8": n("Add", a=["7", 0])}
    result = executor.execute(prompt, prompt_id="p")
    assert result.executed == ["1", "2", "3", "4"]
    assert "7" not in calls(env) and "8" not in calls(env)


def test_targets_run_their_ancestors_only() -> None:
    executor, env = make()
    prompt = chain(4) | {"7": n("IntConst", value=9), "8": n("Add", a=["7", 0], b=1)}
    result = executor.execute(prompt, prompt_id="p", targets=["8"])
    assert result.status == "success" and result.executed == ["7", "8"] and result.outputs == {}
    assert set(calls(env)) == {"7", "8"}


def test_success_event_sequence_and_shapes() -> None:
    executor, _ = make()
    rec = Recorder()
    result = executor.execute(chain(3), prompt_id="p1", listener=rec)
    assert rec.types == ["execution_start", "execution_cached", "executing", "executing", "executing",
                         "executed", "execution_success", "executing"]
    start, cached = rec.events[0].data, rec.events[1].data
    assert set(start) == {"prompt_id", "timestamp"} and start["prompt_id"] == "p1"
    assert isinstance(start["timestamp"], int)
    assert cached["nodes"] == [] and cached["prompt_id"] == "p1"
    assert [d["node"] for d in rec.of("executing")] == ["1", "2", "3", None]
    assert rec.of("executing")[0] == {"node": "1", "display_node": "1", "prompt_id": "p1"}
    assert rec.of("executed") == [{"node": "3", "display_node": "3", "output": {"text": ["2"]}, "prompt_id": "p1"}]
    assert result.outputs == {"3": {"text": ["2"]}}


def test_unchanged_prompt_reruns_nothing_and_resends_cached_ui() -> None:
    executor, env = make()
    executor.execute(chain(5), prompt_id="a")
    rec = Recorder()
    result = executor.execute(chain(5), prompt_id="b", listener=rec)
    assert result.status == "success" and result.executed == []
    assert result.cached == ["1", "2", "3", "4", "5"]
    assert result.outputs == {"5": {"text": ["4"]}}
    assert rec.types == ["execution_start", "execution_cached", "executed", "execution_success", "executing"]
    assert rec.of("execution_cached")[0]["nodes"] == ["1", "2", "3", "4", "5"]
    assert rec.of("executed")[0]["output"] == {"text": ["4"]}
    assert sum(calls(env).values()) == 5


def test_widget_edit_reruns_exactly_the_node_and_its_descendants() -> None:
    executor, env = make()
    prompt = chain(6) | {"7": n("Add", a=["2", 0], b=100), "8": n("Show", value=["7", 0])}
    executor.execute(prompt, prompt_id="a")
    prompt["4"] = n("Add", a=["3", 0], b=50)
    result = executor.execute(prompt, prompt_id="b")
    assert result.executed == ["4", "5", "6"]
    assert result.outputs["6"] == {"text": ["54"]} and result.outputs["8"] == {"text": ["102"]}
    assert calls(env) == {"1": 1, "2": 1, "3": 1, "4": 2, "5": 2, "6": 2, "7": 1, "8": 1}


def test_identical_subgraphs_share_results() -> None:
    executor, env = make()
    prompt = {
        "1": n("IntConst", value=4), "2": n("Add", a=["1", 0], b=1), "3": n("Show", value=["2", 0]),
        "11": n("IntConst", value=4), "12": n("Add", a=["11", 0], b=1), "13": n("Show", value=["12", 0]),
    }
    result = executor.execute(prompt, prompt_id="a")
    assert result.executed == ["1", "2", "3"] and result.cached == ["11", "12", "13"]
    assert result.outputs == {"3": {"text": ["5"]}, "13": {"text": ["5"]}}
    renamed = {"a": n("IntConst", value=4), "b": n("Add", a=["a", 0], b=1), "c": n("Show", value=["b", 0])}
    again = executor.execute(renamed, prompt_id="b")  # keys are structural, not id-based
    assert again.executed == [] and again.outputs == {"c": {"text": ["5"]}}
    assert sum(calls(env).values()) == 3


def test_fingerprint_change_reruns(tmp_path: Path) -> None:
    executor, env = make()
    path = tmp_path / "words.txt"
    path.write_text("hello")
    prompt = {"1": n("FileText", path=str(path)), "2": n("Concat", a=["1", 0], b="!"), "3": n("Show", value=["2", 0])}
    assert executor.execute(prompt, prompt_id="a").outputs == {"3": {"text": ["hello!"]}}
    assert executor.execute(prompt, prompt_id="b").executed == []
    path.write_text("bye")
    result = executor.execute(prompt, prompt_id="c")
    assert result.executed == ["1", "2", "3"] and result.outputs == {"3": {"text": ["bye!"]}}


def test_not_idempotent_nodes_always_rerun_with_descendants() -> None:
    executor, env = make()
    prompt = {"1": n("Dice", sides=100), "2": n("Add", a=["1", 0], b=0), "3": n("Show", value=["2", 0]),
              "4": n("IntConst", value=1), "5": n("Show", value=["4", 0])}
    first = executor.execute(prompt, prompt_id="a")
    second = executor.execute(prompt, prompt_id="b")
    assert first.executed == ["1", "2", "3", "4", "5"]
    assert second.executed == ["1", "2", "3"] and second.cached == ["4", "5"]
    assert first.outputs["3"] == {"text": ["1"]} and second.outputs["3"] == {"text": ["2"]}


def test_lru_policy_bounds_entries() -> None:
    executor, env = make(cache="lru:2")
    assert isinstance(executor.cache, LRUCache)
    executor.execute(chain(5), prompt_id="a")
    assert len(executor.cache) == 2 and executor.cache.evictions == 3
    result = executor.execute(chain(5), prompt_id="b")  # the output node is still cached
    assert result.executed == [] and result.cached == ["4", "5"]
    edited = chain(5, step=2)
    result = executor.execute(edited, prompt_id="c")
    assert result.executed == ["1", "2", "3", "4", "5"]  # node 1 was evicted, so it runs again
    assert calls(env)["1"] == 2


def test_ram_policy_bounds_bytes() -> None:
    executor, env = make(cache=RAMCache(2500))
    text = "x" * 1000
    prompt = {"1": n("StringConst", text=text), "2": n("Concat", a=["1", 0], b="y"),
              "3": n("Concat", a=["2", 0], b="z"), "4": n("Show", value=["3", 0])}
    result = executor.execute(prompt, prompt_id="a")
    assert result.outputs == {"4": {"text": [text + "yz"]}}
    cache = executor.cache
    assert isinstance(cache, RAMCache)
    assert cache.bytes_used <= 2500 and cache.evictions == 1 and len(cache) == 3


def test_none_policy_keeps_nothing_between_prompts() -> None:
    executor, env = make(cache="none")
    prompt = {"1": n("IntConst", value=4), "2": n("Show", value=["1", 0]), "3": n("Show", value=["1", 0])}
    executor.execute(prompt, prompt_id="a")
    result = executor.execute(prompt, prompt_id="b")
    assert result.executed == ["1", "2"] and result.cached == ["3"]  # sharing within a prompt still works
    assert len(executor.cache) == 0 and calls(env)["1"] == 2


def test_bad_cache_policy_string() -> None:
    with pytest.raises(CachePolicyError, match="unknown cache policy 'big'"):
        Executor(REGISTRY, Environment(), cache="big")


def test_reset_empties_the_cache() -> None:
    executor, env = make()
    executor.execute(chain(3), prompt_id="a")
    executor.reset()
    assert len(executor.cache) == 0
    assert executor.execute(chain(3), prompt_id="b").executed == ["1", "2", "3"]


def test_validation_failure_returns_errors_without_running() -> None:
    executor, env = make()
    rec = Recorder()
    result = executor.execute({"1": n("IntConst", value=5000), "2": n("Show", value=["1", 0])},
                              prompt_id="p", listener=rec)
    assert result.status == "error" and result.executed == [] and rec.events == []
    assert result.error is not None and result.error["type"] == "prompt_outputs_failed_validation"
    assert result.node_errors["1"]["errors"][0]["type"] == "value_bigger_than_max"
    assert not calls(env)


def test_node_error_event_and_cache_stays_consistent() -> None:
    executor, env = make()
    rec = Recorder()
    prompt = {"1": n("IntConst", value=3), "2": n("Add", a=["1", 0], b=1), "3": n("Fail", value=["2", 0], message="kaput"),
              "4": n("Show", value=["3", 0])}
    result = executor.execute(prompt, prompt_id="p", listener=rec)
    assert result.status == "error" and result.executed == ["1", "2"]
    assert rec.types == ["execution_start", "execution_cached", "executing", "executing", "executing",
                         "execution_error", "executing"]
    error = rec.of("execution_error")[0]
    assert error is result.error
    assert set(error) == {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs", "timestamp"}
    assert (error["node_id"], error["node_type"], error["executed"]) == ("3", "Fail", ["1", "2"])
    assert error["exception_message"] == "kaput" and error["exception_type"] == "RuntimeError"
    assert isinstance(error["traceback"], list) and "raise RuntimeError" in "".join(error["traceback"])
    assert error["current_inputs"] == {"value": 4, "message": "kaput"}
    assert error["current_outputs"] == ["1", "2"]
    assert len(executor.cache) == 2  # the nodes that finished stay cached; nothing from node 3
    prompt["3"] = n("Add", a=["2", 0], b=10)
    fixed = executor.execute(prompt, prompt_id="q")
    assert fixed.status == "success" and fixed.executed == ["3", "4"] and fixed.outputs == {"4": {"text": ["14"]}}


@pytest.mark.parametrize(("node", "exc_type", "says"), [
    ("BadReturn", "engine.executor.NodeOutputError", "returned a value of type int; return a tuple"),
    ("BadCount", "engine.executor.NodeOutputError", "returned 2 value(s) but the node declares 1 output(s) (INT)"),
])
def test_wrong_return_values_are_node_errors(node: str, exc_type: str, says: str) -> None:
    executor, _ = make()
    result = executor.execute({"1": n(node), "2": n("Show", value=["1", 0])}, prompt_id="p")
    assert result.status == "error" and result.error is not None
    assert result.error["exception_type"] == exc_type
    assert f"node 1 ({node})" in result.error["exception_message"] and says in result.error["exception_message"]
    assert len(executor.cache) == 0


def test_progress_and_preview_events() -> None:
    executor, _ = make()
    rec = Recorder()
    prompt = {"1": n("IntConst", value=1), "2": n("Slow", value=["1", 0], steps=3), "3": n("Show", value=["2", 0])}
    result = executor.execute(prompt, prompt_id="p", listener=rec)
    assert result.outputs == {"3": {"text": ["4"]}}
    assert rec.of("progress") == [{"value": i, "max": 3, "prompt_id": "p", "node": "2"} for i in (1, 2, 3)]
    assert rec.of("preview") == [{"prompt_id": "p", "node": "2", "image": "preview-3"}]


def test_interrupt_inside_a_long_node() -> None:
    executor, env = make()
    stop = threading.Event()
    rec = Recorder()

    def listener(event: Event) -> None:
        rec(event)
        if event.type == "progress" and event.data["value"] == 2:
            stop.set()  # the user presses stop during step 2

    prompt = {"1": n("IntConst", value=1), "2": n("Slow", value=["1", 0], steps=50), "3": n("Show", value=["2", 0])}
    result = executor.execute(prompt, prompt_id="p", listener=listener, interrupt=stop)
    assert result.status == "interrupted" and result.executed == ["1"]
    assert [d["value"] for d in rec.of("progress")] == [1, 2]
    assert rec.types[-2:] == ["execution_interrupted", "executing"]
    data = rec.of("execution_interrupted")[0]
    assert set(data) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert (data["node_id"], data["node_type"], data["executed"]) == ("2", "Slow", ["1"])
    assert result.error == data
    stop.clear()
    again = executor.execute(prompt, prompt_id="q", interrupt=stop)
    assert again.status == "success" and again.executed == ["2", "3"] and again.cached == ["1"]


def test_interrupt_between_nodes() -> None:
    executor, env = make()
    stop = threading.Event()

    def listener(event: Event) -> None:
        if event.type == "executing" and event.data["node"] == "2":
            stop.set()  # node 2 (no interrupt checks of its own) finishes; node 3 must not start

    result = executor.execute(chain(4), prompt_id="p", listener=listener, interrupt=stop)
    assert result.status == "interrupted" and result.executed == ["1", "2"]
    assert result.error is not None and result.error["node_id"] == "3"
    assert "3" not in calls(env)
    rec = Recorder()
    already = executor.execute(chain(4, start=7), prompt_id="q", listener=rec, interrupt=stop)
    assert already.status == "interrupted" and already.executed == []
    assert rec.types == ["execution_start", "execution_cached", "execution_interrupted", "executing"]


def test_a_failing_listener_does_not_break_execution(caplog: pytest.LogCaptureFixture) -> None:
    executor, _ = make()

    def broken(event: Event) -> None:
        raise ConnectionResetError("socket closed")

    with caplog.at_level(logging.ERROR, logger="engine.executor"):
        result = executor.execute(chain(3), prompt_id="p", listener=broken)
    assert result.status == "success" and result.outputs == {"3": {"text": ["2"]}}
    assert "listener failed" in caplog.text and "ConnectionResetError" in caplog.text


def test_multiple_outputs_are_routed_by_index() -> None:
    executor, _ = make()
    prompt = {"1": n("IntConst", value=7), "2": n("Pair", value=["1", 0]), "3": n("Show", value=["2", 1]),
              "4": n("Show", value=["2", 0]), "5": n("Sink", value=["2", 1])}
    result = executor.execute(prompt, prompt_id="p")
    assert result.outputs == {"3": {"text": ["70"]}, "4": {"text": ["7"]}}
    assert result.executed == ["1", "2", "3", "4", "5"]


def test_thousand_node_chain_runs_and_caches_without_recursion() -> None:
    executor, env = make(cache="lru:5000")
    prompt = chain(1000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        first = executor.execute(prompt, prompt_id="a")
        second = executor.execute(prompt, prompt_id="b")
    finally:
        sys.setrecursionlimit(limit)
    assert first.status == "success" and len(first.executed) == 1000
    assert first.outputs == {"1000": {"text": ["999"]}}
    assert second.executed == [] and len(second.cached) == 1000
    assert isinstance(second, ExecutionResult) and second.prompt_id == "b"
