"""The ComfyUI client flow end to end: websocket, /prompt, /history, /view, caching, errors."""

from __future__ import annotations

import struct
import uuid

import pytest
from aiohttp.test_utils import TestClient

from tests.server.conftest import chain, until_done

pytestmark = pytest.mark.asyncio


async def test_websockets_api_example_flow(client: TestClient) -> None:
    """What ComfyUI's script_examples/websockets_api_example.py does, step by step."""
    client_id = str(uuid.uuid4())
    ws = await client.ws_connect(f"/ws?clientId={client_id}")
    first = await ws.receive_json()
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}
    prompt_id = str(uuid.uuid4())
    resp = await client.post("/prompt", json={"prompt": chain(5, steps=2, preview=True), "client_id": client_id,
                                              "prompt_id": prompt_id})
    assert resp.status == 200
    body = await resp.json()
    assert body == {"prompt_id": prompt_id, "number": 0, "node_errors": {}}
    messages, frames = await until_done(ws, prompt_id)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "status" and kinds.count("execution_start") == 1
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == ["1", "2", "3", None]
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert progress == [{"value": 1, "max": 2, "prompt_id": prompt_id, "node": "2"},
                        {"value": 2, "max": 2, "prompt_id": prompt_id, "node": "2"}]
    assert kinds.index("execution_success") < len(kinds) - 1
    # Two previews as type-1 frames: 4-byte type, 4-byte format (1 = JPEG), then the image (out[8:]).
    assert len(frames) == 2
    assert all(struct.unpack(">II", f[:8]) == (1, 1) and f[8:10] == b"\xff\xd8" for f in frames)
    executed = next(m["data"] for m in messages if m["type"] == "executed")
    image = executed["output"]["images"][0]

    resp = await client.get(f"/history/{prompt_id}")
    history = (await resp.json())[prompt_id]
    assert history["outputs"] == {"3": {"images": [image]}}
    assert history["prompt"][:2] == [0, prompt_id] and history["prompt"][4] == ["3"]
    assert history["prompt"][3] == {"client_id": client_id}
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached",
                                                             "execution_success"]
    assert history["meta"] == {"3": {"node_id": "3", "display_node": "3", "parent_node": None, "real_node_id": "3"}}
    for output in history["outputs"].values():
        for img in output["images"]:
            resp = await client.get("/view", params={"filename": img["filename"], "subfolder": img["subfolder"],
                                                     "type": img["type"]})
            assert resp.status == 200
            data = await resp.read()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    await ws.close()


