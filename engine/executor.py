"""Evaluates a validated prompt: needed nodes only, in topological order, with a Merkle-keyed cache.

Events use ComfyUI's websocket message names and data shapes, so the server forwards them as they are.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.cache import CacheEntry, CachePolicy, ordered_key, parse_cache_policy
from engine.node import Environment, Interrupted, Node, NodeContext, NodeResult
from engine.registry import NodeRegistry
from engine.validate import ValidationResult, validate_prompt

__all__ = ["Event", "ExecutionResult", "Executor", "Listener", "NodeOutputError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One execution event: ComfyUI's websocket message `type` and its `data`."""

    type: str
    data: dict[str, Any]


Listener = Callable[[Event], None]


class NodeOutputError(TypeError):
    """A node's `run` returned something other than its declared outputs."""


@dataclass
class ExecutionResult:
    """What one prompt did: status, UI outputs per node, nodes run and nodes served from the cache.

    `error` is the `execution_error` / `execution_interrupted` event data, or ComfyUI's top-level
    validation error when validation failed (then `validation` holds the `node_errors`).
    """

    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict[str, Any]]
    executed: list[str]
    cached: list[str]
    error: dict[str, Any] | None
    validation: ValidationResult | None = None
    prompt_id: str = ""

    @property
    def node_errors(self) -> dict[str, dict[str, Any]]:
        return self.validation.node_errors if self.validation is not None else {}


@dataclass(frozen=True)
class _Facts:
    """What the executor needs to know about a node class, looked up once."""

    node_type: str
    version: str
    fingerprints: bool
    not_idempotent: bool
    n_outputs: int
    output_names: str
    identity: tuple[str, str]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class Executor:
    """Runs prompts against one node registry and environment, keeping results in a cache policy."""

    def __init__(self, registry: NodeRegistry, env: Environment | None = None,
                 cache: CachePolicy | str = "lru:128") -> None:
        self.registry = registry
        self.env = env if env is not None else Environment()
        self.cache = parse_cache_policy(cache)
        self._lock = threading.Lock()
        self._facts: dict[type[Node], _Facts] = {}
        self._volatile = itertools.count()

    def reset(self) -> None:
        """Forget every cached result."""
        self.cache.clear()

    def execute(
        self,
        prompt: Mapping[str, Any],
        *,
        prompt_id: str,
        extra_data: Mapping[str, Any] | None = None,
        targets: list[str] | None = None,
        listener: Listener | None = None,
        interrupt: threading.Event | None = None,
    ) -> ExecutionResult:
        """Validate, then run the nodes the outputs (or `targets`) need; never raises for node failures.

        An `interrupt` already set stops the prompt before its first node; clearing it is the caller's job.
        """
        with self._lock:
            validation = validate_prompt(prompt, self.registry, self.env, targets)
            if not validation.ok:
                return ExecutionResult("error", {}, [], [], validation.error, validation, prompt_id)
            run = _Run(self, prompt, prompt_id, extra_data or {}, listener, interrupt, validation)
            return run.go()

    def facts(self, cls: type[Node]) -> _Facts:
        """Per-class facts (type, version, whether it fingerprints), computed once per class."""
        facts = self._facts.get(cls)
        if facts is None:
            facts = self._facts[cls] = _Facts(
                node_type=cls.node_type, version=cls.version,
                fingerprints=cls.fingerprint.__func__ is not Node.fingerprint.__func__,  # type: ignore[attr-defined]
                not_idempotent=cls.not_idempotent, n_outputs=len(cls.outputs),
                output_names=", ".join(o.label for o in cls.outputs) or "none",
                identity=(cls.node_type, cls.version),
            )
        return facts

    def volatile_token(self, prompt_id: str, node_id: str) -> tuple[str, str, str, int]:
        """A fingerprint no other run will produce: the node always misses the cache."""
        return ("volatile", prompt_id, node_id, next(self._volatile))


