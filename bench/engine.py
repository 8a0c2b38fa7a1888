"""Executor overhead on trivial nodes: 1,000-node chain, binary tree and fan-out graphs.

Run: `python -m bench.engine`. For each graph: validation, first run, fully cached re-run and a
one-widget-edit re-run (medians of 5), the engine's cost per executed node, and the ratio to a
same-run baseline (a plain loop calling the same nodes' `run` in topological order).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from engine.executor import Executor
from engine.node import Environment, In, Input, Node, NodeContext, NodeResult, Output
from engine.registry import NodeRegistry
from engine.types import STRING
from engine.validate import validate_prompt

REPEATS = 5
SIZE = 1000

# ComfyUI a125cd84 on a 2-core CPU machine (reference/comfyui.md section 10), medians of 3, seconds:
# (first run, fully cached re-run, one edit in the middle). Quoted, not measured in this run.
COMFYUI = {"chain": (42.9, 44.6, 40.6), "tree": (3.25, 0.78, 0.98)}


class Text(Node):
    """A string constant."""

    outputs = (Output(STRING),)
    text: str = Input("")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.text,)


class Join(Node):
    """a + b + suffix, keeping the result short."""

    outputs = (Output(STRING),)
    a: In[STRING]
    b: In[STRING] = None
    suffix: str = Input("")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return ((self.a + (self.b or "") + self.suffix)[-32:],)


class Preview(Node):
    """Output node showing a string."""

    output_node = True
    value: In[STRING]
    label: str = Input("")

    def run(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(ui={"text": [self.label + self.value]})


def chain(n: int) -> tuple[dict[str, Any], str]:
    """Text -> Join x (n-2) -> Preview; the edit is the middle Join's suffix."""
    prompt: dict[str, Any] = {"1": {"class_type": "Text", "inputs": {"text": "x"}}}
    for i in range(2, n):
        prompt[str(i)] = {"class_type": "Join", "inputs": {"a": [str(i - 1), 0], "suffix": "y"}}
    prompt[str(n)] = {"class_type": "Preview", "inputs": {"value": [str(n - 1), 0]}}
    return prompt, str(n // 2)


def tree(n: int) -> tuple[dict[str, Any], str]:
    """A binary tree: node i joins nodes 2i and 2i+1; leaves are Text; node 0 previews the root."""
    prompt: dict[str, Any] = {"0": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}}
    for i in range(1, n):
        left, right = 2 * i, 2 * i + 1
        if right < n:
            prompt[str(i)] = {"class_type": "Join", "inputs": {"a": [str(left), 0], "b": [str(right), 0]}}
        else:
            prompt[str(i)] = {"class_type": "Text", "inputs": {"text": f"t{i}"}}
    return prompt, str(n - 1)