async def test_identical_prompt_is_fully_cached(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=c1")
    await ws.receive_json()
    first = await (await client.post("/prompt", json={"prompt": chain(9), "client_id": "c1"})).json()
    await until_done(ws, first["prompt_id"])
    second = await (await client.post("/prompt", json={"prompt": chain(9), "client_id": "c1"})).json()
    assert second["number"] == first["number"] + 1
    messages, _ = await until_done(ws, second["prompt_id"])
    cached = next(m["data"] for m in messages if m["type"] == "execution_cached")
    assert cached["nodes"] == ["1", "2", "3"] and cached["prompt_id"] == second["prompt_id"]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == [None]
    history = (await (await client.get(f"/history/{second['prompt_id']}")).json())[second["prompt_id"]]
    first_history = (await (await client.get(f"/history/{first['prompt_id']}")).json())[first["prompt_id"]]
    assert history["outputs"] == first_history["outputs"]  # the cached UI output is reported again
    await ws.close()


async def test_invalid_prompt_gets_comfyui_400(client: TestClient) -> None:
    bad = chain(3)
    bad["1"]["inputs"]["value"] = "many"
    resp = await client.post("/prompt", json={"prompt": bad})
    assert resp.status == 400
    body = await resp.json()
    assert set(body) == {"error", "node_errors"}
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    node = body["node_errors"]["1"]
    assert node["class_type"] == "Number" and node["dependent_outputs"] == ["3"]
    assert node["errors"][0]["type"] == "invalid_input_type"
    assert node["errors"][0]["extra_info"]["input_name"] == "value"
    assert (await (await client.get("/queue")).json()) == {"queue_running": [], "queue_pending": []}


async def test_prompt_request_errors(client: TestClient) -> None:
    resp = await client.post("/prompt", json={"client_id": "x"})
    assert resp.status == 400
    assert await resp.json() == {"error": {"type": "no_prompt", "message": "No prompt provided",
                                           "details": "the request body needs 'prompt': the API-format (or "
                                                      "editor) workflow", "extra_info": {}}, "node_errors": {}}
    resp = await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["type"] == "invalid_prompt"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "missing_node_type"
    resp = await client.post("/prompt", data=b'{"prompt": ', headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["type"] == "invalid_json"
    assert "line 1 column 12" in body["error"]["message"]
    resp = await client.post("/prompt", json=[1, 2])
    assert resp.status == 400 and (await resp.json())["error"]["message"].endswith("expected a JSON object, got list")
    resp = await client.post("/prompt", json={"prompt": chain(), "partial_execution_targets": "3"})
    assert resp.status == 400 and "partial_execution_targets" in (await resp.json())["error"]["message"]


async def test_duplicate_pending_prompt_id_refused(make_client) -> None:  # type: ignore[no-untyped-def]
    from tests.server.conftest import make_settings

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        client = await make_client(make_settings(Path(tmp), worker=False))
        ok = await client.post("/prompt", json={"prompt": chain(), "prompt_id": "same"})
        assert ok.status == 200
        again = await client.post("/prompt", json={"prompt": chain(), "prompt_id": "same"})
        assert again.status == 400
        assert (await again.json())["error"]["type"] == "duplicate_prompt_id"


async def test_failed_prompt_records_error_and_server_goes_on(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=err")
    await ws.receive_json()
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Boom", "inputs": {"value": ["1", 0], "message": "kaputt"}},
              "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0]}}}
    pid = (await (await client.post("/prompt", json={"prompt": prompt, "client_id": "err"})).json())["prompt_id"]
    messages, _ = await until_done(ws, pid)
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert error["node_id"] == "2" and error["node_type"] == "Boom"
    assert error["exception_type"] == "ValueError" and error["exception_message"] == "kaputt"
    assert error["executed"] == ["1"]
    history = (await (await client.get(f"/history/{pid}")).json())[pid]
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert history["status"]["messages"][-1][0] == "execution_error"
    # The next prompt runs normally.
    pid2 = (await (await client.post("/prompt", json={"prompt": chain(1), "client_id": "err"})).json())["prompt_id"]
    messages, _ = await until_done(ws, pid2)
    assert any(m["type"] == "execution_success" for m in messages)
    await ws.close()


async def test_editor_format_prompt_is_converted(client: TestClient) -> None:
    editor = {
        "last_node_id": 3, "last_link_id": 2, "version": 0.4,
        "nodes": [
            {"id": 1, "type": "Number", "mode": 0, "inputs": [], "widgets_values": [4],
             "outputs": [{"name": "INT", "type": "INT", "links": [1]}]},
            {"id": 2, "type": "SaveNumber", "mode": 0, "inputs": [{"name": "value", "type": "INT", "link": 1}],
             "widgets_values": ["ed"], "outputs": []},
        ],
        "links": [[1, 1, 0, 2, 0, "INT"]],
    }
    ws = await client.ws_connect("/ws?clientId=ed")
    await ws.receive_json()
    resp = await client.post("/prompt", json={"prompt": editor, "client_id": "ed"})
    assert resp.status == 200, await resp.text()
    pid = (await resp.json())["prompt_id"]
    await until_done(ws, pid)
    await ws.close()
    entry = (await (await client.get(f"/history/{pid}")).json())[pid]
    stored = entry["prompt"][2]
    assert (stored["2"]["class_type"], stored["2"]["inputs"]) == ("SaveNumber", {"value": ["1", 0], "prefix": "ed"})
    assert entry["prompt"][3]["extra_pnginfo"]["workflow"] == editor  # SaveImage embeds the editor graph
    assert entry["status"]["status_str"] == "success"
    converted = await client.post("/api/workflow/convert", json=editor)
    assert converted.status == 200
    body = await converted.json()
    assert body["prompt"]["1"]["inputs"] == {"value": 4} and body["workflow"] == editor
    bad = await client.post("/api/workflow/convert", json={"nodes": [{"id": 1, "type": "Nope"}], "links": []})
    assert bad.status == 400 and (await bad.json())["error"]["type"] == "invalid_workflow"


async def test_partial_execution_targets_and_private_extra_data(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=t")
    await ws.receive_json()
    prompt = chain(4)
    prompt["4"] = {"class_type": "SaveNumber", "inputs": {"value": ["1", 0], "prefix": "other"}}
    resp = await client.post("/prompt", json={"prompt": prompt, "client_id": "t", "partial_execution_targets": ["4"],
                                              "extra_data": {"api_key_comfy_org": "secret", "note": "kept"}})
    pid = (await resp.json())["prompt_id"]
    messages, _ = await until_done(ws, pid)
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == ["1", "4", None]
    entry = (await (await client.get(f"/history/{pid}")).json())[pid]
    assert entry["prompt"][3] == {"note": "kept", "client_id": "t"} and entry["prompt"][4] == ["4"]
    assert list(entry["outputs"]) == ["4"]
    assert "secret" not in await (await client.get("/history")).text()
    await ws.close()
