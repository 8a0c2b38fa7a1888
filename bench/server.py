"""Server overhead: prompts per second through HTTP and the latency from POST to `execution_start`.

Run: `python -m bench.server [N]`. A real aiohttp server on 127.0.0.1 (in this process, the worker
on its own thread, SQLite queue in a temporary folder) runs N trivial prompts (a constant into an
output node; each prompt's value differs, so nothing is served from the cache):

- throughput: N prompts posted back to back, until the last one's `executing` with node null;
- latency: prompts posted one at a time on an idle queue, POST -> `execution_start` on the websocket
  and POST -> done (median, p95);
- baseline, same run: the same prompts through `Executor.execute` called directly (no HTTP, queue,
  SQLite or websocket), so the ratios are the server's own overhead.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from engine.config import Settings
from engine.executor import Event, Executor
from engine.hookspecs import hookimpl
from engine.node import In, Input, Node, NodeContext, NodeResult, Output
from engine.plugins import PluginHost
from engine.server import create_app
from engine.types import INT

N_DEFAULT = 200
LATENCY_SAMPLES = 50


class BenchConst(Node):
    """An integer constant."""

    outputs = (Output(INT),)
    value: int = Input(0, ge=0, le=10**9)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.value,)


class BenchShow(Node):
    """Output node: shows the value."""

    output_node = True
    value: In[INT]

    def run(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(ui={"text": [str(self.value)]})


class _Plugin:
    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register(BenchConst)
        register(BenchShow)


def prompt(value: int) -> dict[str, Any]:
    """The trivial workflow: a constant into an output node."""
    return {"1": {"class_type": "BenchConst", "inputs": {"value": value}},
            "2": {"class_type": "BenchShow", "inputs": {"value": ["1", 0]}}}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def _host() -> PluginHost:
    return PluginHost(entry_points=False, plugins=[("bench", _Plugin())]).load()


def baseline(n: int, offset: int) -> tuple[float, list[float]]:
    """Executor called directly: (prompts per second, call -> execution_start latencies)."""
    host = _host()
    executor = Executor(host.nodes, host.environment({}), cache="lru:128")
    latencies: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        seen: list[float] = []

        def listener(event: Event) -> None:
            if event.type == "execution_start":
                seen.append(time.perf_counter())
        result = executor.execute(prompt(offset + i), prompt_id=str(i), listener=listener)
        assert result.status == "success", result.error
        latencies.append(seen[0] - t0)
    return n / (time.perf_counter() - start), latencies


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str, prompt_id: str) -> float:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        data = msg.json()
        if data["type"] == kind and data["data"].get("prompt_id") == prompt_id:
            if kind != "executing" or data["data"]["node"] is None:
                return time.perf_counter()
    raise RuntimeError("websocket closed")


async def through_http(n: int, samples: int) -> tuple[float, list[float], list[float]]:
    """(prompts per second back to back, POST -> execution_start, POST -> done) through a real server."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(base_dir=Path(tmp), load_entry_points=False, extra={"serve_web": False})
        runner = web.AppRunner(create_app(settings, _host()), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                client_id = uuid.uuid4().hex
                ws = await session.ws_connect(f"{base}/ws?clientId={client_id}")
                await ws.receive()  # status
                starts: list[float] = []
                totals: list[float] = []
                for i in range(samples):  # idle queue: one prompt at a time
                    pid = f"lat-{i}"
                    t0 = time.perf_counter()
                    resp = await session.post(f"{base}/prompt", json={"prompt": prompt(10**6 + i),
                                                                      "client_id": client_id, "prompt_id": pid})
                    assert resp.status == 200, await resp.text()
                    starts.append(await _until(ws, "execution_start", pid) - t0)
                    totals.append(await _until(ws, "executing", pid) - t0)
                t0 = time.perf_counter()
                last = ""
                for i in range(n):
                    last = f"tp-{i}"
                    resp = await session.post(f"{base}/prompt", json={"prompt": prompt(i), "client_id": client_id,
                                                                      "prompt_id": last})
                    assert resp.status == 200, await resp.text()
                await _until(ws, "executing", last)
                rate = n / (time.perf_counter() - t0)
                await ws.close()
        finally:
            await runner.cleanup()
    return rate, starts, totals


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N_DEFAULT
    samples = min(LATENCY_SAMPLES, n)
    direct_rate, direct_lat = baseline(n, 0)
    http_rate, starts, totals = asyncio.run(through_http(n, samples))
    ms = 1000.0
    print(f"bench.server: {n} trivial prompts (2 nodes each, no cache hits), {samples} latency samples")
    print(f"  baseline  Executor.execute direct : {direct_rate:8.1f} prompts/s; call -> execution_start "
          f"median {statistics.median(direct_lat) * ms:.3f} ms, p95 {_p95(direct_lat) * ms:.3f} ms")
    print(f"  server    POST /prompt back to back: {http_rate:8.1f} prompts/s "
          f"({direct_rate / http_rate:.1f}x the direct cost per prompt)")
    print(f"  server    POST -> execution_start  : median {statistics.median(starts) * ms:.2f} ms, "
          f"p95 {_p95(starts) * ms:.2f} ms")
    print(f"  server    POST -> executing null   : median {statistics.median(totals) * ms:.2f} ms, "
          f"p95 {_p95(totals) * ms:.2f} ms")
    overhead = statistics.median(totals) - 1.0 / direct_rate
    print(f"  HTTP + queue + SQLite + websocket overhead per prompt (idle queue): ~{overhead * ms:.2f} ms")


if __name__ == "__main__":
    main()
