"""Fixtures for the server tests: settings in a temporary folder, a host with the test nodes, a client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from engine.config import Settings
from engine.plugins import PluginHost
from engine.server import create_app
from tests.server import nodes

MakeClient = Callable[..., Awaitable[TestClient]]


def make_host() -> PluginHost:
    """A plugin host with only the server test nodes."""
    return PluginHost(entry_points=False, plugins=[nodes]).load()


def make_settings(base: Path, **extra: Any) -> Settings:
    """Settings under `base`, without editor files or entry-point plugins."""
    return Settings(base_dir=base, load_entry_points=False, extra={"serve_web": False, **extra})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def make_client(aiohttp_client: Any, settings: Settings) -> MakeClient:
    """Build a test client for a fresh app (optionally with other settings or host)."""

    async def build(s: Settings | None = None, host: PluginHost | None = None) -> TestClient:
        return await aiohttp_client(create_app(s or settings, host or make_host()))  # type: ignore[no-any-return]

    return build


@pytest_asyncio.fixture
async def client(make_client: MakeClient) -> TestClient:
    return await make_client()


def chain(value: int = 3, seconds: float = 0.0, *, steps: int = 2, preview: bool = False,
          prefix: str = "number") -> dict[str, Any]:
    """Number -> Sleep -> SaveNumber, in API format."""
    return {
        "1": {"class_type": "Number", "inputs": {"value": value}},
        "2": {"class_type": "Sleep", "inputs": {"value": ["1", 0], "seconds": seconds, "steps": steps,
                                                 "preview": preview}},
        "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0], "prefix": prefix}},
    }


def gated(tag: str) -> dict[str, Any]:
    """Number -> Gate -> SaveNumber: runs until the test opens the gate (or interrupts)."""
    return {
        "1": {"class_type": "Number", "inputs": {"value": 7}},
        "2": {"class_type": "Gate", "inputs": {"value": ["1", 0], "tag": tag}},
        "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0]}},
    }


async def until_done(ws: ClientWebSocketResponse, prompt_id: str, timeout: float = 20.0
                     ) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Read messages until `executing` with node null for `prompt_id`; returns (JSON messages, binary frames)."""
    messages: list[dict[str, Any]] = []
    frames: list[bytes] = []

    async def read() -> None:
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.BINARY:
                frames.append(msg.data)
                continue
            assert msg.type == WSMsgType.TEXT, f"websocket closed: {msg}"
            message = msg.json()
            messages.append(message)
            data = message["data"]
            if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                return

    await asyncio.wait_for(read(), timeout)
    return messages, frames


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll an async predicate until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
