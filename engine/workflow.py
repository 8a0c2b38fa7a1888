"""Workflow formats: ComfyUI's API format, the editor (litegraph) format, PNG-embedded workflows.

`load_workflow` accepts a path, bytes, JSON text or an already parsed dict, in either format or as a
PNG written by SaveImage (tEXt chunks `prompt` and `workflow`), and always yields the API format
the validator and executor consume. `editor_to_api` does in Python what ComfyUI's frontend does in
the browser (`graphToPrompt`): widget values are matched to inputs through the node classes' input
specs, muted nodes are dropped, bypassed nodes pass their inputs through, Reroute and PrimitiveNode
are resolved, notes and groups are ignored.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.node import InputSpec, Node

__all__ = [
    "Workflow",
    "WorkflowFormatError",
    "load_workflow",
    "parse_workflow",
    "detect_format",
    "editor_to_api",
    "check_api",
    "read_png_chunks",
    "png_info",
    "save_workflow",
    "widget_inputs",
    "MODE_NORMAL",
    "MODE_MUTED",
    "MODE_BYPASS",
]

MODE_NORMAL = 0
MODE_MUTED = 2  # litegraph "never": the node and the links out of it are dropped
MODE_BYPASS = 4  # the node is skipped; its inputs feed its consumers by matching type

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Frontend-only node types: they never reach the backend.
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
VIRTUAL_TYPES = frozenset({REROUTE, PRIMITIVE}) | NOTE_TYPES

# Values of the extra widget the frontend adds after a seed with control_after_generate.
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


class WorkflowFormatError(ValueError):
    """A workflow file or object is malformed, of an unknown shape, or names unknown node types."""

    def __init__(self, message: str, *, unknown_types: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.unknown_types: dict[str, list[str]] = dict(unknown_types or {})


class NodeLookup(Protocol):
    """What conversion needs from a node registry: the class for a node type, or None."""

    def get(self, name: str) -> type[Node] | None: ...


@dataclass
class Workflow:
    """A loaded workflow: the API-format prompt to run, and the editor graph when there was one."""

    api: dict[str, Any]
    editor: dict[str, Any] | None = None
    format: str = "api"  # which format the source was in: "api" or "editor"
    source: str | None = None  # file name (or "<bytes>", "<object>") for messages

    def extra_pnginfo(self) -> dict[str, Any]:
        """The `extra_pnginfo` ComfyUI clients send, so SaveImage embeds the editor graph too."""
        return {"workflow": self.editor} if self.editor is not None else {}


# ---- loading ------------------------------------------------------------------------------------


def load_workflow(source: Any, registry: NodeLookup | None = None) -> Workflow:
    """Load a workflow from a path, bytes, JSON text or parsed JSON; API, editor or PNG.

    `registry` (a `NodeRegistry` or anything with `.get(node_type)`) is needed only to convert the
    editor format, whose widget values are positional.
    """
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise WorkflowFormatError(f"workflow file {str(path)!r} does not exist; check the path") from None
        except IsADirectoryError:
            raise WorkflowFormatError(f"workflow path {str(path)!r} is a folder; give a .json or .png file") from None
        except OSError as exc:
            raise WorkflowFormatError(f"cannot read workflow file {str(path)!r}: {exc.strerror}") from None
        return _load_bytes(data, str(path), registry)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_bytes(bytes(source), "<bytes>", registry)
    if isinstance(source, str):
        return parse_workflow(_parse_json(source, "<text>"), registry, source_name="<text>")
    if isinstance(source, (Mapping, list)):
        return parse_workflow(source, registry, source_name="<object>")
    raise WorkflowFormatError(
        f"cannot load a workflow from {type(source).__name__}; pass a path, bytes, JSON text or a dict"
    )


def _load_bytes(data: bytes, where: str, registry: NodeLookup | None) -> Workflow:
    if data.startswith(PNG_SIGNATURE):
        chunks = read_png_chunks(data, where)
        return _from_png_chunks(chunks, where, registry)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowFormatError(
            f"{where}: neither a PNG nor UTF-8 JSON (undecodable byte at offset {exc.start})"
        ) from None
    return parse_workflow(_parse_json(text, where), registry, source_name=where)


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(
            f"{where}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def read_png_chunks(data: bytes, where: str = "<bytes>") -> dict[str, str]:
    """The tEXt/iTXt/zTXt chunks of a PNG, as a dict of strings."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            text = getattr(image, "text", None) or {}
            return {str(k): str(v) for k, v in text.items()}
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise WorkflowFormatError(f"{where}: not a readable PNG image ({exc})") from None


