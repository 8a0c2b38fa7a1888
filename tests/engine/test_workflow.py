"""Workflow formats: API load/save, PNG chunks, format detection, editor -> API conversion."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.node import In, Input, Node, NodeContext, Output
from engine.registry import NodeRegistry
from engine.types import CLIP, CONDITIONING, IMAGE, INT, LATENT, MODEL
from engine.workflow import (
    Workflow,
    WorkflowFormatError,
    detect_format,
    editor_to_api,
    load_workflow,
    png_info,
    save_workflow,
    widget_inputs,
)

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"


class _Runs(Node):
    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return ()


class Loader(_Runs):
    """Checkpoint-loader look-alike."""

    outputs = (Output(MODEL), Output(CLIP))
    ckpt_name: str = Input("a.safetensors", choices=["a.safetensors", "b.safetensors"])


class Encode(_Runs):
    """Text-encoder look-alike: a link first, then a multiline widget."""

    outputs = (Output(CONDITIONING),)
    clip: In[CLIP]
    text: str = Input("", multiline=True)


class Sampler(_Runs):
    """KSampler look-alike: seed with a control widget, an optional widget declared last."""

    outputs = (Output(LATENT),)
    model: In[MODEL]
    seed: int = Input(0, control_after_generate=True)
    steps: int = Input(20, ge=1)
    cfg: float = Input(8.0)
    positive: In[CONDITIONING]
    denoise: float = Input(1.0, optional=True)


class LoraLike(_Runs):
    """Passes MODEL and CLIP through: the node that gets bypassed."""

    outputs = (Output(MODEL), Output(CLIP))
    model: In[MODEL]
    clip: In[CLIP]
    strength: float = Input(1.0)


class SwapLike(_Runs):
    """Inputs in the opposite order of its outputs, to test bypass matching by type."""

    outputs = (Output(MODEL), Output(CLIP))
    clip: In[CLIP]
    model: In[MODEL]


class PickImage(_Runs):
    """LoadImage look-alike: an image picker (with an upload button) then another widget."""

    outputs = (Output(IMAGE),)
    image: str = Input("x.png", choices=["x.png", "y.png"], image_upload=True)
    scale: float = Input(1.0)


class Seed(_Runs):
    """An INT source, for converted widgets fed by a real node."""

    outputs = (Output(INT),)
    value: int = Input(0)


class Save(_Runs):
    """Output node; `extra` is a forced input (a socket with no widget)."""

    output_node = True
    samples: In[LATENT]
    prefix: str = Input("out")
    extra: str = Input("", force_input=True)
    tags: str = Input("", optional=True)


@pytest.fixture
def registry() -> NodeRegistry:
    reg = NodeRegistry()
    for cls in (Loader, Encode, Sampler, LoraLike, SwapLike, PickImage, Seed, Save):
        reg.register(cls, "test")
    return reg


def node(node_id: int, kind: str, *, inputs: list[dict[str, Any]] | None = None, widgets: Any = None,
         mode: int = 0, outputs: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {},
                             "order": node_id, "mode": mode, "inputs": inputs or [], "outputs": outputs or [],
                             "properties": {}}
    if widgets is not None:
        entry["widgets_values"] = widgets
    entry.update(extra)
    return entry


def slot(name: str, kind: str, link: int | None, widget: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": kind, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def graph(nodes: list[dict[str, Any]], links: list[list[Any]]) -> dict[str, Any]:
    return {"last_node_id": max((n["id"] for n in nodes), default=0), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def strip_meta(api: dict[str, Any]) -> dict[str, Any]:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


# ---- API format -----------------------------------------------------------------------------------


def test_api_save_load_roundtrip(tmp_path: Path) -> None:
    api = json.loads((FIXTURES / "arith_api.json").read_text())
    path = save_workflow(Workflow(api=api), tmp_path / "saved.json")
    loaded = load_workflow(path)
    assert loaded.format == "api" and loaded.editor is None
    assert loaded.api == api
    assert json.loads(path.read_text()) == api


def test_api_loads_from_bytes_text_and_dict() -> None:
    text = (FIXTURES / "arith_api.json").read_text()
    expected = json.loads(text)
    assert load_workflow(text.encode()).api == expected
    assert load_workflow(text).api == expected
    assert load_workflow(expected).api == expected
    assert load_workflow(str(FIXTURES / "arith_api.json")).api == expected


def test_api_node_ids_become_strings_and_missing_inputs_default_to_empty() -> None:
    loaded = load_workflow({1: {"class_type": "Seed"}})
    assert loaded.api == {"1": {"class_type": "Seed", "inputs": {}}}


def test_prompt_request_body_is_accepted_with_its_editor_graph() -> None:
    editor = json.loads((FIXTURES / "arith_editor.json").read_text())
    body = {"prompt": {"1": {"class_type": "Seed", "inputs": {"value": 1}}}, "client_id": "abc",
            "extra_data": {"extra_pnginfo": {"workflow": editor}}}
    loaded = load_workflow(body)
    assert loaded.api == {"1": {"class_type": "Seed", "inputs": {"value": 1}}}
    assert loaded.editor == editor
    assert loaded.extra_pnginfo() == {"workflow": editor}


@pytest.mark.parametrize(("data", "message"), [
    ([1, 2], "a workflow is a JSON object, got an array"),
    ({"1": {"inputs": {}}}, "entry '1' has no 'class_type'"),
    ({"1": {"class_type": "Seed", "inputs": [1]}}, "node '1' (Seed) 'inputs' must be an object, got an array"),
    ({"1": {"class_type": ""}, "2": {"class_type": "Seed"}}, "node '1' needs a 'class_type' string"),
    ({"nodes": {"1": {}}}, "editor workflow 'nodes' must be a list, got an object"),
])
def test_wrong_shapes_are_named(data: Any, message: str) -> None:
    with pytest.raises(WorkflowFormatError) as info:
        load_workflow(data)
    assert message in str(info.value)


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "1": {"class_type": "Seed",\n      "inputs": {,}\n}\n')
    with pytest.raises(WorkflowFormatError) as info:
        load_workflow(path)
    assert str(info.value).startswith(f"{path}: malformed JSON at line 3, column 18: ")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WorkflowFormatError, match=r"workflow file '.*nope\.json' does not exist"):
        load_workflow(tmp_path / "nope.json")


def test_detect_format() -> None:
    assert detect_format({"1": {"class_type": "X", "inputs": {}}}) == "api"
    assert detect_format({"nodes": [], "links": []}) == "editor"
    assert detect_format({"prompt": {"1": {"class_type": "X"}}}) == "request"
    assert detect_format({}) == "api"


# ---- PNG ------------------------------------------------------------------------------------------


def test_png_fixture_gives_prompt_and_editor_graph() -> None:
    loaded = load_workflow(FIXTURES / "arith.png")
    assert loaded.api == json.loads((FIXTURES / "arith_api.json").read_text())
    assert loaded.editor == json.loads((FIXTURES / "arith_editor.json").read_text())
    assert loaded.format == "api"


def test_png_written_with_png_info_roundtrips(tmp_path: Path) -> None:
    api = {"1": {"class_type": "Seed", "inputs": {"value": 9}}}
    path = tmp_path / "img.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=png_info(api, {"workflow": {"nodes": [], "links": []}}))
    with Image.open(path) as image:
        assert set(image.text) == {"prompt", "workflow"}
    loaded = load_workflow(path.read_bytes())
    assert loaded.api == api
    assert loaded.editor == {"nodes": [], "links": []}


def test_png_with_only_the_editor_graph_is_converted(tmp_path: Path, registry: NodeRegistry) -> None:
    editor = graph([node(1, "Seed", widgets=[5], outputs=[{"name": "INT", "type": "INT", "links": []}])], [])
    path = tmp_path / "editor_only.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=png_info(None, {"workflow": editor}))
    loaded = load_workflow(path, registry)
    assert loaded.format == "editor"
    assert strip_meta(loaded.api) == {"1": {"class_type": "Seed", "inputs": {"value": 5}}}


def test_png_without_chunks_is_refused() -> None:
    with pytest.raises(WorkflowFormatError) as info:
        load_workflow(FIXTURES / "no_chunks.png")
    assert "carries no 'prompt' or 'workflow' text chunk (chunks found: none)" in str(info.value)


def test_png_with_malformed_chunk_names_the_chunk(tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", "{oops")
    path = tmp_path / "bad.png"
    Image.new("RGB", (2, 2)).save(path, pnginfo=info)
    with pytest.raises(WorkflowFormatError, match=r"bad\.png \(chunk 'prompt'\): malformed JSON at line 1, column 2"):
        load_workflow(path)


# ---- editor -> API --------------------------------------------------------------------------------


def test_widget_order_skips_links_and_forced_inputs_and_puts_optional_last() -> None:
    assert [s.name for s in widget_inputs(Sampler)] == ["seed", "steps", "cfg", "denoise"]
    assert [s.name for s in widget_inputs(Save)] == ["prefix", "tags"]


def test_full_editor_fixture_converts_like_the_frontend(registry: NodeRegistry) -> None:
    editor = json.loads((FIXTURES / "editor_full.json").read_text())
    loaded = load_workflow(FIXTURES / "editor_full.json", registry)
    assert loaded.format == "editor"
    assert loaded.editor == editor
    assert loaded.api == {
        "1": {"inputs": {"ckpt_name": "b.safetensors"}, "class_type": "Loader", "_meta": {"title": "Loader"}},
        # clip: Reroute 4 <- Reroute 3 <- bypassed LoraLike slot 1 <- Loader slot 1; text: PrimitiveNode.
        "5": {"inputs": {"text": "a cat", "clip": ["1", 1]}, "class_type": "Encode",
              "_meta": {"title": "Positive prompt"}},
        # "randomize" after the seed is the frontend's control widget, not steps.
        "7": {"inputs": {"seed": 42, "steps": 25, "cfg": 6.5, "denoise": 0.75, "model": ["1", 0],
                         "positive": ["5", 0]}, "class_type": "Sampler", "_meta": {"title": "Sampler"}},
        "8": {"inputs": {"prefix": "final", "samples": ["7", 0]}, "class_type": "Save", "_meta": {"title": "Save"}},
        # its source (node 12) is muted: the link is dropped.
        "13": {"inputs": {"prefix": "orphan"}, "class_type": "Save", "_meta": {"title": "Save"}},
    }


def test_link_objects_convert_like_link_arrays(registry: NodeRegistry) -> None:
    editor = json.loads((FIXTURES / "editor_full.json").read_text())
    as_objects = copy.deepcopy(editor)
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    as_objects["links"] = [dict(zip(keys, link)) for link in editor["links"]]
    assert editor_to_api(as_objects, registry) == editor_to_api(editor, registry)


def test_seed_without_control_value_still_maps_by_position(registry: NodeRegistry) -> None:
    editor = graph([node(1, "Sampler", widgets=[7, 30, 5.0, 0.5])], [])
    assert editor_to_api(editor, registry)["1"]["inputs"] == {"seed": 7, "steps": 30, "cfg": 5.0, "denoise": 0.5}


def test_image_upload_button_value_is_skipped(registry: NodeRegistry) -> None:
    editor = graph([node(1, "PickImage", widgets=["y.png", "image", 2.0])], [])
    assert editor_to_api(editor, registry)["1"]["inputs"] == {"image": "y.png", "scale": 2.0}


def test_widgets_values_as_object_map_by_name(registry: NodeRegistry) -> None:
    editor = graph([node(1, "Sampler", widgets={"seed": 3, "steps": 4, "cfg": 1.5, "bogus": 1})], [])
    assert editor_to_api(editor, registry)["1"]["inputs"] == {"seed": 3, "steps": 4, "cfg": 1.5}


def test_literal_list_values_are_wrapped(registry: NodeRegistry) -> None:
    editor = graph([node(1, "Save", widgets=["p", ["a", 1]])], [])
    assert editor_to_api(editor, registry)["1"]["inputs"] == {"prefix": "p", "tags": {"__value__": ["a", 1]}}


def test_converted_widget_takes_the_link(registry: NodeRegistry) -> None:
    editor = graph([
        node(1, "Seed", widgets=[11], outputs=[{"name": "INT", "type": "INT", "links": [1]}]),
        node(2, "Sampler", inputs=[slot("model", "MODEL", None), slot("seed", "INT", 1, widget=True)],
             widgets=[999, "fixed", 20, 8.0, 1.0]),
    ], [[1, 1, 0, 2, 1, "INT"]])
    assert editor_to_api(editor, registry)["2"]["inputs"] == {"seed": ["1", 0], "steps": 20, "cfg": 8.0,
                                                              "denoise": 1.0}


def test_unlinked_widget_input_keeps_its_value(registry: NodeRegistry) -> None:
    # Newer frontends list every widget in `inputs` with link null when it is not converted.
    editor = graph([node(1, "Sampler", inputs=[slot("seed", "INT", None, widget=True)], widgets=[5, 6, 7.0])], [])
    assert editor_to_api(editor, registry)["1"]["inputs"] == {"seed": 5, "steps": 6, "cfg": 7.0}


def test_bypass_matches_inputs_by_type_when_slots_differ(registry: NodeRegistry) -> None:
    editor = graph([
        node(1, "Loader", widgets=["a.safetensors"]),
        node(2, "SwapLike", mode=4, inputs=[slot("clip", "CLIP", 2), slot("model", "MODEL", 1)]),
        node(3, "Sampler", inputs=[slot("model", "MODEL", 3)], widgets=[1, 2, 3.0]),
        node(4, "Encode", inputs=[slot("clip", "CLIP", 4)], widgets=["x"]),
    ], [[1, 1, 0, 2, 1, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 2, 0, 3, 0, "MODEL"], [4, 2, 1, 4, 0, "CLIP"]])
    api = editor_to_api(editor, registry)
    assert "2" not in api
    assert api["3"]["inputs"]["model"] == ["1", 0]
    assert api["4"]["inputs"]["clip"] == ["1", 1]


def test_chained_bypasses_and_reroutes_resolve_to_the_source(registry: NodeRegistry) -> None:
    editor = graph([
        node(1, "Loader", widgets=["a.safetensors"]),
        node(2, "LoraLike", mode=4, inputs=[slot("model", "MODEL", 1), slot("clip", "CLIP", None)]),
        node(3, "Reroute", inputs=[slot("", "*", 2)]),
        node(4, "LoraLike", mode=4, inputs=[slot("model", "MODEL", 3), slot("clip", "CLIP", None)]),
        node(5, "Sampler", inputs=[slot("model", "MODEL", 4)], widgets=[1, 2, 3.0]),
    ], [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "*"], [3, 3, 0, 4, 0, "*"], [4, 4, 0, 5, 0, "MODEL"]])
    assert editor_to_api(editor, registry)["5"]["inputs"]["model"] == ["1", 0]


def test_bypassed_node_with_unlinked_matching_input_drops_the_link(registry: NodeRegistry) -> None:
    editor = graph([
        node(2, "LoraLike", mode=4, inputs=[slot("model", "MODEL", None), slot("clip", "CLIP", None)]),
        node(3, "Sampler", inputs=[slot("model", "MODEL", 1)], widgets=[1, 2, 3.0]),
    ], [[1, 2, 0, 3, 0, "MODEL"]])
    assert "model" not in editor_to_api(editor, registry)["3"]["inputs"]


def test_dangling_reroute_drops_the_link(registry: NodeRegistry) -> None:
    editor = graph([
        node(1, "Reroute", inputs=[slot("", "*", None)]),
        node(2, "Sampler", inputs=[slot("model", "MODEL", 1)], widgets=[1, 2, 3.0]),
    ], [[1, 1, 0, 2, 0, "MODEL"]])
    assert editor_to_api(editor, registry)["2"]["inputs"] == {"seed": 1, "steps": 2, "cfg": 3.0}


def test_primitive_through_a_reroute_writes_its_value(registry: NodeRegistry) -> None:
    editor = graph([
        node(1, "PrimitiveNode", widgets=[1234, "increment"]),
        node(2, "Reroute", inputs=[slot("", "*", 1)]),
        node(3, "Sampler", inputs=[slot("seed", "INT", 2, widget=True)], widgets=[0, "fixed", 2, 3.0]),
    ], [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "INT"]])
    assert editor_to_api(editor, registry)["3"]["inputs"] == {"seed": 1234, "steps": 2, "cfg": 3.0}


def test_unknown_node_types_are_all_named(registry: NodeRegistry) -> None:
    editor = graph([node(1, "Mystery", widgets=[]), node(2, "Mystery"), node(3, "Other"),
                    node(4, "Ghost", mode=2), node(5, "Note", widgets=["hi"])], [])
    with pytest.raises(WorkflowFormatError) as info:
        editor_to_api(editor, registry)
    assert "unknown node types 'Mystery' (nodes 1, 2); 'Other' (node 3)" in str(info.value)
    assert info.value.unknown_types == {"Mystery": ["1", "2"], "Other": ["3"]}


def test_editor_conversion_needs_a_registry() -> None:
    with pytest.raises(WorkflowFormatError, match="needs the node registry"):
        load_workflow(FIXTURES / "editor_full.json")


def test_malformed_links_are_named(registry: NodeRegistry) -> None:
    editor = graph([node(1, "Seed", widgets=[1])], [[1, 2]])
    with pytest.raises(WorkflowFormatError, match=r"links\[0\] must be \[id, origin_id"):
        editor_to_api(editor, registry)


def test_comfyui_default_graph_converts_with_the_builtin_library(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.plugins import PluginHost

    monkeypatch.setenv("LATENTGRAPH_LOAD_PLUGINS", "core")
    monkeypatch.delenv("LATENTGRAPH_DISABLE_PLUGINS", raising=False)
    host = PluginHost().load()
    assert host.records[0].status == "ok", host.records[0].error
    loaded = load_workflow(FIXTURES / "comfyui_default.editor.json", host.nodes)
    # What ComfyUI's own "Export (API)" gives for its default graph (SDXL checkpoint, 1024px).
    assert strip_meta(loaded.api) == {
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {
            "text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    }
