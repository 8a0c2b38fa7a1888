"""Editing: bypass and mute, undo and redo, copy and paste (with links), groups, reroutes, a widget
turned into an input and back, and the API prompt the browser sends."""

from __future__ import annotations

from typing import Any

from tests.web.helpers import until, add_node_via_search, clear_graph, connect, links, select_only, widget_xy


def _prompt(editor: Any) -> dict[str, Any]:
    return editor.evaluate("app.graphToPrompt()")


def test_modes_undo_redo_copy_paste_group(editor: Any) -> None:
    clear_graph(editor)
    solid = add_node_via_search(editor, "solid image", 200, 250)
    save = add_node_via_search(editor, "save image", 700, 250)
    connect(editor, solid, 0, save, "images")
    assert set(_prompt(editor)) == {str(solid), str(save)}

    # A widget edited with the mouse (right arrow) is an undo step.
    width = editor.evaluate(f"app.graph.getNodeById({solid}).widgets.find(w => w.name === 'width').value")
    editor.mouse.click(*widget_xy(editor, solid, "width", 0.97))
    assert editor.evaluate(f"app.graph.getNodeById({solid}).widgets.find(w => w.name === 'width').value") == width + 8
    editor.keyboard.press("Control+z")
    until(editor, f"app.graph.getNodeById({solid}).widgets.find(w => w.name === 'width').value === {width}")
    editor.keyboard.press("Control+y")
    until(editor, f"app.graph.getNodeById({solid}).widgets.find(w => w.name === 'width').value === {width + 8}")

    select_only(editor, solid)
    editor.keyboard.press("Control+b")
    assert editor.evaluate(f"app.graph.getNodeById({solid}).mode") == 4
    assert str(solid) not in _prompt(editor)
    editor.keyboard.press("Control+m")
    assert editor.evaluate(f"app.graph.getNodeById({solid}).mode") == 2
    editor.keyboard.press("Control+z")
    until(editor, f"app.graph.getNodeById({solid}).mode === 4")
    editor.keyboard.press("Control+z")
    until(editor, f"app.graph.getNodeById({solid}).mode === 0")
    editor.keyboard.press("Control+y")
    until(editor, f"app.graph.getNodeById({solid}).mode === 4")
    editor.keyboard.press("Control+b")
    assert editor.evaluate(f"app.graph.getNodeById({solid}).mode") == 0

    # Undo a deletion and redo it; the link comes back with the node.
    select_only(editor, save)
    editor.keyboard.press("Delete")
    assert editor.evaluate("app.graph._nodes.length") == 1 and links(editor) == []
    editor.keyboard.press("Control+z")
    until(editor, "app.graph._nodes.length === 2")
    assert len(links(editor)) == 1
    editor.keyboard.press("Control+y")
    until(editor, "app.graph._nodes.length === 1")
    editor.keyboard.press("Control+z")
    until(editor, "app.graph._nodes.length === 2")

    # Copy and paste; Ctrl+Shift+V keeps the pasted node's input links.
    select_only(editor, save)
    editor.keyboard.press("Control+c")
    editor.mouse.move(700, 600)
    editor.keyboard.press("Control+v")
    until(editor, "app.graph._nodes.length === 3")
    assert len(links(editor)) == 1
    editor.mouse.move(900, 600)
    editor.keyboard.press("Control+Shift+v")
    until(editor, "app.graph._nodes.length === 4")
    assert len(links(editor)) == 2 and all(link[1] == solid for link in links(editor))
    editor.keyboard.press("Control+z")
    until(editor, "app.graph._nodes.length === 3")

    # Group the selection with Ctrl+G; it is saved in the workflow.
    select_only(editor, solid)
    editor.keyboard.press("Control+g")
    groups = editor.evaluate("app.graph.serialize().groups")
    assert len(groups) == 1 and groups[0]["title"] == "Group"


def test_reroute_and_widget_to_input(editor: Any) -> None:
    clear_graph(editor)
    solid = add_node_via_search(editor, "solid image", 200, 200)
    save = add_node_via_search(editor, "save image", 900, 200)
    reroute = add_node_via_search(editor, "reroute", 600, 450)
    connect(editor, solid, 0, reroute, "")
    connect(editor, reroute, 0, save, "images")
    assert editor.evaluate(f"app.graph.getNodeById({reroute}).outputs[0].type") == "IMAGE"
    prompt = _prompt(editor)
    assert str(reroute) not in prompt and prompt[str(save)]["inputs"]["images"] == [str(solid), 0]

    # Drop an Int node's output on the width widget: the widget becomes an input; unlink: a widget.
    number = add_node_via_search(editor, "int", 200, 600)
    editor.evaluate(f"app.graph.getNodeById({number}).widgets[0].value = 96")
    connect(editor, number, 0, solid, "width")
    assert _prompt(editor)[str(solid)]["inputs"]["width"] == [str(number), 0]
    # The widget is drawn disabled (its value comes from the link).
    assert editor.evaluate(f"app.canvas.draw(true, true) ?? app.graph.getNodeById({solid}).widgets.find(w => w.name === 'width').computedDisabled") is True
    editor.evaluate(f"""() => {{ const n = app.graph.getNodeById({solid});
        n.disconnectInput(n.inputs.findIndex(s => s.name === 'width')); app.tracker.checkState(); }}""")
    assert _prompt(editor)[str(solid)]["inputs"]["width"] == editor.evaluate(
        f"app.graph.getNodeById({solid}).widgets.find(w => w.name === 'width').value")
    editor.keyboard.press("Control+z")
    until(editor, f"app.graph.getNodeById({solid}).inputs.find(s => s.name === 'width').link != null")
