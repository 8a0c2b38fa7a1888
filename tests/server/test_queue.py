"""Queue control over HTTP: order, front, delete, clear, interrupt, per-client routing, /free, history paging."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from engine.server import STATE
from tests.server import nodes
from tests.server.conftest import chain, gated, until_done, wait_for

pytestmark = pytest.mark.asyncio


async def _post(client: TestClient, prompt: dict[str, Any], **body: Any) -> dict[str, Any]:
    resp = await client.post("/prompt", json={"prompt": prompt, **body})
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def _running(client: TestClient, prompt_id: str) -> None:
    async def check() -> bool:
        queue = await (await client.get("/queue")).json()
        return [e[1] for e in queue["queue_running"]] == [prompt_id]
    await wait_for(check)


def _open_gate(client: TestClient) -> None:
    nodes.gate(client.app[STATE].env).set()


async def test_queue_order_front_delete_clear(client: TestClient) -> None:
    blocker = await _post(client, gated("a"), prompt_id="blocker")
    await _running(client, "blocker")
    p1 = await _post(client, chain(1), prompt_id="p1")
    p2 = await _post(client, chain(2), prompt_id="p2")
    p0 = await _post(client, chain(3), prompt_id="p0", front=True)
    p9 = await _post(client, chain(4), prompt_id="p9", number=-100)
    assert (p1["number"], p2["number"], p0["number"], p9["number"]) == (1, 2, -3, -100)
    queue = await (await client.get("/queue")).json()
    assert [e[1] for e in queue["queue_running"]] == [blocker["prompt_id"]]
    assert [e[1] for e in queue["queue_pending"]] == ["p9", "p0", "p1", "p2"]
    tuple_ = queue["queue_pending"][2]
    assert tuple_ == [1, "p1", chain(1), {}, ["3"]]
    assert await (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 5}}

    resp = await client.post("/queue", json={"delete": ["p0", "blocker", "unknown"]})
    assert await resp.json() == {"deleted": ["p0"]}  # the running prompt is not deleted from the queue
    queue = await (await client.get("/queue")).json()
    assert [e[1] for e in queue["queue_pending"]] == ["p9", "p1", "p2"]
    resp = await client.post("/queue", json={"clear": True})
    assert await resp.json() == {"deleted": ["p9", "p1", "p2"]}
    queue = await (await client.get("/queue")).json()
    assert queue["queue_pending"] == [] and len(queue["queue_running"]) == 1
    resp = await client.post("/queue", json={"delete": "p1"})
    assert resp.status == 400 and "'delete' must be a list" in (await resp.json())["error"]["message"]
    _open_gate(client)
    await wait_for(lambda: _empty(client))
    history = await (await client.get("/history")).json()
    assert list(history) == ["blocker"]


async def _empty(client: TestClient) -> bool:
    return (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 0


async def test_interrupt_only_named_prompt(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=me")
    await ws.receive_json()
    await _post(client, gated("i"), prompt_id="g1", client_id="me")
    await _running(client, "g1")
    resp = await client.post("/interrupt", json={"prompt_id": "someone-else"})
    assert await resp.json() == {"interrupted": False}
    assert client.app[STATE].worker.current.prompt_id == "g1"  # type: ignore[union-attr]
    resp = await client.post("/interrupt", json={"prompt_id": "g1"})
    assert await resp.json() == {"interrupted": True}
    messages, _ = await until_done(ws, "g1")
    interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert interrupted["node_id"] == "2" and interrupted["node_type"] == "Gate" and interrupted["executed"] == ["1"]
    history = (await (await client.get("/history/g1")).json())["g1"]
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert history["status"]["messages"][-1][0] == "execution_interrupted"
    # A bare interrupt stops whatever runs; with nothing running it does nothing.
    await _post(client, gated("j"), prompt_id="g2", client_id="me")
    await _running(client, "g2")
    assert await (await client.post("/interrupt")).json() == {"interrupted": True}
    await until_done(ws, "g2")
    assert await (await client.post("/interrupt", json={})).json() == {"interrupted": False}
    await ws.close()


async def test_each_client_sees_only_its_own_progress(client: TestClient) -> None:
    alice = await client.ws_connect("/ws?clientId=alice")
    bob = await client.ws_connect("/ws?clientId=bob")
    watcher = await client.ws_connect("/ws")  # no clientId: the server picks one
    assert (await alice.receive_json())["data"]["sid"] == "alice"
    assert (await bob.receive_json())["data"]["sid"] == "bob"
    sid = (await watcher.receive_json())["data"]["sid"]
    assert len(sid) == 32
    a = await _post(client, chain(10, steps=3, prefix="a"), client_id="alice")
    b = await _post(client, chain(20, steps=3, prefix="b"), client_id="bob")
    shared = await _post(client, chain(30, steps=3, prefix="s"))  # no client_id: everyone sees it
    a_msgs, _ = await until_done(alice, shared["prompt_id"])
    b_msgs, _ = await until_done(bob, shared["prompt_id"])
    w_msgs, _ = await until_done(watcher, shared["prompt_id"])

    def prompts_seen(messages: list[dict[str, Any]]) -> set[str]:
        return {m["data"]["prompt_id"] for m in messages if m["type"] != "status"}

    assert prompts_seen(a_msgs) == {a["prompt_id"], shared["prompt_id"]}
    assert prompts_seen(b_msgs) == {b["prompt_id"], shared["prompt_id"]}
    assert prompts_seen(w_msgs) == {shared["prompt_id"]}
    assert [m["data"]["value"] for m in a_msgs if m["type"] == "progress" and m["data"]["prompt_id"] == a["prompt_id"]] \
        == [1, 2, 3]
    assert any(m["type"] == "status" for m in w_msgs)  # queue changes are broadcast to all
    for ws in (alice, bob, watcher):
        await ws.close()


async def test_free_memory_resets_the_cache(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=f")
    await ws.receive_json()
    first = await _post(client, chain(6), client_id="f")
    await until_done(ws, first["prompt_id"])
    freed: list[tuple[bool, bool]] = []
    client.app[STATE].env.services["free"] = lambda unload_models, free_memory: freed.append(
        (unload_models, free_memory))
    resp = await client.post("/free", json={"unload_models": True, "free_memory": True})
    assert await resp.json() == {"unload_models": True, "free_memory": True}

    async def done() -> bool:
        return freed == [(True, True)]
    await wait_for(done)
    second = await _post(client, chain(6), client_id="f")
    messages, _ = await until_done(ws, second["prompt_id"])
    assert next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached") == []
    await ws.close()


async def test_history_paging_and_deletion(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=h")
    await ws.receive_json()
    ids = []
    for i in range(5):
        ids.append((await _post(client, chain(i), client_id="h", prompt_id=f"h{i}"))["prompt_id"])
    await until_done(ws, ids[-1])
    assert list(await (await client.get("/history")).json()) == ids
    assert list(await (await client.get("/history?max_items=2")).json()) == ["h3", "h4"]
    assert list(await (await client.get("/history?max_items=2&offset=1")).json()) == ["h1", "h2"]
    assert list(await (await client.get("/history?offset=3")).json()) == ["h3", "h4"]
    assert list(await (await client.get("/api/history?max_items=0")).json()) == []
    resp = await client.get("/history?max_items=two")
    assert resp.status == 400 and (await resp.json())["error"]["message"] == "?max_items= must be an integer, got 'two'"
    assert await (await client.get("/history/nope")).json() == {}
    assert await (await client.post("/history", json={"delete": ["h0", "h9"]})).json() == {"deleted": 1}
    assert list(await (await client.get("/history")).json()) == ids[1:]
    assert await (await client.post("/history", json={"clear": True})).json() == {"deleted": 4}
    assert await (await client.get("/history")).json() == {}
    await ws.close()
