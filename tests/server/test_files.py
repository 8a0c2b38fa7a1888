"""File routes: /view (with previews and channels), uploads (limits, duplicates, masks), traversal refused."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from PIL import Image
from yarl import URL

from engine.config import Settings
from tests.server.conftest import MakeClient, make_settings

pytestmark = pytest.mark.asyncio


def _png(size: tuple[int, int] = (8, 8), color: Any = (10, 20, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _form(data: bytes, filename: str = "a.png", **fields: str) -> FormData:
    form = FormData()
    form.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


async def _upload(client: TestClient, data: bytes, filename: str = "a.png", **fields: str) -> tuple[int, Any]:
    resp = await client.post("/upload/image", data=_form(data, filename, **fields))
    return resp.status, await resp.json()


async def test_view_serves_and_transforms(client: TestClient, settings: Settings) -> None:
    assert settings.output_dir is not None
    (settings.output_dir / "sub").mkdir(parents=True)
    Image.new("RGBA", (4, 4), (200, 100, 50, 77)).save(settings.output_dir / "sub" / "x.png")
    raw = await client.get("/view", params={"filename": "x.png", "subfolder": "sub", "type": "output"})
    assert raw.status == 200 and raw.headers["Content-Disposition"] == 'filename="x.png"'
    assert await raw.read() == (settings.output_dir / "sub" / "x.png").read_bytes()
    webp = await client.get("/view", params={"filename": "x.png", "subfolder": "sub", "preview": "webp;50"})
    assert webp.content_type == "image/webp" and Image.open(io.BytesIO(await webp.read())).format == "WEBP"
    jpeg = await client.get("/api/view", params={"filename": "x.png", "subfolder": "sub", "preview": "jpeg;80",
                                                 "channel": "rgb"})
    assert jpeg.content_type == "image/jpeg"
    alpha = await client.get("/view", params={"filename": "x.png", "subfolder": "sub", "channel": "a"})
    img = Image.open(io.BytesIO(await alpha.read()))
    assert img.mode == "RGBA" and img.getpixel((0, 0)) == (0, 0, 0, 77)
    rgb = await client.get("/view", params={"filename": "x.png", "subfolder": "sub", "channel": "rgb"})
    assert Image.open(io.BytesIO(await rgb.read())).mode == "RGB"
    annotated = await client.get("/view", params={"filename": "x.png [output]", "subfolder": "sub"})
    assert annotated.status == 200
    missing = await client.get("/view", params={"filename": "nope.png"})
    assert missing.status == 404
    assert (await missing.json())["error"]["message"] == "no file 'nope.png' in output; check filename, subfolder and type"
    bad_channel = await client.get("/view", params={"filename": "x.png", "subfolder": "sub", "channel": "q"})
    assert bad_channel.status == 400


async def test_view_refuses_every_traversal(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    assert settings.output_dir is not None
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s.png").write_bytes(_png())
    os.symlink(outside, settings.output_dir / "link")
    os.symlink(secret, settings.output_dir / "file-link.png")
    attempts = {
        "/view?filename=../secret.txt": (400, "contains '..'"),
        "/view?filename=..%2Fsecret.txt": (400, "contains '..'"),
        "/view?filename=..%252Fsecret.txt": (400, "percent-encoded"),
        "/view?filename=secret.txt&subfolder=..": (400, "contains '..'"),
        "/view?filename=secret.txt&subfolder=a/../..": (400, "contains '..'"),
        "/view?filename=/etc/passwd": (400, "is absolute"),
        "/view?filename=secret.txt&subfolder=/tmp": (400, "is absolute"),
        "/view?filename=..%5Csecret.txt": (400, "backslash"),
        "/view?filename=x.png%00.txt": (400, "NUL byte"),
        "/view?filename=secret.txt&type=..": (400, "is not a file folder"),
        "/view?filename=s.png&subfolder=link": (403, "resolves outside the output folder"),
        "/view?filename=file-link.png": (403, "resolves outside the output folder"),
        "/view?filename=C:/Windows/win.ini": (400, "is absolute"),
    }
    for url, (status, text) in attempts.items():
        resp = await client.get(URL(url, encoded=True))
        body = await resp.json()
        assert (resp.status, text in body["error"]["message"]) == (status, True), (url, body)


async def test_upload_names_duplicates_and_collisions(client: TestClient, settings: Settings) -> None:
    assert settings.input_dir is not None
    first, other, third = _png(color=(1, 1, 1)), _png(color=(2, 2, 2)), _png(color=(3, 3, 3))
    assert await _upload(client, first) == (200, {"name": "a.png", "subfolder": "", "type": "input"})
    assert await _upload(client, first) == (200, {"name": "a.png", "subfolder": "", "type": "input"})
    assert (await _upload(client, other))[1]["name"] == "a (1).png"
    assert (await _upload(client, third))[1]["name"] == "a (2).png"
    assert (await _upload(client, other))[1]["name"] == "a (1).png"  # same content as a (1).png
    assert sorted(p.name for p in settings.input_dir.iterdir()) == ["a (1).png", "a (2).png", "a.png"]
    assert (await _upload(client, third, overwrite="true"))[1]["name"] == "a.png"
    assert (settings.input_dir / "a.png").read_bytes() == third
    status, body = await _upload(client, first, "../../evil.png", subfolder="masks", type="output")
    assert (status, body) == (200, {"name": "evil.png", "subfolder": "masks", "type": "output"}), body
    assert settings.output_dir is not None and (settings.output_dir / "masks" / "evil.png").is_file()
    status, body = await _upload(client, first, subfolder="../up")
    assert status == 400 and "contains '..'" in body["error"]["message"]
    status, body = await _upload(client, first, type="models")
    assert status == 400 and body["error"]["type"] == "invalid_type"


async def test_upload_limits(make_client: MakeClient, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_upload_pixels=1_000_000)
    settings.max_upload_mb = 1
    client = await make_client(settings)
    status, body = await _upload(client, b"GIF89a not really an image")
    assert status == 400 and body["error"]["type"] == "not_an_image"
    assert body["error"]["message"].startswith("'a.png' is not a readable image")
    large = io.BytesIO()
    Image.new("1", (1_000, 1_001)).save(large, format="PNG")
    status, body = await _upload(client, large.getvalue(), "large.png")
    assert status == 413 and body["error"]["message"] == ("'large.png' is 1000x1001 = 1,001,000 pixels, over "
                                                          "the limit of 1,000,000; resize it before uploading")
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # over Pillow's own bomb threshold too
    status, body = await _upload(client, bomb.getvalue(), "bomb.png")
    assert status == 413 and body["error"]["message"].startswith("'bomb.png' is refused as a decompression bomb")
    noise = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))
    big = io.BytesIO()
    noise.save(big, format="PNG")
    assert len(big.getvalue()) > 1 << 20
    status, body = await _upload(client, big.getvalue(), "big.png")
    assert status == 413 and "over the limit of 1 MB" in body["error"]["message"]
    resp = await client.post("/prompt", data=b"x" * (3 << 20), headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 413 and body["error"]["type"] == "request_too_large"
    assert "over the server's limit (1 MB)" in body["error"]["message"]
    resp = await client.post("/upload/image", json={"image": "a.png"})
    assert resp.status == 400 and "expects multipart/form-data" in (await resp.json())["error"]["message"]
    assert settings.input_dir is not None and list(settings.input_dir.iterdir()) == []


async def test_upload_mask_writes_alpha_into_the_original(client: TestClient, settings: Settings) -> None:
    assert settings.input_dir is not None
    original = Image.new("RGB", (4, 2), (90, 80, 70))
    buf = io.BytesIO()
    original.save(buf, format="PNG")
    assert (await _upload(client, buf.getvalue(), "photo.png"))[0] == 200
    mask = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    mask.putpixel((1, 1), (0, 0, 0, 255))
    mbuf = io.BytesIO()
    mask.save(mbuf, format="PNG")
    ref = '{"filename": "photo.png", "subfolder": "", "type": "input"}'
    resp = await client.post("/upload/mask", data=_form(mbuf.getvalue(), "clipspace-mask.png", original_ref=ref))
    assert resp.status == 200
    assert await resp.json() == {"name": "clipspace-mask.png", "subfolder": "", "type": "input"}
    result = Image.open(settings.input_dir / "clipspace-mask.png")
    assert result.mode == "RGBA"
    assert result.getpixel((1, 1)) == (90, 80, 70, 255) and result.getpixel((0, 0)) == (90, 80, 70, 0)
    small = io.BytesIO()
    Image.new("RGBA", (2, 2)).save(small, format="PNG")
    resp = await client.post("/upload/mask", data=_form(small.getvalue(), "m2.png", original_ref=ref))
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "mask_size_mismatch"
    bad_ref = '{"filename": "../../etc/passwd", "type": "input"}'
    resp = await client.post("/upload/mask", data=_form(mbuf.getvalue(), "m3.png", original_ref=bad_ref))
    assert resp.status == 400 and "contains '..'" in (await resp.json())["error"]["message"]
    resp = await client.post("/upload/mask", data=_form(mbuf.getvalue(), "m4.png", original_ref="nope"))
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_original_ref"