def fanout(n: int) -> tuple[dict[str, Any], str]:
    """One Text feeding n-1 distinct Preview output nodes (wide and shallow); the edit is one leaf."""
    prompt: dict[str, Any] = {"1": {"class_type": "Text", "inputs": {"text": "x"}}}
    for i in range(2, n + 1):
        prompt[str(i)] = {"class_type": "Preview", "inputs": {"value": ["1", 0], "label": f"leaf{i}"}}
    return prompt, str(n // 2)


def _edit(prompt: dict[str, Any], node_id: str, k: int) -> dict[str, Any]:
    edited = {nid: {"class_type": n["class_type"], "inputs": dict(n["inputs"])} for nid, n in prompt.items()}
    widget = {"Join": "suffix", "Text": "text", "Preview": "label"}[edited[node_id]["class_type"]]
    edited[node_id]["inputs"][widget] = f"edit{k}"
    return edited


CPU: dict[str, float] = {}  # label -> median CPU seconds of the last `_median` call under that label


def _median(fn: Callable[[int], Any], label: str = "") -> float:
    """Median wall time of REPEATS calls; the median CPU time goes to CPU[label] (robust to a busy machine)."""
    walls, cpus = [], []
    for k in range(REPEATS):
        cpu, start = time.process_time(), time.perf_counter()
        fn(k)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    CPU[label] = statistics.median(cpus)
    return statistics.median(walls)


def baseline(prompt: dict[str, Any], registry: NodeRegistry, env: Environment) -> float:
    """Median time of a plain loop that calls each node's `run` in topological order."""
    plan = validate_prompt(prompt, registry, env)
    steps = [(nid, plan.classes[nid], plan.values[nid], list(plan.links[nid].items())) for nid in plan.order]
    ctx = NodeContext(node_id="", node_type="", env=env)

    def loop(_: int) -> None:
        results: dict[str, Any] = {}
        for nid, cls, values, links in steps:
            inputs = dict(values)
            for name, (src, index) in links:
                inputs[name] = results[src][index]
            out = cls.model_construct(**inputs).run(ctx)
            results[nid] = out.values if isinstance(out, NodeResult) else out

    return _median(loop, "baseline")


def measure(name: str, build: Callable[[int], tuple[dict[str, Any], str]], registry: NodeRegistry) -> None:
    prompt, edit_node = build(SIZE)
    env = Environment()
    validate = _median(lambda _: validate_prompt(prompt, registry, env), "validate")

    def first(k: int) -> None:
        executor = Executor(registry, env, cache="lru:100000")
        executor.execute(prompt, prompt_id=f"first{k}")

    first_s = _median(first, "first")
    executor = Executor(registry, env, cache="lru:100000")
    result = executor.execute(prompt, prompt_id="warm")
    assert result.status == "success", result.error
    n_exec = len(result.executed)
    cached_s = _median(lambda k: executor.execute(prompt, prompt_id=f"cached{k}"), "cached")
    again = executor.execute(prompt, prompt_id="check")
    assert not again.executed, "a fully cached re-run executed nodes"
    edited = [_edit(prompt, edit_node, k) for k in range(REPEATS)]
    edit_runs = [len(executor.execute(edited[0], prompt_id="probe").executed)]
    executor.execute(prompt, prompt_id="restore")
    edit_s = _median(lambda k: executor.execute(edited[k], prompt_id=f"edit{k}"), "edit")
    base_s = baseline(prompt, registry, env)
    per_node = first_s / n_exec * 1e6
    overhead = (first_s - base_s) / n_exec * 1e6
    print(f"{name:7s} {SIZE} nodes: validate {validate * 1e3:7.2f} ms | first run {first_s * 1e3:7.2f} ms "
          f"({n_exec} executed, {per_node:5.1f} us/node, engine overhead {overhead:5.1f} us/node) | "
          f"cached re-run {cached_s * 1e3:6.2f} ms | one edit {edit_s * 1e3:6.2f} ms ({edit_runs[0]} re-run)")
    print(f"{'':7s} CPU time: validate {CPU['validate'] * 1e3:.2f} ms | first run {CPU['first'] * 1e3:.2f} ms "
          f"({CPU['first'] / n_exec * 1e6:.1f} us/node, overhead "
          f"{(CPU['first'] - CPU['baseline']) / n_exec * 1e6:.1f} us/node) | cached re-run "
          f"{CPU['cached'] * 1e3:.2f} ms | one edit {CPU['edit'] * 1e3:.2f} ms")
    print(f"{'':7s} same-run baseline (plain loop over run()): {base_s * 1e3:6.2f} ms "
          f"(CPU {CPU['baseline'] * 1e3:.2f} ms); engine first run / baseline = {first_s / base_s:4.1f}x")
    if name in COMFYUI:
        c_first, c_cached, c_edit = COMFYUI[name]
        print(f"{'':7s} ComfyUI quoted from reference/comfyui.md s.10 (other run, not same-run): "
              f"first {c_first:.2f} s, cached {c_cached:.2f} s, edit {c_edit:.2f} s -> ratios "
              f"{c_first / first_s:,.0f}x / {c_cached / cached_s:,.0f}x / {c_edit / edit_s:,.0f}x faster here")


def main() -> None:
    """Print the figures for the three graph shapes and the targets."""
    sys.setrecursionlimit(1000)  # the default: the engine must not need more
    registry = NodeRegistry()
    for cls in (Text, Join, Preview):
        registry.register(cls, plugin="bench")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"latentgraph executor overhead, trivial nodes, medians of {REPEATS} "
          f"(targets: < 50 us per executed node, fully cached 1,000-node re-run < 20 ms)")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} (wall times stretch when it exceeds the CPUs; "
          f"CPU times do not)")
    for name, build in (("chain", chain), ("tree", tree), ("fanout", fanout)):
        measure(name, build, registry)


if __name__ == "__main__":
    main()