def _from_png_chunks(chunks: Mapping[str, str], where: str, registry: NodeLookup | None) -> Workflow:
    prompt_text = chunks.get("prompt")
    workflow_text = chunks.get("workflow")
    if prompt_text is None and workflow_text is None:
        found = ", ".join(sorted(chunks)) or "none"
        raise WorkflowFormatError(
            f"{where}: this PNG carries no 'prompt' or 'workflow' text chunk (chunks found: {found}); "
            f"only images saved with their workflow embedded can be loaded"
        )
    if prompt_text is None:
        assert workflow_text is not None
        return parse_workflow(_parse_json(workflow_text, f"{where} (chunk 'workflow')"), registry,
                              source_name=f"{where} (chunk 'workflow')")
    api = check_api(_parse_json(prompt_text, f"{where} (chunk 'prompt')"), f"{where} (chunk 'prompt')")
    editor = _parse_json(workflow_text, f"{where} (chunk 'workflow')") if workflow_text is not None else None
    if not (isinstance(editor, dict) and isinstance(editor.get("nodes"), list)):
        editor = None
    return Workflow(api=api, editor=editor, format="api", source=where)


def parse_workflow(data: Any, registry: NodeLookup | None = None, *, source_name: str = "<object>") -> Workflow:
    """Turn parsed JSON (API format, editor format, or a `/prompt` request body) into a Workflow."""
    kind = detect_format(data, source_name)
    if kind == "request":
        api = check_api(data["prompt"], f"{source_name} ('prompt')")
        editor = (data.get("extra_data") or {}).get("extra_pnginfo", {}).get("workflow")
        return Workflow(api=api, editor=editor if isinstance(editor, dict) else None, format="api", source=source_name)
    if kind == "editor":
        return Workflow(api=editor_to_api(data, registry, source_name), editor=dict(data), format="editor",
                        source=source_name)
    return Workflow(api=check_api(data, source_name), editor=None, format="api", source=source_name)


def detect_format(data: Any, where: str = "<object>") -> str:
    """"api", "editor", or "request" (a `/prompt` body `{prompt: {...}}`); raise for anything else."""
    if not isinstance(data, Mapping):
        raise WorkflowFormatError(
            f"{where}: a workflow is a JSON object, got {_json_kind(data)}; expected ComfyUI's API format "
            f"{{node_id: {{class_type, inputs}}}} or the editor format {{nodes: [...], links: [...]}}"
        )
    if isinstance(data.get("nodes"), list):
        return "editor"
    prompt = data.get("prompt")
    if isinstance(prompt, Mapping) and "class_type" not in data and all(
        isinstance(v, Mapping) and "class_type" in v for v in prompt.values()
    ):
        return "request"
    if all(isinstance(v, Mapping) and "class_type" in v for v in data.values()):
        return "api"
    if "nodes" in data:
        raise WorkflowFormatError(f"{where}: editor workflow 'nodes' must be a list, got {_json_kind(data['nodes'])}")
    bad = next(k for k, v in data.items() if not (isinstance(v, Mapping) and "class_type" in v))
    raise WorkflowFormatError(
        f"{where}: not a workflow: entry {bad!r} has no 'class_type' (an API-format workflow maps node ids "
        f"to {{class_type, inputs}}; an editor workflow has a 'nodes' list)"
    )


def check_api(data: Any, where: str = "<object>") -> dict[str, Any]:
    """Check the API format's shape (`{id: {class_type: str, inputs: {...}}}`) and return a copy."""
    if not isinstance(data, Mapping):
        raise WorkflowFormatError(f"{where}: an API-format workflow is a JSON object, got {_json_kind(data)}")
    out: dict[str, Any] = {}
    for node_id, node in data.items():
        if not isinstance(node, Mapping):
            raise WorkflowFormatError(f"{where}: node {node_id!r} must be an object, got {_json_kind(node)}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise WorkflowFormatError(
                f"{where}: node {node_id!r} needs a 'class_type' string naming its node type, got {class_type!r}"
            )
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise WorkflowFormatError(
                f"{where}: node {node_id!r} ({class_type}) 'inputs' must be an object, got {_json_kind(inputs)}"
            )
        entry = dict(node)
        entry["inputs"] = dict(inputs)
        out[str(node_id)] = entry
    return out


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return next((name for t, name in kinds.items() if isinstance(value, t)), type(value).__name__)


# ---- saving -------------------------------------------------------------------------------------


