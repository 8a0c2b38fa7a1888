"""The extras plugin's web extension in the real editor (headless Chromium): loaded from the installed
plugin's `/extensions/extras/palette.js`, it adds swatches to the palette nodes and fills them after a run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.conftest import CHROMIUM_ARGS, LiveServer, chromium_path, editor  # noqa: F401 - editor fixture
from tests.web.helpers import clear_graph, wait_message

pytestmark = pytest.mark.browser


# Module-scoped (tests/web's are per session): playwright's sync API keeps an event loop running on
# this thread while a browser is open, which later asyncio tests in the session must not see.
@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("extras_webserver")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_palette_extension_in_the_editor(editor: Any) -> None:
    assert "latentgraph_extras.palette" in editor.evaluate("app.extensions.map(e => e.name)")
    assert editor.evaluate("typeof app.customWidgets.PALETTE_SWATCHES") == "function"
    clear_graph(editor)

    typed = editor.evaluate("app.addNode('PaletteFromColors', [50, 50]).id")
    widgets = editor.evaluate(f"app.graph.getNodeById({typed}).widgets.map(w => [w.name, w.value])")
    assert widgets == [["colors", "#1b1b3a, #693668, #a74482, #f84aa7, #ff3562"],
                       ["swatches", ["#1b1b3a", "#693668", "#a74482", "#f84aa7", "#ff3562"]]]
    editor.evaluate(f"""(() => {{
        const w = app.graph.getNodeById({typed}).widgets[0];
        w.value = "#fff #000";
        w.callback(w.value);
    }})()""")
    assert editor.evaluate(f"app.graph.getNodeById({typed}).widgets[1].value") == ["#ffffff", "#000000"]
    # the swatches are display only: not in the saved workflow, not in the API prompt
    saved = editor.evaluate(f"app.graph.serialize().nodes.find(n => n.id === {typed}).widgets_values")
    assert saved == ["#fff #000"]
    assert editor.evaluate(f"app.graphToPrompt()['{typed}'].inputs") == {"colors": "#fff #000"}

    # a run fills ExtractPalette's swatches from its UI output
    solid = editor.evaluate("app.addNode('SolidImage', [50, 250]).id")
    editor.evaluate(f"""(() => {{
        const s = app.graph.getNodeById({solid});
        for (const [name, value] of [["width", 16], ["height", 16], ["steps", 1], ["seed", 1], ["delay", 0]])
            s.widgets.find(w => w.name === name).value = value;
    }})()""")
    extract = editor.evaluate("app.addNode('ExtractPalette', [350, 250]).id")
    render = editor.evaluate("app.addNode('RenderPalette', [650, 250]).id")
    preview = editor.evaluate("app.addNode('PreviewImage', [950, 250]).id")
    editor.evaluate(f"""(() => {{
        const g = app.graph;
        g.getNodeById({solid}).connect(0, g.getNodeById({extract}), 0);
        g.getNodeById({extract}).connect(0, g.getNodeById({render}), 0);
        g.getNodeById({render}).connect(0, g.getNodeById({preview}), 0);
    }})()""")
    assert editor.evaluate(f"app.graph.getNodeById({extract}).widgets.at(-1).value") == []
    editor.click("#queue-button")
    wait_message(editor, "execution_success")
    editor.wait_for_function(f"app.graph.getNodeById({extract}).widgets.at(-1).value.length === 1", timeout=30000)
    # SolidImage with seed 1 is the colour (67, 141, 200)
    assert editor.evaluate(f"app.graph.getNodeById({extract}).widgets.at(-1).value") == ["#438dc8"]
    assert editor.evaluate(f"app.graph.getNodeById({extract}).widgets.at(-1).weights") == [1.0]