@dataclass
class _Run:
    """One prompt's execution state."""

    executor: Executor
    prompt: Mapping[str, Any]
    prompt_id: str
    extra_data: Mapping[str, Any]
    listener: Listener | None
    interrupt: threading.Event | None
    validation: ValidationResult
    keys: dict[str, bytes] = field(default_factory=dict)
    volatile: set[str] = field(default_factory=set)
    results: dict[bytes, tuple[Any, ...]] = field(default_factory=dict)
    uis: dict[bytes, dict[str, Any] | None] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Bound once per prompt rather than once per node.
        self._progress_cb: Callable[[str, float, float, Any], None] | None = (
            self._on_progress if self.listener is not None else None)
        self._interrupted_cb: Callable[[], bool] | None = (
            self.interrupt.is_set if self.interrupt is not None else None)

    # ---- events ----------------------------------------------------------------------------------

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.listener is None:
            return
        try:
            self.listener(Event(kind, data))
        except Exception:  # a broken listener (a closed socket) must not stop the prompt
            log.exception("execution listener failed on %s event for prompt %s", kind, self.prompt_id)

    def _on_progress(self, node_id: str, value: float, maximum: float, preview: Any) -> None:
        self.emit("progress", {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id})
        if preview is not None:
            self.emit("preview", {"prompt_id": self.prompt_id, "node": node_id, "image": preview})

    def _custom(self, node_id: str) -> Callable[[str, dict[str, Any]], None]:
        return lambda kind, data: self.emit(kind, {"prompt_id": self.prompt_id, "node": node_id, **data})

    # ---- planning --------------------------------------------------------------------------------

    def _compute_keys(self) -> None:
        executor, env, v = self.executor, self.executor.env, self.validation
        keys, volatile, classes, values, links = self.keys, self.volatile, v.classes, v.values, v.links
        for node_id in v.order:
            cls = classes[node_id]
            facts = executor.facts(cls)
            constants = values[node_id]
            fingerprint: Any = None
            if facts.fingerprints:
                try:
                    fingerprint = cls.fingerprint(constants, env)
                except Exception:
                    log.warning("node %s (%s): fingerprint() failed; the node will re-run every time",
                                node_id, facts.node_type, exc_info=True)
                    fingerprint = executor.volatile_token(self.prompt_id, node_id)
                    volatile.add(node_id)
            if facts.not_idempotent:
                fingerprint = (fingerprint, executor.volatile_token(self.prompt_id, node_id))
                volatile.add(node_id)
            node_links = links[node_id]
            if node_links:
                upstream = tuple([(name, keys[src], index) for name, (src, index) in node_links.items()])
                if volatile and any(src in volatile for src, _ in node_links.values()):
                    volatile.add(node_id)
            else:
                upstream = ()
            # Inputs come in the class's declared order, so the key needs no sorting (see ordered_key).
            keys[node_id] = ordered_key(facts.identity, tuple(constants.items()), fingerprint, upstream)

    def _plan(self) -> tuple[list[tuple[str, int]], list[str]]:
        """Steps (node id, 0 run / 1 from cache / 2 shares an identical node's result) and cache hits."""
        v, cache, keys = self.validation, self.executor.cache, self.keys
        hits: dict[str, CacheEntry] = {}
        for node_id in v.order:
            if node_id not in self.volatile:
                entry = cache.get(keys[node_id])
                if entry is not None:
                    hits[node_id] = entry
        needed = set(v.outputs)
        for node_id in reversed(v.order):
            if node_id in needed and node_id not in hits:
                needed.update(src for src, _ in v.links[node_id].values())
        steps: list[tuple[str, int]] = []
        first: set[bytes] = set()
        cached: list[str] = []
        for node_id in v.order:
            key = keys[node_id]
            if node_id in hits:
                cached.append(node_id)
                if node_id in needed:
                    self.results[key] = hits[node_id].outputs
                    self.uis[key] = hits[node_id].ui
                    steps.append((node_id, 1))
            elif node_id in needed:
                if key in first:
                    cached.append(node_id)
                    steps.append((node_id, 2))
                else:
                    first.add(key)
                    steps.append((node_id, 0))
        return steps, cached

    # ---- running ---------------------------------------------------------------------------------

    def go(self) -> ExecutionResult:
        pid = self.prompt_id
        listening = self.listener is not None
        self.emit("execution_start", {"prompt_id": pid, "timestamp": _now_ms()})
        self._compute_keys()
        steps, cached = self._plan()
        self.emit("execution_cached", {"nodes": cached, "prompt_id": pid, "timestamp": _now_ms()})
        interrupt = self.interrupt
        for node_id, how in steps:
            key = self.keys[node_id]
            if how == 0:
                if interrupt is not None and interrupt.is_set():
                    return self._interrupted(node_id, cached)
                if listening:
                    self.emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
                try:
                    self._run_node(node_id, key)
                except Interrupted:
                    return self._interrupted(node_id, cached)
                except Exception as exc:
                    return self._failed(node_id, exc, cached)
                self.executed.append(node_id)
            ui = self.uis.get(key)
            if ui is not None:
                self.outputs[node_id] = ui
                if listening:
                    self.emit("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid})
        self.emit("execution_success", {"prompt_id": pid, "timestamp": _now_ms()})
        self._done()
        return ExecutionResult("success", self.outputs, self.executed, cached, None, self.validation, pid)

    def _inputs(self, node_id: str) -> dict[str, Any]:
        v, keys, results = self.validation, self.keys, self.results
        inputs = dict(v.values[node_id])
        for name, (src, index) in v.links[node_id].items():
            inputs[name] = results[keys[src]][index]
        return inputs

    def _run_node(self, node_id: str, key: bytes) -> None:
        cls = self.validation.classes[node_id]
        facts = self.executor.facts(cls)
        node = cls.model_construct(**self._inputs(node_id))
        ctx = NodeContext(
            node_id=node_id, node_type=facts.node_type, prompt_id=self.prompt_id, prompt=self.prompt,
            extra_data=self.extra_data, env=self.executor.env, on_progress=self._progress_cb,
            is_interrupted=self._interrupted_cb, emit=self._custom(node_id) if self.listener is not None else None,
        )
        returned = node.run(ctx)
        ui: dict[str, Any] | None = None
        if type(returned) is tuple:
            values: tuple[Any, ...] = returned
        elif isinstance(returned, NodeResult):
            values, ui = tuple(returned.values), returned.ui
        elif returned is None:
            values = ()
        else:
            raise NodeOutputError(
                f"node {node_id} ({facts.node_type}): run() returned a value of type {type(returned).__name__}; return a "
                f"tuple with one value per output (e.g. (value,)) or NodeResult(values, ui)")
        if len(values) != facts.n_outputs:
            raise NodeOutputError(
                f"node {node_id} ({facts.node_type}): run() returned {len(values)} value(s) but the node "
                f"declares {facts.n_outputs} output(s) ({facts.output_names}); return one value per output")
        self.results[key] = values
        self.uis[key] = ui
        if node_id not in self.volatile:
            try:
                self.executor.cache.put(key, CacheEntry(values, ui))
            except Exception:  # the result is still used by this prompt; only persistence is lost
                log.exception("caching the result of node %s (%s) failed", node_id, facts.node_type)

    def _done(self) -> None:
        self.emit("executing", {"node": None, "display_node": None, "prompt_id": self.prompt_id})

    def _available(self) -> list[str]:
        return [n for n in self.validation.order if self.keys.get(n) in self.results]

    def _interrupted(self, node_id: str, cached: list[str]) -> ExecutionResult:
        data = {"prompt_id": self.prompt_id, "node_id": node_id,
                "node_type": self.validation.classes[node_id].node_type,
                "executed": list(self.executed), "timestamp": _now_ms()}
        self.emit("execution_interrupted", data)
        self._done()
        return ExecutionResult("interrupted", self.outputs, self.executed, cached, data, self.validation,
                               self.prompt_id)

    def _failed(self, node_id: str, exc: Exception, cached: list[str]) -> ExecutionResult:
        try:
            inputs = {name: _plain(value) for name, value in self._inputs(node_id).items()}
        except Exception:
            inputs = {}
        data = {
            "prompt_id": self.prompt_id, "node_id": node_id,
            "node_type": self.validation.classes[node_id].node_type, "executed": list(self.executed),
            "exception_message": str(exc), "exception_type": _type_name(exc),
            "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": inputs,
            "current_outputs": self._available(), "timestamp": _now_ms(),
        }
        log.error("prompt %s: node %s (%s) failed: %s: %s", self.prompt_id, node_id, data["node_type"],
                  data["exception_type"], exc)
        self.emit("execution_error", data)
        self._done()
        return ExecutionResult("error", self.outputs, self.executed, cached, data, self.validation,
                               self.prompt_id)
