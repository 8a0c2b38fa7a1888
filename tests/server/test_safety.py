"""Safety: loopback unless a token is set, token checks, Host and Origin checks, JSON errors, static files."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient
from yarl import URL

from engine.server import ServerConfigError, create_app
from tests.server.conftest import MakeClient, chain, make_host, make_settings

pytestmark = pytest.mark.asyncio


async def test_listening_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.listen = "0.0.0.0"
    with pytest.raises(ServerConfigError, match=r"refusing to listen on 0.0.0.0 without a token.*--token"):
        create_app(settings, make_host())
    for loopback in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        settings.listen = loopback
        create_app(settings, make_host())
    settings.listen, settings.token = "0.0.0.0", "s3cret"
    create_app(settings, make_host())


async def test_token_is_required_when_set(make_client: MakeClient, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.token = "s3cret"
    client = await make_client(settings)
    resp = await client.get("/queue")
    assert resp.status == 401
    assert (await resp.json())["error"]["message"] == ("this server needs its token: send 'Authorization: Bearer "
                                                       "<token>' or add ?token=<token> to the URL")
    assert (await client.get("/queue", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/queue", headers={"Authorization": "Bearer s3cret"})).status == 200
    by_query = await client.get("/queue?token=s3cret")
    assert by_query.status == 200 and by_query.cookies["latentgraph_token"].value == "s3cret"
    assert (await client.get("/queue")).status == 200  # the cookie set by ?token= is sent back
    client.session.cookie_jar.clear()
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect("/ws")
    assert refused.value.status == 401
    ws = await client.ws_connect("/ws?token=s3cret")
    assert (await ws.receive_json())["type"] == "status"
    await ws.close()


async def test_foreign_origin_is_refused(client: TestClient) -> None:
    body = {"prompt": chain(1)}
    evil = await client.post("/prompt", json=body, headers={"Origin": "http://evil.example"})
    assert evil.status == 403
    assert (await evil.json())["error"] == {
        "type": "forbidden_origin", "details": "", "extra_info": {},
        "message": "requests from the page at 'http://evil.example' are refused: only this server's own pages "
                   "(or localhost) may change its state"}
    assert (await client.post("/queue", json={"clear": True}, headers={"Origin": "null"})).status == 403
    assert (await client.post("/interrupt", headers={"Origin": "https://127.0.0.1.evil.example"})).status == 403
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
    assert refused.value.status == 403
    same = f"http://{client.host}:{client.port}"
    assert (await client.post("/prompt", json=body, headers={"Origin": same})).status == 200
    assert (await client.post("/prompt", json=body, headers={"Origin": "http://localhost:5173"})).status == 200
    assert (await client.post("/prompt", json=body)).status == 200  # scripts send no Origin
    assert (await client.get("/queue", headers={"Origin": "http://evil.example"})).status == 200  # reads: CORS


async def test_dns_rebinding_host_is_refused(client: TestClient) -> None:
    resp = await client.get("/history", headers={"Host": "attacker.example:8188"})
    assert resp.status == 403
    assert (await resp.json())["error"]["type"] == "forbidden_host"
    assert (await client.get("/history", headers={"Host": "localhost:8188"})).status == 200
    assert (await client.get("/history", headers={"Host": "[::1]:8188"})).status == 200


async def test_errors_are_json(client: TestClient) -> None:
    resp = await client.get("/no/such/route")
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "not_found"
    resp = await client.delete("/prompt")
    assert resp.status == 405 and (await resp.json())["error"]["message"] == "DELETE is not allowed on /prompt"
    resp = await client.post("/queue", data=b"{bad", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_json"


async def test_editor_files_are_served(make_client: MakeClient, tmp_path: Path) -> None:
    web = tmp_path / "web"
    dist = web / "node_modules" / "@comfyorg" / "litegraph" / "dist"
    dist.mkdir(parents=True)
    (dist / "litegraph.es.js").write_text("export const LiteGraph = {};")
    (web / "index.html").write_text("<!doctype html><title>latentgraph</title>")
    (web / "app.js").write_text("console.log('hi')")
    settings = make_settings(tmp_path, serve_web=True, web_dir=str(web))
    client = await make_client(settings)
    index = await client.get("/")
    assert index.status == 200 and "latentgraph" in await index.text()
    assert await (await client.get("/app.js")).text() == "console.log('hi')"
    assert await (await client.get("/vendor/litegraph/litegraph.es.js")).text() == "export const LiteGraph = {};"
    assert (await client.get("/queue")).status == 200  # API routes win over the static folder
    (tmp_path / "secret.txt").write_text("top-secret-content")
    for path in ("/vendor/litegraph/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt", "/..%2Fsecret.txt",
                 "/vendor/litegraph/..%2F..%2F..%2F..%2Fsecret.txt"):
        resp = await client.get(URL(path, encoded=True))
        assert resp.status in (403, 404) and "top-secret-content" not in await resp.text(), path


async def test_missing_node_modules_fails_at_start(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    settings = make_settings(tmp_path, serve_web=True, web_dir=str(web))
    with pytest.raises(ServerConfigError, match=r"run `make setup` \(npm ci in web/\)"):
        create_app(settings, make_host())
