"""A 300-node workflow opens and pans at interactive speed: frame times measured with
requestAnimationFrame while the view pans programmatically (median and p95 printed and saved)."""

from __future__ import annotations

import json
from typing import Any

from tests.web.conftest import ARTIFACTS

NODES = 300


def test_300_nodes_open_and_pan(editor: Any) -> None:
    # 150 SolidImage -> SaveImage pairs, laid out on a grid, built as editor JSON and opened.
    opened_ms = editor.evaluate(
        """async count => {
             app.graph.clear();
             const pairs = count / 2;
             for (let i = 0; i < pairs; i++) {
               const a = app.addNode('SolidImage', [(i % 10) * 700, Math.floor(i / 10) * 320]);
               const b = app.addNode('SaveImage', [(i % 10) * 700 + 330, Math.floor(i / 10) * 320]);
               a.connect(0, b, 0);
             }
             const workflow = app.graph.serialize();
             app.graph.clear();
             const t0 = performance.now();
             await app.tabs.add('big', workflow);
             await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
             return performance.now() - t0;
           }""",
        NODES,
    )
    assert editor.evaluate("app.graph._nodes.length") == NODES
    assert len(editor.evaluate("app.graph.serialize().links")) == NODES // 2
    frames = editor.evaluate(
        """() => new Promise(resolve => {
             const ds = app.canvas.ds;
             ds.scale = 0.6;
             ds.offset = [0, 0];
             const times = [];
             const draws = [];
             const draw = app.canvas.draw;
             app.canvas.draw = function (...args) {
               const t0 = performance.now();
               const r = draw.apply(this, args);
               draws.push(performance.now() - t0);
               return r;
             };
             let last = null;
             let i = 0;
             const step = (t) => {
               if (last !== null) times.push(t - last);
               last = t;
               ds.offset[0] -= 25;
               ds.offset[1] -= 8;
               app.canvas.setDirty(true, true);
               if (++i < 150) requestAnimationFrame(step);
               else { app.canvas.draw = draw; resolve({times, draws}); }
             };
             requestAnimationFrame(step);
           })"""
    )
    draws = sorted(frames["draws"])
    frames = sorted(frames["times"])
    median = frames[len(frames) // 2]
    p95 = frames[int(len(frames) * 0.95)]
    draw_median = draws[len(draws) // 2]
    draw_p95 = draws[int(len(draws) * 0.95)]
    drawn = editor.evaluate("app.canvas.visible_nodes.length")
    report = {"nodes": NODES, "open_ms": round(opened_ms, 1), "frames": len(frames),
              "median_ms": round(median, 2), "p95_ms": round(p95, 2),
              "draw_median_ms": round(draw_median, 2), "draw_p95_ms": round(draw_p95, 2), "visible_nodes_last_frame": drawn}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "frame_times.json").write_text(json.dumps(report, indent=2))
    print(f"\n300-node workflow: {report}")
    assert drawn > 20, "the pan must keep many nodes on screen"
    # Interactive on a shared 2-core machine with software rendering: the canvas draws a frame in
    # under 50 ms (median), and frames keep coming at 10 fps or better (median).
    assert draw_median < 50 and median < 100, report
    assert opened_ms < 5000, report
