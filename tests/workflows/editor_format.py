"""API format -> editor (litegraph, ComfyUI schema 0.4) format, for writing the example workflows.

The committed `workflows/<name>.json` files were produced with `write_editor_files()`; the tests check
that they still convert back (engine.workflow.editor_to_api) to exactly their `.api.json` twins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.workflow import widget_inputs

__all__ = ["api_to_editor", "write_editor_files"]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _depths(api: dict[str, Any]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            ups = [v[0] for v in api[node_id]["inputs"].values() if _is_link(v)]
            depth[node_id] = 1 + max((visit(u) for u in ups), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def api_to_editor(api: dict[str, Any], registry: Any) -> dict[str, Any]:
    """An editor-format graph for an API prompt: nodes laid out in columns by depth, links, widget values."""
    depth = _depths(api)
    order = sorted(api, key=lambda n: (depth[n], int(n)))
    links: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    rows: dict[int, int] = {}
    nodes = []
    for position, node_id in enumerate(order):
        entry = api[node_id]
        cls = registry.get(entry["class_type"])
        sockets = [s for s in cls.inputs().values() if s.link_only]
        sockets = [s for s in sockets if not s.optional] + [s for s in sockets if s.optional]
        inputs = []
        for slot, spec in enumerate(sockets):
            value = entry["inputs"].get(spec.name)
            link_id = None
            if _is_link(value):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(node_id), slot, spec.type])
                out_links.setdefault((value[0], value[1]), []).append(link_id)
            inputs.append({"name": spec.name, "type": spec.type, "link": link_id})
        widgets = []
        for spec in widget_inputs(cls):
            widgets.append(entry["inputs"].get(spec.name, spec.default))
            if spec.ui.get("control_after_generate"):
                widgets.append("fixed")
            if spec.ui.get("image_upload"):
                widgets.append("image")
        column = depth[node_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes.append({
            "id": int(node_id), "type": entry["class_type"], "pos": [40 + 380 * column, 40 + 300 * row],
            "size": [340, 120 + 26 * (len(inputs) + len(widgets))], "flags": {}, "order": position, "mode": 0,
            "inputs": inputs,
            "outputs": [{"name": o.label, "type": o.type.name, "links": [], "slot_index": i}
                        for i, o in enumerate(cls.outputs)],
            "properties": {"Node name for S&R": entry["class_type"]},
            "widgets_values": widgets,
            "title": entry.get("_meta", {}).get("title", cls.display_name),
        })
    for node in nodes:
        for out in node["outputs"]:
            out["links"] = out_links.get((str(node["id"]), out["slot_index"]), [])
    return {
        "last_node_id": max(int(n) for n in api), "last_link_id": len(links), "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
    }


def write_editor_files(folder: Path, registry: Any) -> list[Path]:
    """Write `<name>.json` beside every `<name>.api.json` in `folder`."""
    written = []
    for api_path in sorted(folder.glob("*.api.json")):
        api = json.loads(api_path.read_text())
        target = api_path.with_name(api_path.name[: -len(".api.json")] + ".json")
        target.write_text(json.dumps(api_to_editor(api, registry), indent=2) + "\n")
        written.append(target)
    return written