def save_workflow(workflow: Workflow | Mapping[str, Any], path: str | Path, *, editor: bool = False) -> Path:
    """Write the API format (or, with `editor=True`, the editor graph) as indented JSON."""
    if isinstance(workflow, Workflow):
        if editor and workflow.editor is None:
            raise WorkflowFormatError("this workflow has no editor graph to save; save its API format instead")
        data: Any = workflow.editor if editor else workflow.api
    else:
        data = workflow if editor else check_api(workflow)
    target = Path(path)
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def png_info(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None = None) -> Any:
    """A `PngInfo` with ComfyUI's tEXt chunks: `prompt`, then one per `extra_pnginfo` key."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(str(key), json.dumps(value))
    return info


# ---- editor -> API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: str


def widget_inputs(cls: type[Node]) -> list[InputSpec]:
    """The inputs that have a widget, in the editor's widget order (required first, as /object_info)."""
    specs = list(cls.inputs().values())
    ordered = [s for s in specs if not s.optional] + [s for s in specs if s.optional]
    return [s for s in ordered if not s.link_only and not s.ui.get("force_input")]


def editor_to_api(
    editor: Mapping[str, Any], registry: NodeLookup | None, where: str = "<editor workflow>"
) -> dict[str, Any]:
    """Convert a litegraph / ComfyUI schema-0.4 graph to the API format, as the frontend would."""
    if registry is None:
        raise WorkflowFormatError(
            f"{where}: converting an editor-format workflow needs the node registry (widget values are "
            f"positional); pass registry=PluginHost(...).nodes"
        )
    nodes = _editor_nodes(editor, where)
    links = _editor_links(editor, where)
    active = [n for n in nodes.values() if _mode(n) not in (MODE_MUTED, MODE_BYPASS) and n["type"] not in VIRTUAL_TYPES]

    unknown: dict[str, list[str]] = {}
    for node in active:
        if registry.get(node["type"]) is None:
            unknown.setdefault(node["type"], []).append(str(node["id"]))
    if unknown:
        listed = "; ".join(f"{t!r} (node{'s' if len(ids) > 1 else ''} {', '.join(ids)})" for t, ids in unknown.items())
        raise WorkflowFormatError(
            f"{where}: unknown node type{'s' if len(unknown) > 1 else ''} {listed}; install the plugin "
            f"that provides {'them' if len(unknown) > 1 else 'it'}, or remove or bypass those nodes",
            unknown_types=unknown,
        )

    api: dict[str, Any] = {}
    for node in active:
        cls = registry.get(node["type"])
        assert cls is not None
        node_id = str(node["id"])
        inputs = _widget_values(node, cls, where)
        for slot in node.get("inputs") or []:
            if not isinstance(slot, Mapping) or slot.get("link") is None:
                continue
            widget = slot.get("widget")
            name = (widget.get("name") if isinstance(widget, Mapping) else None) or slot.get("name")
            if not isinstance(name, str):
                raise WorkflowFormatError(f"{where}: node {node_id} ({node['type']}) has an input without a name")
            want = str(slot.get("type") or "")
            resolved = _resolve(slot["link"], want, nodes, links)
            if resolved is None:  # dangling, or from a muted node: a converted widget keeps its value
                continue
            inputs[name] = resolved
        entry: dict[str, Any] = {"inputs": inputs, "class_type": node["type"]}
        entry["_meta"] = {"title": node.get("title") or cls.display_name}
        api[node_id] = entry
    return api


