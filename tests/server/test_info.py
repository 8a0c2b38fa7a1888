"""Information routes, plugin extensions and routes, and type-4 preview frames with metadata."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from engine.hookspecs import hookimpl
from engine.plugins import PluginHost
from engine.server.hub import preview_frame
from tests.server import nodes
from tests.server.conftest import MakeClient, chain, make_settings, until_done

pytestmark = pytest.mark.asyncio


class HelloPlugin:
    """A plugin with a web extension folder and one route."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def register_web_extensions(self, register: Any) -> None:
        register(self.folder)

    @hookimpl
    def register_routes(self, register: Any) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"hello": request.query.get("name", "world")})
        register(web.get("/hello", hello))


async def test_object_info_and_schema(client: TestClient) -> None:
    info = await (await client.get("/object_info")).json()
    assert sorted(info) == ["Boom", "Gate", "Number", "SaveNumber", "Sleep"]
    sleep = info["Sleep"]
    assert sleep["input"]["required"]["value"] == ["INT"]
    assert sleep["input"]["required"]["seconds"][0] == "FLOAT"
    assert sleep["output"] == ["INT"] and sleep["python_module"] == "tests.server.nodes"
    one = await (await client.get("/api/object_info/Sleep")).json()
    assert one == {"Sleep": sleep}
    assert await (await client.get("/object_info/Nope")).json() == {}
    schema = await (await client.get("/api/schema")).json()
    assert schema["Number"]["x-node"]["type"] == "Number"
    assert schema["Number"]["properties"]["value"]["x-socket"] == "INT"
    plugins = await (await client.get("/api/plugins")).json()
    assert [(p["name"], p["status"], sorted(p["nodes"])) for p in plugins] == [
        ("tests.server.nodes", "ok", ["Boom", "Gate", "Number", "SaveNumber", "Sleep"])]


async def test_system_stats_features_models(client: TestClient, settings: Any) -> None:
    stats = await (await client.get("/system_stats")).json()
    assert set(stats) == {"system", "devices"}
    system = stats["system"]
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version",
            "embedded_python", "argv"} <= set(system)
    assert system["ram_total"] > system["ram_free"] > 0 and system["embedded_python"] is False
    assert stats["devices"][0]["type"] in ("cpu", "cuda")
    assert {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"} \
        <= set(stats["devices"][0])
    features = await (await client.get("/features")).json()
    assert features == {"supports_preview_metadata": True, "max_upload_size": 64 << 20}
    models_dir = Path(settings.models_dir)
    (models_dir / "checkpoints" / "sdxl").mkdir(parents=True)
    (models_dir / "checkpoints" / "sdxl" / "base.safetensors").write_bytes(b"x")
    (models_dir / "checkpoints" / "a.ckpt").write_bytes(b"x")
    (models_dir / "checkpoints" / "notes.txt").write_text("not a model")
    (models_dir / "embeddings").mkdir()
    (models_dir / "embeddings" / "bad_hands.pt").write_bytes(b"x")
    (models_dir / "mine").mkdir()
    folders = await (await client.get("/models")).json()
    assert folders[:2] == ["checkpoints", "configs"] and folders[-1] == "mine"
    assert await (await client.get("/models/checkpoints")).json() == ["a.ckpt", "sdxl/base.safetensors"]
    assert await (await client.get("/api/models/loras")).json() == []
    missing = await client.get("/models/nothing")
    assert missing.status == 404 and "GET /models lists the folders" in (await missing.json())["error"]["message"]
    assert (await client.get(URL("/models/%2e%2e", encoded=True))).status == 400
    assert (await client.get(URL("/models/.hidden", encoded=True))).status == 400
    assert await (await client.get("/embeddings")).json() == ["bad_hands"]


async def test_plugin_extensions_and_routes(make_client: MakeClient, tmp_path: Path) -> None:
    ext = tmp_path / "ext"
    (ext / "lib").mkdir(parents=True)
    (ext / "main.js").write_text("export default 1;")
    (ext / "lib" / "util.js").write_text("export const u = 2;")
    (ext / "style.css").write_text("body {}")
    host = PluginHost(entry_points=False, plugins=[nodes, ("hello", HelloPlugin(ext))]).load()
    client = await make_client(make_settings(tmp_path / "base"), host)
    urls = await (await client.get("/extensions")).json()
    assert urls == ["/extensions/hello/lib/util.js", "/extensions/hello/main.js"]
    assert await (await client.get("/extensions/hello/main.js")).text() == "export default 1;"
    assert await (await client.get("/api/ext/hello/hello?name=you")).json() == {"hello": "you"}


async def test_preview_frames_with_metadata_after_feature_flags(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=meta")
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    assert (await ws.receive_json())["type"] == "status"
    assert await ws.receive_json() == {"type": "feature_flags", "data": {"supports_preview_metadata": True,
                                                                         "max_upload_size": 64 << 20}}
    resp = await client.post("/prompt", json={"prompt": chain(2, steps=1, preview=True), "client_id": "meta"})
    pid = (await resp.json())["prompt_id"]
    _, frames = await until_done(ws, pid)
    assert len(frames) == 1
    kind, length = struct.unpack(">II", frames[0][:8])
    meta = json.loads(frames[0][8:8 + length])
    assert kind == 4 and meta == {"node_id": "2", "prompt_id": pid, "display_node_id": "2", "parent_node_id": None,
                                  "real_node_id": "2", "image_type": "image/jpeg"}
    assert frames[0][8 + length:8 + length + 2] == b"\xff\xd8"
    await ws.close()


async def test_preview_frame_layouts() -> None:
    assert preview_frame(b"IMG", 2, None) == struct.pack(">II", 1, 2) + b"IMG"
    framed = preview_frame(b"IMG", 1, {"node_id": "5"})
    assert framed == struct.pack(">II", 4, 15) + b'{"node_id":"5"}' + b"IMG"
