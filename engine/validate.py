"""Whole-graph validation of an API-format prompt, with errors in ComfyUI's `node_errors` shape.

Every problem is collected (not only the first), each naming node id, node type, input, the value
received and the fix. The walk over links is iterative and the ordering is Kahn's algorithm with a
heap, so a 10,000-node chain validates in linear time without recursion.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from engine.node import Environment, InputSpec, Node
from engine.registry import NodeRegistry

__all__ = ["ValidationResult", "validate_prompt", "node_sort_key", "topological_order"]

_LIST_LIMIT = 20  # combo choices listed in a message, as ComfyUI elides longer lists


@dataclass
class ValidationResult:
    """Outcome of `validate_prompt`; the first five fields are ComfyUI's, the rest feed the executor.

    `links[node][input] = (source_id, output_index)`; `order` is the topological order of every node
    the valid outputs depend on (ties broken by node id, numeric-aware); `warnings` lists ignored
    inputs.
    """

    ok: bool
    error: dict[str, Any] | None
    node_errors: dict[str, dict[str, Any]]
    outputs: list[str]
    values: dict[str, dict[str, Any]]
    links: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    classes: dict[str, type[Node]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def node_sort_key(node_id: str) -> tuple[tuple[int, Any], ...]:
    """Sort key that orders node ids numerically where they are numbers ("2" < "10" < "10:1")."""
    if node_id.isdigit():
        return ((0, int(node_id)),)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", node_id) if p)


def topological_order(deps: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """Kahn's algorithm over `deps[node] = sources`; returns (order, nodes left over on or after a cycle).

    Ties go to the smallest node id (numeric-aware), the same order as networkx's
    `lexicographical_topological_sort(G, key=node_sort_key)`, at a tenth of its cost.
    """
    remaining: dict[str, int] = {}
    consumers: dict[str, list[str]] = {}
    ready: list[tuple[tuple[tuple[int, Any], ...], str]] = []
    for node, sources in deps.items():
        if not sources:
            remaining[node] = 0
            ready.append((node_sort_key(node), node))
            continue
        unique: Collection[str] = sources if len(sources) == 1 else set(sources)
        remaining[node] = len(unique)
        for src in unique:
            listed = consumers.get(src)
            if listed is None:
                consumers[src] = [node]
            else:
                listed.append(node)
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)[1]
        order.append(node)
        for consumer in consumers.get(node, ()):
            remaining[consumer] -= 1
            if remaining[consumer] == 0:
                heapq.heappush(ready, (node_sort_key(consumer), consumer))
    left = [n for n, count in remaining.items() if count > 0] if len(order) < len(remaining) else []
    return order, left


def validate_prompt(
    prompt: Any,
    registry: NodeRegistry,
    env: Environment | None = None,
    targets: Iterable[str] | None = None,
) -> ValidationResult:
    """Validate an API-format prompt as a whole; see `ValidationResult`."""
    return _Validator(registry, env if env is not None else Environment()).run(prompt, targets)


def _top_error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": dict(extra)}


def _failed(error: dict[str, Any], node_errors: dict[str, dict[str, Any]] | None = None) -> ValidationResult:
    return ValidationResult(ok=False, error=error, node_errors=node_errors or {}, outputs=[], values={})


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


class _BadValue(Exception):
    """A widget value that cannot be used: its ComfyUI error type, the short message and the problem."""

    def __init__(self, kind: str, message: str, problem: str) -> None:
        super().__init__(problem)
        self.kind = kind
        self.message = message
        self.problem = problem


def _coerce_int(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is float and math.isfinite(value) and value.is_integer():
        return int(value)
    if kind is str:
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _BadValue("invalid_input_type", "Failed to convert an input value to a INT value",
                    f"expected an integer, got {_show(value)}")


def _coerce_float(value: Any) -> float:
    kind = type(value)
    number: float | None = None
    if kind is float or kind is int:
        number = float(value)
    elif kind is str:
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise _BadValue("invalid_input_type", "Failed to convert an input value to a FLOAT value",
                        f"expected a finite number, got {_show(value)}")
    return number


def _coerce_string(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is int or kind is float:  # ComfyUI casts numbers with str()
        return str(value)
    raise _BadValue("invalid_input_type", "Failed to convert an input value to a STRING value",
                    f"expected a string, got {_show(value)}")


def _coerce_bool(value: Any) -> bool:
    if type(value) is bool:
        return bool(value)
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _BadValue("invalid_input_type", "Failed to convert an input value to a BOOLEAN value",
                    f"expected true or false, got {_show(value)}")


_COERCE: dict[str, Callable[[Any], Any]] = {"INT": _coerce_int, "FLOAT": _coerce_float, "STRING": _coerce_string, "BOOLEAN": _coerce_bool}


def _check_range(spec: InputSpec, value: float) -> None:
    if spec.ge is not None and value < spec.ge:
        raise _BadValue("value_smaller_than_min", "Value smaller than min",
                        f"expected a value >= {_number(spec.ge)}, got {_show(value)}")
    if spec.gt is not None and value <= spec.gt:
        raise _BadValue("value_smaller_than_min", "Value smaller than min",
                        f"expected a value > {_number(spec.gt)}, got {_show(value)}")
    if spec.le is not None and value > spec.le:
        raise _BadValue("value_bigger_than_max", "Value bigger than max",
                        f"expected a value <= {_number(spec.le)}, got {_show(value)}")
    if spec.lt is not None and value >= spec.lt:
        raise _BadValue("value_bigger_than_max", "Value bigger than max",
                        f"expected a value < {_number(spec.lt)}, got {_show(value)}")


_FIXES = {
    "invalid_input_type": "enter a value of the expected type",
    "value_smaller_than_min": "raise it into the allowed range",
    "value_bigger_than_max": "lower it into the allowed range",
    "value_not_in_list": "pick one of the listed choices",
}


class _Validator:
    """One validation call: the prompt's nodes, their classes, and the errors found so far."""

    def __init__(self, registry: NodeRegistry, env: Environment) -> None:
        self.registry = registry
        self.env = env
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.classes: dict[str, type[Node]] = {}
        self.node_errors: dict[str, dict[str, Any]] = {}
        self.values: dict[str, dict[str, Any]] = {}
        self.links: dict[str, dict[str, tuple[str, int]]] = {}
        self.warnings: list[str] = []
        self._choices: dict[int, list[str]] = {}
        self._checks: dict[type[Node], bool] = {}
        self._compatible: dict[tuple[str, str], bool] = {}

    # ---- error records ---------------------------------------------------------------------------

    def _label(self, node_id: str) -> str:
        cls = self.classes.get(node_id)
        node = self.nodes.get(node_id, {})
        kind = cls.node_type if cls is not None else node.get("class_type", "?")
        return f"node {node_id} ({kind})"

    def _add(self, node_id: str, kind: str, message: str, details: str, input_name: str | None = None,
             spec: InputSpec | None = None, value: Any = None, **extra: Any) -> None:
        info: dict[str, Any] = {"input_name": input_name}
        if spec is not None:
            info["input_config"] = self._input_config(spec)
        info["received_value"] = value
        info.update(extra)
        entry = self.node_errors.get(node_id)
        if entry is None:
            class_type = self.nodes.get(node_id, {}).get("class_type")
            entry = self.node_errors[node_id] = {"errors": [], "dependent_outputs": [], "class_type": class_type}
        entry["errors"].append({"type": kind, "message": message, "details": details, "extra_info": info})

    def _input_config(self, spec: InputSpec) -> list[Any]:
        opts: dict[str, Any] = {}
        if spec.has_default and not spec.link_only:
            opts["default"] = spec.default
        if spec.ge is not None:
            opts["min"] = spec.ge
        if spec.le is not None:
            opts["max"] = spec.le
        head: Any = spec.type
        if spec.choices is not None:
            try:
                head = self._choice_list(spec)
            except Exception:  # a broken folder listing must not hide the error being reported
                head = spec.type
        return [head, opts] if opts else [head]

    def _choice_list(self, spec: InputSpec) -> list[str]:
        cached = self._choices.get(id(spec))  # specs live as long as their class
        if cached is None:
            cached = self._choices[id(spec)] = spec.choice_list(self.env) or []
        return cached

    # ---- the walk --------------------------------------------------------------------------------

    def run(self, prompt: Any, targets: Iterable[str] | None) -> ValidationResult:
        if not isinstance(prompt, Mapping):
            return _failed(_top_error(
                "invalid_prompt", "Prompt is not a JSON object",
                f"expected {{node_id: {{class_type, inputs}}}}, got {type(prompt).__name__}; "
                f"send the API-format prompt (File > Export (API) in the editor)"))
        if not prompt:
            return _failed(_top_error(
                "prompt_no_outputs", "Prompt has no outputs",
                "the prompt is empty; add nodes and at least one output node (e.g. SaveImage)"))
        structural = self._read_nodes(prompt)
        outputs, target_error = self._outputs(targets)
        if target_error is not None:
            structural.append(target_error)
        if not outputs and not structural:
            return _failed(_top_error(
                "prompt_no_outputs", "Prompt has no outputs",
                "no node in the prompt is an output node; add one (e.g. SaveImage or PreviewImage) "
                "or name target nodes to run"), self.node_errors)
        deps = self._check_reachable(outputs)
        order, left = topological_order(deps)
        if left:
            self._report_cycles(deps, set(left))
        good = self._good_outputs(outputs, deps)
        if len(good) < len(outputs):
            keep = self._closure(good, deps)
            order = [n for n in order if n in keep]
        result = ValidationResult(
            ok=not structural and bool(good), error=None, node_errors=self.node_errors,
            outputs=good if not structural else [], values=self.values, links=self.links,
            classes=self.classes, order=order if not structural else [], warnings=self.warnings,
        )
        if structural:
            result.error = structural[0]
            if len(structural) > 1:
                result.error["details"] = "; ".join(e["details"] for e in structural)
        elif not good:
            result.error = _top_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                      self._summary())
        return result

    def _read_nodes(self, prompt: Mapping[Any, Any]) -> list[dict[str, Any]]:
        structural: list[dict[str, Any]] = []
        for raw_id, node in prompt.items():
            node_id = raw_id if type(raw_id) is str else str(raw_id)
            if not isinstance(node, Mapping) or type(node.get("class_type")) is not str:
                self.nodes[node_id] = node if isinstance(node, Mapping) else {}
                details = (f"node {node_id} has no class_type; every node needs "
                           f"{{\"class_type\": <node type>, \"inputs\": {{...}}}}")
                self._add(node_id, "invalid_prompt", "Node is missing the class_type property", details)
                structural.append(_top_error("invalid_prompt",
                                             "Cannot execute because a node is missing the class_type property.",
                                             details, node_id=node_id))
                continue
            self.nodes[node_id] = node
            class_type = node["class_type"]
            cls = self.registry.get(class_type)
            if cls is None:
                near = self.registry.close_matches(class_type)
                hint = f"did you mean {', '.join(near)}? " if near else ""
                details = (f"node {node_id} ({class_type}): unknown node type {class_type!r}; {hint}"
                           f"install the plugin that provides it or replace the node")
                self._add(node_id, "missing_node_type", f"Node '{class_type}' not found", details,
                          value=class_type, close_matches=near)
                structural.append(_top_error("invalid_prompt",
                                             f"Cannot execute because node {class_type} does not exist.",
                                             details, node_id=node_id, class_type=class_type))
                continue
            inputs = node.get("inputs", {})
            if type(inputs) is not dict and not isinstance(inputs, Mapping):
                details = f"node {node_id} ({class_type}): 'inputs' must be an object of name: value"
                self._add(node_id, "invalid_prompt", "Node inputs are not an object", details,
                          value=node.get("inputs"))
                structural.append(_top_error("invalid_prompt", "Node inputs are not an object", details,
                                             node_id=node_id))
                continue
            self.classes[node_id] = cls
        return structural

    def _outputs(self, targets: Iterable[str] | None) -> tuple[list[str], dict[str, Any] | None]:
        if targets is None:
            found = [n for n, cls in self.classes.items() if cls.output_node]
            return sorted(found, key=node_sort_key), None
        wanted = [str(t) for t in targets]
        missing = [t for t in wanted if t not in self.nodes]
        outputs = list(dict.fromkeys(t for t in wanted if t in self.classes))
        if not missing:
            return outputs, None
        known = ", ".join(sorted(self.nodes, key=node_sort_key)[:_LIST_LIMIT])
        return outputs, _top_error(
            "invalid_prompt", "Execution target is not in the prompt",
            f"target node(s) {', '.join(missing)} are not in the prompt; pick targets among its node "
            f"ids ({known})", targets=missing)

    def _check_reachable(self, outputs: list[str]) -> dict[str, list[str]]:
        deps: dict[str, list[str]] = {}
        stack = list(outputs)
        seen = set(outputs)
        while stack:
            node_id = stack.pop()
            cls = self.classes.get(node_id)
            if cls is None:
                deps[node_id] = []
                continue
            links = self._check_node(node_id, cls)
            sources = [src for src, _ in links.values()]
            deps[node_id] = sources
            for src in sources:
                if src not in seen:
                    seen.add(src)
                    stack.append(src)
        return deps

    def _check_node(self, node_id: str, cls: type[Node]) -> dict[str, tuple[str, int]]:
        given: Mapping[str, Any] = self.nodes[node_id].get("inputs", {})
        specs = cls.__inputs__
        values: dict[str, Any] = {}
        links: dict[str, tuple[str, int]] = {}
        unlisted: dict[str, tuple[InputSpec, Any, _BadValue]] = {}
        for name, spec in specs.items():
            raw = given.get(name)
            if raw is None:
                if spec.link_only or name not in given:
                    if spec.required and not spec.optional:
                        self._missing(node_id, spec)
                    elif not spec.link_only:
                        values[name] = spec.default if spec.has_default else None
                    continue
            if type(raw) is list:
                link = self._check_link(node_id, spec, raw)
                if link is not None:
                    links[name] = link
            elif spec.link_only:
                self._add(node_id, "invalid_input_type", "Input takes a link, not a value",
                          f"{self._label(node_id)} input '{name}': expected a link from a {spec.type} output, "
                          f"got the value {_show(raw)}; connect it to a node's {spec.type} output",
                          name, spec, raw)
            else:
                try:
                    values[name] = self._widget_value(spec, raw)
                except _BadValue as bad:
                    if bad.kind == "value_not_in_list" and self._has_check(cls):
                        unlisted[name] = (spec, raw, bad)  # the node may know why (e.g. where it looked)
                        continue
                    self._add(node_id, bad.kind, bad.message,
                              f"{self._label(node_id)} input '{name}': {bad.problem}; {_FIXES[bad.kind]}",
                              name, spec, raw)
        if unlisted:
            self._report_unlisted(node_id, cls, values, unlisted)
        if len(given) > len(links) + len(values):
            for name in given:
                if name not in specs:
                    self.warnings.append(f"{self._label(node_id)}: ignoring unknown input '{name}'")
        self.values[node_id] = values
        self.links[node_id] = links
        # Only structural errors precede this walk, and nodes with those are never checked here.
        if node_id not in self.node_errors and self._has_check(cls):
            self._custom_checks(node_id, cls, values)
        return links

    def _report_unlisted(self, node_id: str, cls: type[Node], values: dict[str, Any],
                         unlisted: dict[str, tuple[InputSpec, Any, _BadValue]]) -> None:
        """Report choices not in their list, with the node's own explanation when it gives one."""
        try:
            problems = list(cls.check_inputs({**values, **{n: raw for n, (_, raw, _) in unlisted.items()}}, self.env))
        except Exception:  # the plain message stands; _custom_checks reports a broken check elsewhere
            problems = []
        for name, (spec, raw, bad) in unlisted.items():
            reasons = [p.message for p in problems if p.input == name]
            fix = "; ".join(reasons) if reasons else _FIXES[bad.kind]
            self._add(node_id, bad.kind, bad.message,
                      f"{self._label(node_id)} input '{name}': {bad.problem}; {fix}", name, spec, raw)

    def _has_check(self, cls: type[Node]) -> bool:
        known = self._checks.get(cls)
        if known is None:
            known = self._checks[cls] = cls.check_inputs.__func__ is not Node.check_inputs.__func__  # type: ignore[attr-defined]
        return known

    def _missing(self, node_id: str, spec: InputSpec) -> None:
        fix = f"connect a {spec.type} output to it" if spec.link_only else "give it a value"
        self._add(node_id, "required_input_missing", "Required input is missing",
                  f"{self._label(node_id)} input '{spec.name}': required input is missing; {fix}",
                  spec.name, spec, None)

    def _widget_value(self, spec: InputSpec, raw: Any) -> Any:
        if type(raw) is dict and "__value__" in raw:  # ComfyUI's wrapper for literal list values
            raw = raw["__value__"]
        if spec.choices is not None:
            choices = self._choice_list(spec)
            if raw not in choices:
                shown = ", ".join(map(repr, choices[:_LIST_LIMIT]))
                more = f" and {len(choices) - _LIST_LIMIT} more" if len(choices) > _LIST_LIMIT else ""
                listing = f"one of [{shown}{more}]" if choices else "one of the choices, but the list is empty"
                raise _BadValue("value_not_in_list", "Value not in list",
                                f"expected {listing}, got {_show(raw)}")
            return raw
        kind = spec.type
        if kind == "STRING" and type(raw) is str:
            return raw
        coerce = _COERCE.get(kind)
        if coerce is None:
            return raw
        value = coerce(raw)
        if kind == "INT" or kind == "FLOAT":
            _check_range(spec, value)
        return value

    def _check_link(self, node_id: str, spec: InputSpec, raw: list[Any]) -> tuple[str, int] | None:
        if len(raw) == 2 and type(raw[0]) is str and type(raw[1]) is int:
            src, index = raw[0], raw[1]
        elif (len(raw) == 2 and isinstance(raw[0], (str, int)) and not isinstance(raw[0], bool)
              and isinstance(raw[1], (int, float)) and not isinstance(raw[1], bool)
              and float(raw[1]).is_integer()):
            src, index = str(raw[0]), int(raw[1])
        else:
            self._add(node_id, "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                      f"{self._label(node_id)} input '{spec.name}': malformed link {_show(raw)}; "
                      f"a link is [source_node_id, output_index]", spec.name, spec, raw)
            return None
        if src not in self.nodes:
            self._add(node_id, "bad_linked_input", "Linked node does not exist",
                      f"{self._label(node_id)} input '{spec.name}': got the link {_show(raw)}, but node {src} "
                      f"is not in the prompt; reconnect the input", spec.name, spec, raw)
            return None
        src_cls = self.classes.get(src)
        if src_cls is None:
            return src, index  # the source's own error is reported on it
        outputs = src_cls.outputs
        if not 0 <= index < len(outputs):
            names = ", ".join(f"{i}: {o.label}" for i, o in enumerate(outputs)) or "none"
            self._add(node_id, "bad_linked_input", "Linked output index out of range",
                      f"{self._label(node_id)} input '{spec.name}': got the link {_show(raw)} to output {index} "
                      f"of {self._label(src)}, which has {len(outputs)} output(s) ({names}); link one of those",
                      spec.name, spec, raw)
            return None
        out_type = outputs[index].type.name
        pair = (out_type, spec.type)
        compatible = self._compatible.get(pair)
        if compatible is None:
            compatible = self._compatible[pair] = self.registry.types.compatible(out_type, spec.type)
        if not compatible:
            self._add(node_id, "return_type_mismatch", "Return type mismatch between linked nodes",
                      f"{self._label(node_id)} input '{spec.name}': expected {spec.type}, but the link "
                      f"{_show(raw)} to output {index} ({outputs[index].label}) of {self._label(src)} gives "
                      f"{out_type}; link a {spec.type} output instead", spec.name, spec, raw, received_type=out_type, linked_node=[src, index])
            return None
        return src, index

    def _custom_checks(self, node_id: str, cls: type[Node], values: dict[str, Any]) -> None:
        try:
            problems = list(cls.check_inputs(dict(values), self.env))
        except Exception as exc:  # a plugin's check must not take validation down
            self._add(node_id, "exception_during_inner_validation", "Exception when validating inner node",
                      f"{self._label(node_id)}: check_inputs raised {type(exc).__name__}: {exc}; "
                      f"this is a bug in the node's plugin", value=None, exception_type=type(exc).__name__)
            return
        for problem in problems:
            spec = cls.__inputs__.get(problem.input) if problem.input else None
            where = f"{self._label(node_id)} input '{problem.input}'" if problem.input else self._label(node_id)
            value = problem.value if problem.value is not None else values.get(problem.input or "")
            self._add(node_id, "custom_validation_failed", "Custom validation failed for node",
                      f"{where}: {problem.message} (got {_show(value)})", problem.input, spec, value)

    # ---- cycles and outputs --------------------------------------------------------------------

    def _report_cycles(self, deps: dict[str, list[str]], left: set[str]) -> None:
        graph: nx.DiGraph[str] = nx.DiGraph()
        for node in left:
            for src in deps[node]:
                if src in left:
                    graph.add_edge(src, node)
        for component in nx.strongly_connected_components(graph):
            start = min(component, key=node_sort_key)
            if len(component) == 1 and not graph.has_edge(start, start):
                continue
            cycle = [u for u, _ in nx.find_cycle(graph.subgraph(component), source=start)]
            ring = " -> ".join([*cycle, cycle[0]])
            for i, node in enumerate(cycle):
                prev = cycle[i - 1]
                name = next((n for n, (s, _) in self.links[node].items() if s == prev), None)
                link = self.nodes[node].get("inputs", {}).get(name) if name else None
                self._add(node, "dependency_cycle", "Dependency cycle detected",
                          f"{self._label(node)} is on the dependency cycle {ring} through input '{name}' "
                          f"(link {_show(link)}); remove one of the links on the cycle", name, None, link, cycle=cycle)

    @staticmethod
    def _closure(starts: Iterable[str], deps: dict[str, list[str]]) -> set[str]:
        seen = set(starts)
        stack = list(seen)
        while stack:
            for src in deps.get(stack.pop(), ()):
                if src not in seen:
                    seen.add(src)
                    stack.append(src)
        return seen

    def _good_outputs(self, outputs: list[str], deps: dict[str, list[str]]) -> list[str]:
        if not self.node_errors:
            return outputs
        good = []
        for out in outputs:
            bad = [n for n in self._closure([out], deps) if n in self.node_errors]
            for node in bad:
                self.node_errors[node]["dependent_outputs"].append(out)
            if not bad:
                good.append(out)
        return good

    def _summary(self) -> str:
        lines = [e["details"] for entry in self.node_errors.values() for e in entry["errors"]]
        count = len(lines)
        head = f"{count} error(s) in {len(self.node_errors)} node(s): "
        return head + "; ".join(lines[:10]) + (f"; and {count - 10} more" if count > 10 else "")
