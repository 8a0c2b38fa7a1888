"""JSON in and out of the server: tolerant encoding, strict request parsing, one error shape.

Every error response is `{"error": {"type, message, details, extra_info}}` (ComfyUI's error object),
so clients and the editor can show the message whatever route failed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["ApiError", "dumps", "json_response", "error_body", "read_json", "read_json_object"]


class ApiError(Exception):
    """A request the server refuses: HTTP status, a machine-readable type and a message with the fix."""

    def __init__(self, status: int, kind: str, message: str, details: str = "", **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.details = details
        self.extra = extra

    def response(self) -> web.Response:
        """This error as a JSON response."""
        return json_response(error_body(self.kind, self.message, self.details, **self.extra), status=self.status)


def _fallback(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return repr(value)


def _strip_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strip_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip_nan(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON text for anything the engine produces: unknown objects become their repr, NaN null."""
    try:
        return json.dumps(value, default=_fallback, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_strip_nan(value), default=_fallback, separators=(",", ":"), allow_nan=False)


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON response encoded with `dumps`."""
    return web.Response(text=dumps(value), status=status, content_type="application/json")


def error_body(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    """ComfyUI's error object wrapped as `{"error": ...}`."""
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": extra}}


async def read_json(request: web.Request, *, default: Any = None, allow_empty: bool = False) -> Any:
    """The request body as JSON; 400 with line and column when it is malformed."""
    text = await request.text()
    if not text.strip():
        if allow_empty:
            return default
        raise ApiError(400, "invalid_json", f"{request.method} {request.path}: the request body is empty; "
                       f"send a JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"{request.method} {request.path}: the request body is not valid "
                       f"JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", details=text[:200]) from None


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is `{}` when `allow_empty`)."""
    value = await read_json(request, default={}, allow_empty=allow_empty)
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", f"{request.method} {request.path}: expected a JSON object, got "
                       f"{type(value).__name__}")
    return value
