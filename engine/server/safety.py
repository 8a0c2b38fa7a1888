"""Request safety: loopback by default, a token beyond it, Host/Origin checks, JSON errors for all.

- Listening on a non-loopback address without `settings.token` refuses to start.
- With a token, every request needs `Authorization: Bearer <token>`, `?token=<token>`, or the
  cookie the server sets when a browser first opens a page with `?token=`.
- Without a token, the Host header must name this machine (DNS rebinding); with or without, a
  state-changing request or websocket with a foreign `Origin` is refused (CSRF from web pages).
- Any error, including aiohttp's own (413 body too large, 404, 405), becomes a JSON error body.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

from engine.server.jsonio import ApiError, error_body, json_response

__all__ = ["ServerConfigError", "is_loopback", "check_bind", "safety_middlewares", "TOKEN_COOKIE"]

log = logging.getLogger("latentgraph.server")

TOKEN_COOKIE = "latentgraph_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServerConfigError(RuntimeError):
    """The server's settings are unsafe or inconsistent; the message says which flag to change."""


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(listen: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    hosts = [h.strip() for h in listen.split(",") if h.strip()] or ["127.0.0.1"]
    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed and not token:
        raise ServerConfigError(
            f"refusing to listen on {', '.join(exposed)} without a token: anyone who can reach this "
            f"machine could run workflows and read your files. Set a token (--token or the "
            f"LATENTGRAPH_TOKEN environment variable) or listen on 127.0.0.1 only"
        )


def _split_host(value: str) -> str:
    """The host part of a Host header or netloc (without port; IPv6 brackets removed)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _allowed_hosts(listen: str, extra: Iterable[str]) -> frozenset[str]:
    hosts = {_split_host(h) for h in listen.split(",") if h.strip()}
    hosts.update(h.lower() for h in extra)
    return frozenset(hosts - {"0.0.0.0", "::", ""})


def safety_middlewares(token: str | None, listen: str, allowed_hosts: Iterable[str] = (),
                       max_body_mb: int = 64) -> list[object]:
    """The middlewares, outermost first: JSON errors, Host/Origin, token."""
    hosts = _allowed_hosts(listen, allowed_hosts)

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            return _http_error(request, exc, max_body_mb)
        except Exception as exc:
            log.error("%s %s failed:\n%s", request.method, request.path, traceback.format_exc())
            body = error_body("server_error", f"{request.method} {request.path} failed: {type(exc).__name__}: "
                              f"{exc}; the server log has the traceback")
            return json_response(body, status=500)

    @web.middleware
    async def host_and_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        host_header = request.headers.get("Host", "")
        host = _split_host(host_header)
        if not token and host and not (is_loopback(host) or host in hosts):
            raise ApiError(403, "forbidden_host", f"Host {host_header!r} is not this server's address; open "
                           f"http://127.0.0.1 (or set a token to serve other names)")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        origin = request.headers.get("Origin")
        if origin is not None and (websocket or request.method not in _SAFE_METHODS):
            if not _origin_ok(origin, host_header, hosts):
                raise ApiError(403, "forbidden_origin", f"requests from the page at {origin!r} are refused: only "
                               f"this server's own pages (or localhost) may change its state")
        return await handler(request)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not token:
            return await handler(request)
        given, from_query = _given_token(request)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "this server needs its token: send 'Authorization: Bearer "
                           "<token>' or add ?token=<token> to the URL")
        response = await handler(request)
        if from_query and not response.prepared:
            # A browser opened ?token=...: later requests from its pages (scripts, fetch) carry the cookie.
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    return [json_errors, host_and_origin, require_token]


def _given_token(request: web.Request) -> tuple[str | None, bool]:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if "token" in request.query:
        return request.query["token"], True
    return request.cookies.get(TOKEN_COOKIE), False


def _origin_ok(origin: str, host_header: str, hosts: frozenset[str]) -> bool:
    if origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.netloc.lower() == host_header.strip().lower():
        return True  # same origin
    name = _split_host(parts.netloc)
    return is_loopback(name) or name in hosts


def _http_error(request: web.Request, exc: web.HTTPException, max_body_mb: int) -> web.Response:
    kinds = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    kind = kinds.get(exc.status, "http_error")
    if exc.status == 404:
        message = f"no route {request.method} {request.path}; GET /object_info, /queue, /history exist"
    elif exc.status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    elif exc.status == 413:
        message = (f"{request.method} {request.path}: the request body is over the server's limit "
                   f"({max_body_mb} MB); "
                   f"raise max_upload_mb to allow it")
    else:
        message = f"{request.method} {request.path}: {exc.reason}"
    response = json_response(error_body(kind, message, exc.text or ""), status=exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response
