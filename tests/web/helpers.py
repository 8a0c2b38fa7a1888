"""Small helpers the browser tests share: real mouse and keyboard input on the editor's canvas."""

from __future__ import annotations

import time
from typing import Any


def until(page: Any, predicate: str, arg: Any = None, timeout: float = 30.0) -> Any:
    """Evaluate `predicate` (a JS function of `arg`, or an expression) until it is truthy.

    Polled from here (not page.wait_for_function, whose rAF polling stalls with the page's frames).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(predicate, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout:.0f} s: {predicate} (arg {arg!r})")
        time.sleep(0.05)


def add_node_via_search(page: Any, query: str, x: float, y: float, pick: str | None = None) -> int:
    """Double-click the canvas at (x, y), type `query` in the search dialog, take the first hit
    (or the hit for node type `pick`)."""
    before = page.evaluate("app.graph._nodes.map(n => n.id)")
    page.mouse.dblclick(x, y)
    page.wait_for_selector(".lg-search input")
    page.keyboard.type(query)
    if pick:
        page.click(f".lg-search li[data-type='{pick}']")
    else:
        until(page, "() => document.querySelector('.lg-search li') !== null")
        page.keyboard.press("Enter")
    page.wait_for_selector(".lg-search", state="detached")
    ids = [i for i in page.evaluate("app.graph._nodes.map(n => n.id)") if i not in before]
    assert len(ids) == 1, f"search for {query!r} added {ids}"
    return ids[0]


def slot_xy(page: Any, node_id: int, is_input: bool, slot: int) -> tuple[float, float]:
    """Page coordinates of a node's socket."""
    x, y = page.evaluate(
        """([id, isInput, slot]) => {
             const n = app.graph.getNodeById(id);
             const p = n.getConnectionPos(isInput, slot);
             const c = app.canvas.ds.convertOffsetToCanvas(p);
             const r = app.canvasEl.getBoundingClientRect();
             return [r.left + c[0], r.top + c[1]];
           }""",
        [node_id, is_input, slot],
    )
    return x, y


def input_index(page: Any, node_id: int, name: str) -> int:
    return page.evaluate("([id, name]) => app.graph.getNodeById(id).inputs.findIndex(s => s.name === name)", [node_id, name])


def widget_xy(page: Any, node_id: int, name: str, dx: float = 0.5) -> tuple[float, float]:
    """Page coordinates inside a widget's row (dx: fraction of the node's width)."""
    x, y = page.evaluate(
        """([id, name, dx]) => {
             const n = app.graph.getNodeById(id);
             const w = n.widgets.find(w => w.name === name);
             const c = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] * dx, n.pos[1] + w.y + 10]);
             const r = app.canvasEl.getBoundingClientRect();
             return [r.left + c[0], r.top + c[1]];
           }""",
        [node_id, name, dx],
    )
    return x, y


def drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(end[0], end[1], steps=8)
    page.mouse.up()


def connect(page: Any, src: int, src_slot: int, dst: int, dst_input: str) -> None:
    """Drag a link from an output socket to an input (or onto a widget's socket) with the mouse."""
    index = input_index(page, dst, dst_input)
    assert index >= 0, f"node {dst} has no input {dst_input}"
    widget = page.evaluate("([id, name]) => !!app.graph.getNodeById(id).widgets?.find(w => w.name === name)", [dst, dst_input])
    end = widget_xy(page, dst, dst_input, 0.3) if widget else slot_xy(page, dst, True, index)
    drag(page, slot_xy(page, src, False, src_slot), end)


def links(page: Any) -> list[list[Any]]:
    return page.evaluate("app.graph.serialize().links")


_last_click = [0.0]


def select_only(page: Any, node_id: int) -> None:
    """Click a node's title to select it (and only it).

    Two clicks on one spot in quick succession are a double-click to the canvas (which does not
    select), as they would be for a user: keep them apart.
    """
    time.sleep(max(0.0, _last_click[0] + 0.6 - time.monotonic()))
    x, y = page.evaluate(
        """id => { const n = app.graph.getNodeById(id);
             const c = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + 40, n.pos[1] - 15]);
             const r = app.canvasEl.getBoundingClientRect(); return [r.left + c[0], r.top + c[1]]; }""",
        node_id,
    )
    page.mouse.click(x, y)
    _last_click[0] = time.monotonic()
    # The library may settle a click after the pointer is up (double-click detection): wait for it.
    until(page, "id => Object.keys(app.canvas.selected_nodes).map(Number).join() === String(id)", node_id)


def clear_graph(page: Any) -> None:
    page.evaluate("app.graph.clear(); app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1; app.redraw(); app.tracker.reset()")


def wait_message(page: Any, type_: str, prompt_id: str | None = None, timeout: float = 30000) -> dict[str, Any]:
    until(page, "([t, p]) => app.api.messages.some(m => m.type === t && (!p || m.data?.prompt_id === p))",
          [type_, prompt_id], timeout / 1000)
    return page.evaluate(
        "([t, p]) => app.api.messages.filter(m => m.type === t && (!p || m.data?.prompt_id === p)).at(-1)", [type_, prompt_id]
    )
