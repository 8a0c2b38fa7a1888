"""The extras plugin's editor extension (palette.js), run under Node.js against a stand-in `app`.

The module is found through the plugin host (the entry point's registered web folder), its import of
`/app/app.js` is swapped for the stand-in, and every hook the editor calls is exercised: the widget
factory, beforeRegisterNodeDef, nodeCreated (typing colours updates the swatches) and the `executed`
event after a run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engine.plugins import PluginHost

NODE = shutil.which("node")

HARNESS = r"""
const calls = { registered: [] };
const listeners = {};
const graphNodes = new Map();
globalThis.__app = {
  customWidgets: {},
  registerExtension(ext) { calls.registered.push(ext.name); },
  api: { addEventListener(type, fn) { (listeners[type] ??= []).push(fn); } },
  graph: { getNodeById(id) { return graphNodes.get(id) ?? null; } },
};
const mod = await import("./palette.mjs");
const app = globalThis.__app;
const ext = mod.extension;
Object.assign(app.customWidgets, ext.getCustomWidgets(app));

function fakeNode(comfyClass, widgets = []) {
  return {
    comfyClass, widgets: [...widgets], dirty: 0,
    addCustomWidget(w) { this.widgets.push(w); return w; },
    setDirtyCanvas() { this.dirty += 1; },
  };
}
function fakeType() { return class { }; }
function drawn(widget, width) {
  const ops = [];
  const ctx = { save() {}, restore() {}, fillText(t) { ops.push(["text", t]); },
    fillRect(x, y, w, h) { ops.push([this.fillStyle, +x.toFixed(3), y, +w.toFixed(3), h]); } };
  widget.draw(ctx, null, width, 100);
  return ops;
}

const out = {};
out.registered = calls.registered;
out.parsed = mod.parseColors("#1B1B3A, f84aa7 nope #abc;#12345");
out.layout = mod.swatchLayout(3, 130, [2, 1, 1]);

// beforeRegisterNodeDef: only nodes with a PALETTE output get showPalette
const FromColors = fakeType(), Render = fakeType(), Extract = fakeType();
ext.beforeRegisterNodeDef(FromColors, { name: "PaletteFromColors", output: ["PALETTE"] }, app);
ext.beforeRegisterNodeDef(Render, { name: "RenderPalette", output: ["IMAGE"] }, app);
ext.beforeRegisterNodeDef(Extract, { name: "ExtractPalette", output: ["PALETTE"] }, app);
out.hasShow = [typeof FromColors.prototype.showPalette, typeof Render.prototype.showPalette];

// nodeCreated: a swatch widget after the text widget, following what is typed
const text = { name: "colors", type: "text", value: "#ff0000 #00ff00", callback() { this.seen = true; } };
const node = Object.assign(Object.create(FromColors.prototype), fakeNode("PaletteFromColors", [text]));
ext.nodeCreated(node, app);
const swatches = node.widgets[1];
out.widget = { count: node.widgets.length, name: swatches.name, serialize: swatches.serialize,
  isControl: swatches.isControl, value: swatches.value, size: swatches.computeSize(200) };
out.drawnBefore = drawn(swatches, 130);
text.value = "#0000ff";
text.callback("#0000ff");
out.afterTyping = { value: swatches.value, original: text.seen === true, dirty: node.dirty };

// a render node gets no widget
const plain = Object.assign(Object.create(Render.prototype), fakeNode("RenderPalette"));
ext.nodeCreated(plain, app);
out.plainWidgets = plain.widgets.length;

// setup + executed: ExtractPalette's UI output fills its swatches, with weights
const extracted = Object.assign(Object.create(Extract.prototype), fakeNode("ExtractPalette"));
ext.nodeCreated(extracted, app);
graphNodes.set(7, extracted);
ext.setup(app);
const fire = (output) => { for (const fn of listeners.executed ?? []) fn({ detail: { node: "7", output } }); };
fire({ palette: ["#111111", "#eeeeee"], weights: [0.75, 0.25] });
fire({ images: [] });  // not a palette: ignored
out.executed = { value: extracted.widgets[0].value, weights: extracted.widgets[0].weights };
out.drawnExtracted = drawn(extracted.widgets[0], 130);
out.emptyDrawn = drawn(plain.widgets[0] ?? mod.addSwatches(fakeNode("X"), "s"), 130);
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if NODE is None:
        raise RuntimeError("Node.js is missing: the editor's set-up (make setup-web) needs it; install nodejs")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LATENTGRAPH_DISABLE_PLUGINS", raising=False)
        patch.setenv("LATENTGRAPH_LOAD_PLUGINS", "extras")
        host = PluginHost(entry_points=True).load()
    source = (Path(host.web_extensions["extras"]) / "palette.js").read_text()
    assert source.count('import { app } from "/app/app.js";') == 1
    folder = tmp_path_factory.mktemp("palette_js")
    (folder / "palette.mjs").write_text(source.replace('import { app } from "/app/app.js";',
                                                       "const app = globalThis.__app;"))
    (folder / "harness.mjs").write_text(HARNESS)
    run = subprocess.run([NODE, "harness.mjs"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def test_registers_itself_and_parses_colours(results: dict[str, Any]) -> None:
    assert results["registered"] == ["latentgraph_extras.palette"]
    assert results["parsed"] == ["#1b1b3a", "#f84aa7", "#aabbcc"]
    assert results["layout"] == [{"x": 15, "width": 50}, {"x": 65, "width": 25}, {"x": 90, "width": 25}]


def test_swatch_widget_on_palette_nodes_follows_the_text(results: dict[str, Any]) -> None:
    assert results["hasShow"] == ["function", "undefined"]
    assert results["widget"] == {"count": 2, "name": "swatches", "serialize": False, "isControl": True,
                                 "value": ["#ff0000", "#00ff00"], "size": [200, 28]}
    assert results["drawnBefore"] == [["#ff0000", 15, 104, 50, 20], ["#00ff00", 65, 104, 50, 20]]
    assert results["afterTyping"] == {"value": ["#0000ff"], "original": True, "dirty": 2}
    assert results["plainWidgets"] == 0


def test_executed_palette_fills_the_swatches_with_weights(results: dict[str, Any]) -> None:
    assert results["executed"] == {"value": ["#111111", "#eeeeee"], "weights": [0.75, 0.25]}
    assert results["drawnExtracted"] == [["#111111", 15, 104, 75, 20], ["#eeeeee", 90, 104, 25, 20]]
    assert results["emptyDrawn"] == [["text", "no colours yet"]]