def _editor_nodes(editor: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    raw = editor.get("nodes")
    if not isinstance(raw, list):
        raise WorkflowFormatError(f"{where}: editor workflow needs a 'nodes' list, got {_json_kind(raw)}")
    nodes: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(raw):
        if not isinstance(node, Mapping) or "id" not in node or not isinstance(node.get("type"), str):
            raise WorkflowFormatError(
                f"{where}: nodes[{index}] must be an object with an 'id' and a 'type' string, got {node!r:.120}"
            )
        nodes[str(node["id"])] = dict(node)
    return nodes


def _editor_links(editor: Mapping[str, Any], where: str) -> dict[str, _Link]:
    raw = editor.get("links") or []
    if not isinstance(raw, list):
        raise WorkflowFormatError(f"{where}: editor workflow 'links' must be a list, got {_json_kind(raw)}")
    links: dict[str, _Link] = {}
    for index, link in enumerate(raw):
        try:
            if isinstance(link, Mapping):
                link_id, origin, oslot = link["id"], link["origin_id"], link["origin_slot"]
                target, tslot, ltype = link["target_id"], link["target_slot"], link.get("type", "*")
            elif isinstance(link, list) and len(link) >= 5:
                link_id, origin, oslot, target, tslot = link[:5]
                ltype = link[5] if len(link) > 5 else "*"
            else:
                raise TypeError
            links[str(link_id)] = _Link(str(origin), int(oslot), str(target), int(tslot), str(ltype))
        except (KeyError, TypeError, ValueError):
            raise WorkflowFormatError(
                f"{where}: links[{index}] must be [id, origin_id, origin_slot, target_id, target_slot, type] "
                f"or an object with those keys, got {link!r:.120}"
            ) from None
    return links


def _mode(node: Mapping[str, Any]) -> int:
    mode = node.get("mode", MODE_NORMAL)
    return mode if isinstance(mode, int) else MODE_NORMAL


def _literal(value: Any) -> Any:
    # A bare list would read as a link [node_id, slot]; the API format wraps literal lists.
    return {"__value__": value} if isinstance(value, list) else value


def _widget_values(node: Mapping[str, Any], cls: type[Node], where: str) -> dict[str, Any]:
    values = node.get("widgets_values")
    widgets = widget_inputs(cls)
    if values is None:
        return {}
    if isinstance(values, Mapping):
        names = {s.name for s in widgets}
        return {k: _literal(v) for k, v in values.items() if k in names}
    if not isinstance(values, list):
        raise WorkflowFormatError(
            f"{where}: node {node['id']} ({node['type']}) 'widgets_values' must be an array or object, "
            f"got {_json_kind(values)}"
        )
    return dict(_match_widgets(widgets, values))


def _match_widgets(widgets: list[InputSpec], values: list[Any]) -> Iterator[tuple[str, Any]]:
    """Pair widget inputs with positional values, skipping the frontend's extra helper widgets."""
    extra = len(values) - len(widgets)
    pos = 0
    for index, spec in enumerate(widgets):
        if pos >= len(values):
            return
        yield spec.name, _literal(values[pos])
        pos += 1
        if pos >= len(values):
            return
        # The frontend stores a control widget after seeds ("randomize", ...) and an upload button
        # after image pickers; both are serialized but are not inputs. Skip one when the count says
        # so, or when the next widget could not take that value (it is not a text or combo widget).
        following = widgets[index + 1] if index + 1 < len(widgets) else None
        text_next = following is not None and following.type in ("STRING", "COMBO")
        value = values[pos]
        if spec.ui.get("control_after_generate") and value in CONTROL_VALUES and (extra > 0 or not text_next):
            pos += 1
            extra -= 1
        elif spec.ui.get("image_upload") and isinstance(value, str) and (extra > 0 or not text_next):
            pos += 1
            extra -= 1


def _types_match(have: str, want: str) -> bool:
    return not want or not have or have == want or "*" in (have, want)


def _resolve(link_id: Any, want: str, nodes: Mapping[str, dict[str, Any]], links: Mapping[str, _Link]) -> Any:
    """Follow a link to its real source through Reroutes and bypassed nodes; None when it dangles."""
    seen: set[str] = set()
    current: Any = link_id
    while current is not None:
        key = str(current)
        if key in seen:
            return None  # a loop of reroutes / bypassed nodes feeds nothing
        seen.add(key)
        link = links.get(key)
        if link is None:
            return None
        origin = nodes.get(link.origin_id)
        if origin is None:
            return None
        kind = origin["type"]
        if kind == REROUTE:
            slots = origin.get("inputs") or []
            current = slots[0].get("link") if slots and isinstance(slots[0], Mapping) else None
            continue
        if kind == PRIMITIVE:
            values = origin.get("widgets_values")
            if isinstance(values, list) and values:
                return _literal(values[0])
            return None
        if kind in NOTE_TYPES or _mode(origin) == MODE_MUTED:
            return None
        if _mode(origin) == MODE_BYPASS:
            current = _bypass_input(origin, link.origin_slot, want or link.type)
            continue
        return [link.origin_id, link.origin_slot]
    return None


def _bypass_input(node: Mapping[str, Any], origin_slot: int, want: str) -> Any:
    """The link into a bypassed node that stands in for its output: same slot first, then by type."""
    slots = [s for s in (node.get("inputs") or []) if isinstance(s, Mapping)]
    order = ([origin_slot] if 0 <= origin_slot < len(slots) else []) + list(range(len(slots)))
    for index in order:
        if _types_match(str(slots[index].get("type") or ""), want):
            return slots[index].get("link")
    return None
