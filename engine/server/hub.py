"""The websocket hub: `/ws?clientId=` sessions, per-client ordered delivery, binary preview frames.

Messages are queued per client and written by one task per socket, so each client sees events in
the order they happened. The worker thread reaches the hub through `ThreadSink`, which hands every
call to the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from engine.server.jsonio import dumps

__all__ = ["Hub", "ThreadSink", "preview_frame", "PREVIEW_IMAGE", "PREVIEW_IMAGE_WITH_METADATA"]

log = logging.getLogger("latentgraph.server")

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_MAX_BACKLOG = 2048  # messages queued for one slow client before it is dropped
_MAX_CLIENT_ID = 200


def preview_frame(image: bytes, image_format: int, metadata: dict[str, Any] | None) -> bytes:
    """A binary preview frame: type 1 (`>II` type, format) or, with metadata, type 4 (`>II` type, length, JSON)."""
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, image_format) + image
    meta = json.dumps(metadata, separators=(",", ":")).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image


@dataclass
class _Client:
    sid: str
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[str | bytes | None] = field(default_factory=lambda: asyncio.Queue(_MAX_BACKLOG))
    preview_metadata: bool = False
    first_message: bool = True


class Hub:
    """Connected websocket clients by session id; every method runs on the event loop."""

    def __init__(self, queue_remaining: Callable[[], int], features: dict[str, Any]) -> None:
        self._queue_remaining = queue_remaining
        self.features = features
        self.clients: dict[str, _Client] = {}

    def status_data(self, sid: str | None = None) -> dict[str, Any]:
        """The `status` message's data."""
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return data

    # ---- sending -------------------------------------------------------------------------------

    def _enqueue(self, client: _Client, payload: str | bytes | None) -> None:
        try:
            client.outbox.put_nowait(payload)
        except asyncio.QueueFull:
            if isinstance(payload, bytes):
                return  # a preview can be skipped; the next one replaces it
            log.warning("websocket client %s is not reading; closing it", client.sid)
            if self.clients.get(client.sid) is client:
                del self.clients[client.sid]
            while not client.outbox.empty():
                client.outbox.get_nowait()
            client.outbox.put_nowait(None)

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """Send a JSON message to one client, or to all when `sid` is None."""
        text = dumps({"type": event, "data": data})
        if sid is None:
            for client in list(self.clients.values()):
                self._enqueue(client, text)
        elif (one := self.clients.get(sid)) is not None:
            self._enqueue(one, text)

    def send_preview(self, image: bytes, image_format: int, metadata: dict[str, Any], sid: str | None) -> None:
        """Send a preview as type 4 to clients that asked for metadata, type 1 to the others."""
        if sid is None:
            targets = list(self.clients.values())
        else:
            one = self.clients.get(sid)
            targets = [one] if one is not None else []
        plain = with_meta = None
        for client in targets:
            if client.preview_metadata:
                with_meta = with_meta or preview_frame(image, image_format, metadata)
                self._enqueue(client, with_meta)
            else:
                plain = plain or preview_frame(image, image_format, None)
                self._enqueue(client, plain)

    def broadcast_status(self) -> None:
        """Tell every client the queue's new length."""
        self.send("status", self.status_data())

    async def close_all(self) -> None:
        """Close every socket (server shutdown)."""
        for client in list(self.clients.values()):
            await client.ws.close(code=1001, message=b"server shutting down")
        self.clients.clear()

    # ---- the websocket route -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """`GET /ws?clientId=`: register the session, send `status` with its sid, read feature flags."""
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId", "")[:_MAX_CLIENT_ID] or uuid.uuid4().hex
        old = self.clients.get(sid)
        client = _Client(sid=sid, ws=ws)
        self.clients[sid] = client
        if old is not None:  # the same client reconnected: the new socket takes over the session
            self._enqueue(old, None)
        writer = asyncio.create_task(self._writer(client))
        self._enqueue(client, dumps({"type": "status", "data": self.status_data(sid)}))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._received(client, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.debug("websocket %s closed with %s", sid, ws.exception())
        finally:
            if self.clients.get(sid) is client:
                del self.clients[sid]
            writer.cancel()
        return ws

    def _received(self, client: _Client, text: str) -> None:
        first, client.first_message = client.first_message, False
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            log.debug("websocket %s sent non-JSON text; ignored", client.sid)
            return
        if not (isinstance(msg, dict) and msg.get("type") == "feature_flags"):
            return
        if first:
            flags = msg.get("data")
            client.preview_metadata = isinstance(flags, dict) and flags.get("supports_preview_metadata") is True
        self._enqueue(client, dumps({"type": "feature_flags", "data": self.features}))

    @staticmethod
    async def _writer(client: _Client) -> None:
        try:
            while True:
                payload = await client.outbox.get()
                if payload is None:
                    await client.ws.close()
                    return
                if isinstance(payload, bytes):
                    await client.ws.send_bytes(payload)
                else:
                    await client.ws.send_str(payload)
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
            log.debug("websocket %s: %s", client.sid, exc)


class ThreadSink:
    """The worker's `Sink`: hands each call to the hub on the event loop, in order."""

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed during shutdown
            pass

    def event(self, event: str, data: dict[str, Any], client_id: str | None) -> None:
        self._call(self.hub.send, event, data, client_id)

    def preview(self, image: bytes, image_format: int, metadata: dict[str, Any], client_id: str | None) -> None:
        self._call(self.hub.send_preview, image, image_format, metadata, client_id)

    def queue_changed(self) -> None:
        self._call(self.hub.broadcast_status)
