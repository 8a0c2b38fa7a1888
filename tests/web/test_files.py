"""Files and tabs: the default workflow on first open, plugins and extensions, save and reopen,
drop a PNG saved by SaveImage to get its workflow back, tabs across reloads, image upload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from tests.web.helpers import until, add_node_via_search, clear_graph, connect, wait_message

DEFAULT_TYPES = ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"]


def _graph(editor: Any) -> dict[str, Any]:
    return editor.evaluate("app.graph.serialize()")


def _shape(workflow: dict[str, Any]) -> tuple[Any, ...]:
    nodes = sorted((n["id"], n["type"], json.dumps(n.get("widgets_values"))) for n in workflow["nodes"])
    return nodes, sorted(tuple(link) for link in workflow["links"])


def test_default_workflow_plugins_and_extensions(editor: Any) -> None:
    workflow = _graph(editor)
    assert sorted(n["type"] for n in workflow["nodes"]) == sorted(DEFAULT_TYPES)
    assert len(workflow["links"]) == 9 and workflow["version"] == 0.4
    assert editor.evaluate("app.tabs.tabs.length") == 1
    # Old-style saved inputs (links only) get their widget sockets back, without duplicates.
    names = editor.evaluate("app.graph._nodes.find(n => n.type === 'KSampler').inputs.map(s => s.name)")
    assert sorted(names) == sorted(editor.evaluate("Object.keys(app.defs.KSampler.input.required)"))
    prompt = editor.evaluate("app.graphToPrompt()")
    assert prompt["3"]["inputs"] | {"seed": 0} == {
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "seed": 0,
        "steps": 10, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}
    assert prompt["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": "latentgraph"}
    # The failed plugin is in the banner with its error; the test extension ran every hook.
    banner = editor.inner_text("#banner")
    assert "BrokenPlugin" in banner or "broken on purpose" in banner
    assert editor.evaluate("window.testExtension.setup") is True
    assert "SolidImage" in editor.evaluate("window.testExtensionDefs")
    editor.evaluate("app.addNode('SolidImage', [0, 0])")
    assert editor.evaluate("app.graph._nodes.at(-1).fromExtension && app.graph._nodes.at(-1).color") == "#225522"
    # The checkpoint combo takes the first model file the server lists (when it has the node).
    if "CheckpointLoaderSimple" in editor.evaluate("Object.keys(app.defs)"):
        choices = editor.evaluate("app.defs.CheckpointLoaderSimple.input.required.ckpt_name[0]")
        value = editor.evaluate("app.graph._nodes.find(n => n.type === 'CheckpointLoaderSimple').widgets[0].value")
        assert not choices or value == choices[0]
        # With only latentgraph's own demo checkpoints, the editor says where real ones go.
        builtin = all(name.startswith("latentgraph_") for name in choices)
        assert editor.is_visible("#model-note") == builtin
        if builtin:
            assert "models/checkpoints/" in editor.inner_text("#model-note")
            editor.click("#model-note-close")
            assert not editor.is_visible("#model-note")


def test_save_reopen_png_drop_tabs_and_upload(editor: Any, tmp_path: Path) -> None:
    clear_graph(editor)
    solid = add_node_via_search(editor, "solid image", 250, 250)
    save = add_node_via_search(editor, "save image", 750, 250)
    connect(editor, solid, 0, save, "images")
    editor.evaluate(f"app.graph.getNodeById({save}).widgets.find(w => w.name === 'filename_prefix').value = 'droptest'")
    sent_workflow = _graph(editor)  # the PNG embeds the workflow as queued (seeds change after)
    editor.click("#queue-button")
    done = wait_message(editor, "executed")
    after_run = _graph(editor)
    image = done["data"]["output"]["images"][0]

    # Save downloads the editor JSON; Open loads it back into a new tab.
    with editor.expect_download() as info:
        editor.click("#save-button")
    saved = tmp_path / "saved.json"
    info.value.save_as(saved)
    assert _shape(json.loads(saved.read_text())) == _shape(after_run)
    editor.set_input_files("#open-file", str(saved))
    until(editor, "app.tabs.tabs.length === 2")
    assert _shape(_graph(editor)) == _shape(after_run)

    # An API-format prompt opens too (laid out by depth): the same prompt comes back out.
    api = tmp_path / "api.json"
    api.write_text(json.dumps(editor.evaluate("app.graphToPrompt()")))
    editor.set_input_files("#open-file", str(api))
    until(editor, "app.tabs.tabs.length === 3")
    assert editor.evaluate("app.graphToPrompt()") == json.loads(api.read_text())
    editor.click("#tabs .tab[data-index='2'] .close")
    until(editor, "app.tabs.tabs.length === 2")

    # Drop the PNG that SaveImage wrote: its workflow chunk opens in a third tab.
    clear_graph(editor)
    editor.evaluate(
        """async image => {
             const blob = await (await fetch(app.api.viewUrl(image))).blob();
             const file = new File([blob], image.filename, {type: 'image/png'});
             const dt = new DataTransfer(); dt.items.add(file);
             const target = document.getElementById('graph');
             const r = target.getBoundingClientRect();
             target.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true, clientX: r.left + 5, clientY: r.top + 5}));
           }""",
        image,
    )
    until(editor, "app.tabs.tabs.length === 3")
    dropped = _graph(editor)
    assert _shape(dropped) == _shape(sent_workflow)
    assert editor.evaluate("app.tabs.current.name") == image["filename"].removesuffix(".png")

    # Tabs survive a reload (localStorage), with the active one restored.
    editor.reload()
    editor.wait_for_selector("body[data-ready=true]")
    assert editor.evaluate("app.tabs.tabs.length") == 3 and editor.evaluate("app.tabs.active") == 2
    assert _shape(_graph(editor)) == _shape(dropped)
    editor.click("#tabs .tab[data-index='0']")
    until(editor, "app.tabs.active === 0")
    assert _shape(_graph(editor)) == _shape(after_run)

    # LoadImage: upload through its button, the combo takes the file and the node shows it.
    png = tmp_path / "upload me.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png)
    load = add_node_via_search(editor, "load image", 300, 700)
    with editor.expect_file_chooser() as chooser:
        editor.evaluate(f"app.graph.getNodeById({load}).uploadChooser.click()")
    chooser.value.set_files(str(png))
    until(editor, f"app.graph.getNodeById({load}).imgs?.[0]?.naturalWidth === 40")
    name = editor.evaluate(f"app.graph.getNodeById({load}).widgets[0].value")
    assert name.endswith(".png") and name in editor.evaluate(f"app.graph.getNodeById({load}).widgets[0].options.values")
    fetched = editor.evaluate("async name => (await fetch(`/view?filename=${encodeURIComponent(name)}&type=input`)).status", name)
    assert fetched == 200
