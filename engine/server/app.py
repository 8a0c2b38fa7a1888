"""The application factory: routes (bare and under /api), static files, queue, worker, lifecycle."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from engine.config import Settings
from engine.executor import Executor
from engine.plugins import PluginHost
from engine.server.api import PromptRoutes
from engine.server.files import DEFAULT_MAX_PIXELS, Folders, upload_image, upload_mask, view
from engine.server.hub import Hub, ThreadSink
from engine.server.info import InfoRoutes
from engine.server.jsonio import ApiError
from engine.server.queue import PromptQueue, Runner
from engine.server.runner import ExecutorRunner
from engine.server.safety import ServerConfigError, check_bind, safety_middlewares
from engine.server.state import STATE, ServerState
from engine.server.store import SQLiteQueue
from engine.server.worker import Worker

__all__ = ["create_app", "serve", "ServerState", "STATE", "DB_NAME", "web_dir"]

log = logging.getLogger("latentgraph.server")

DB_NAME = "latentgraph.sqlite3"
LITEGRAPH_DIST = Path("node_modules/@comfyorg/litegraph/dist")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _version() -> str:
    try:
        return importlib.metadata.version("latentgraph")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def web_dir(settings: Settings) -> Path:
    """The editor's folder: `settings.extra["web_dir"]`, else `web/` beside the engine package."""
    configured = settings.extra.get("web_dir")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "web"


def create_app(settings: Settings, host: PluginHost | None = None, *, runner: Runner | None = None,
               queue: PromptQueue | None = None) -> web.Application:
    """Build the server: ComfyUI's API, our `/api/...` routes, the editor, the queue and its worker.

    `host` is an already-loaded PluginHost (else one is built from settings); `runner` and `queue`
    replace the in-process executor and the SQLite queue (e.g. with a distributed backend).
    `settings.extra` may set `serve_web` (False: no editor files), `web_dir`, `worker` (False: queue
    only), `allowed_hosts`, `max_upload_pixels` and `max_history`.
    """
    check_bind(settings.listen, settings.token)
    settings.ensure_dirs()
    if host is None:
        host = PluginHost(entry_points=settings.load_entry_points, plugin_dirs=settings.plugin_dirs,
                          disabled=settings.disabled_plugins)
    host.load()
    env = host.environment(settings.env_settings())
    executor = None
    if runner is None:
        executor = Executor(host.nodes, env, cache=settings.cache)
        runner = ExecutorRunner(executor, env)
    max_bytes = int(settings.max_upload_mb) << 20
    state = ServerState(
        settings=settings, host=host, env=env, executor=executor, runner=runner,
        folders=Folders(input=Path(settings.input_dir or "input"), output=Path(settings.output_dir or "output"),
                        temp=Path(settings.temp_dir or "temp")),
        version=_version(),
        features={"supports_preview_metadata": True, "max_upload_size": max_bytes},
        max_pixels=int(settings.extra.get("max_upload_pixels", DEFAULT_MAX_PIXELS)),
        max_upload_bytes=max_bytes, given_queue=queue,
    )
    app = web.Application(
        client_max_size=max_bytes + (1 << 20),  # room for the multipart envelope around the largest upload
        middlewares=safety_middlewares(settings.token, settings.listen, settings.extra.get("allowed_hosts", ()),
                                       int(settings.max_upload_mb)),  # type: ignore[arg-type]
    )
    app[STATE] = state
    _add_api_routes(app, state)
    _add_plugin_routes(app, host)
    if settings.extra.get("serve_web", True):
        _add_web(app, web_dir(settings))
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


def _add_api_routes(app: web.Application, state: ServerState) -> None:
    prompts = PromptRoutes(state)
    info = InfoRoutes(state)

    async def ws(request: web.Request) -> web.StreamResponse:
        if state.hub is None:
            raise ApiError(503, "starting", "the server is still starting; retry in a moment")
        return await state.hub.handle(request)

    async def view_file(request: web.Request) -> web.StreamResponse:
        return await view(request, state.folders)

    async def upload_img(request: web.Request) -> web.StreamResponse:
        return await upload_image(request, state.folders, state.max_pixels, state.max_upload_bytes)

    async def upload_msk(request: web.Request) -> web.StreamResponse:
        return await upload_mask(request, state.folders, state.max_pixels, state.max_upload_bytes)

    comfy: list[tuple[str, str, Handler]] = [
        ("GET", "/ws", ws),
        ("GET", "/prompt", prompts.get_prompt),
        ("POST", "/prompt", prompts.post_prompt),
        ("GET", "/queue", prompts.get_queue),
        ("POST", "/queue", prompts.post_queue),
        ("GET", "/history", prompts.get_history),
        ("GET", "/history/{prompt_id}", prompts.get_history_one),
        ("POST", "/history", prompts.post_history),
        ("POST", "/interrupt", prompts.interrupt),
        ("POST", "/free", prompts.free),
        ("GET", "/object_info", info.object_info),
        ("GET", "/object_info/{node_class}", info.object_info_one),
        ("GET", "/view", view_file),
        ("POST", "/upload/image", upload_img),
        ("POST", "/upload/mask", upload_msk),
        ("GET", "/system_stats", info.system_stats),
        ("GET", "/models", info.models),
        ("GET", "/models/{folder}", info.models_in),
        ("GET", "/embeddings", info.embeddings),
        ("GET", "/extensions", info.extensions),
        ("GET", "/features", info.features),
    ]
    for method, path, handler in comfy:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_get("/api/schema", info.schema)
    app.router.add_get("/api/plugins", info.plugins)
    app.router.add_post("/api/workflow/convert", prompts.convert)


def _add_plugin_routes(app: web.Application, host: PluginHost) -> None:
    for plugin, folder in sorted(host.web_extensions.items()):
        app.router.add_static(f"/extensions/{plugin}/", Path(folder), follow_symlinks=False)
    for plugin, routes in sorted(host.routes.items()):
        sub = web.Application()
        sub.add_routes(routes)
        app.add_subapp(f"/api/ext/{plugin}", sub)


def _add_web(app: web.Application, folder: Path) -> None:
    dist = folder / LITEGRAPH_DIST
    if not dist.is_dir():
        raise ServerConfigError(
            f"the editor's dependencies are missing ({dist} does not exist): run `make setup` (npm ci in web/), "
            f"or start with static serving disabled"
        )
    index = folder / "index.html"

    async def index_page(request: web.Request) -> web.StreamResponse:
        if not index.is_file():
            raise ApiError(404, "not_found", f"{index} is missing; the editor is not installed in {folder}")
        return web.FileResponse(index)

    app.router.add_get("/", index_page)
    app.router.add_static("/vendor/litegraph/", dist)
    app.router.add_static("/", folder)


async def _startup(app: web.Application) -> None:
    state = app[STATE]
    settings = state.settings
    if state.given_queue is None:
        assert settings.user_dir is not None
        store = SQLiteQueue(Path(settings.user_dir) / DB_NAME,
                            max_history=int(settings.extra.get("max_history", 10_000)))
        if store.recovered:
            log.warning("re-queued %d prompt(s) that were running when the server stopped: %s",
                        len(store.recovered), ", ".join(store.recovered))
        state.store = store
    queue = state.queue
    state.hub = Hub(queue.remaining, state.features)
    await state.host.startup_async(state.env)
    if settings.extra.get("worker", True):
        sink = ThreadSink(state.hub, asyncio.get_running_loop())
        state.worker = Worker(queue, state.runner, sink, previews=settings.preview != "none")
        state.worker.start()


async def _shutdown(app: web.Application) -> None:
    state = app[STATE]
    if state.hub is not None:
        await state.hub.close_all()


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    if state.worker is not None:
        await asyncio.to_thread(state.worker.stop)
        state.worker = None
    if state.store is not None:
        state.store.close()
        state.store = None


def serve(settings: Settings, host: PluginHost | None = None,
          on_ready: Callable[[list[str]], None] | None = None) -> None:
    """Run the server until SIGINT/SIGTERM; prints (or hands `on_ready`) the URLs it listens on."""
    check_bind(settings.listen, settings.token)
    app = create_app(settings, host)
    try:
        asyncio.run(_serve(app, settings, on_ready))
    except (KeyboardInterrupt, web.GracefulExit):
        pass


async def _serve(app: web.Application, settings: Settings, on_ready: Callable[[list[str]], None] | None) -> None:
    runner = web.AppRunner(app, handle_signals=True, access_log=None)
    await runner.setup()
    try:
        hosts = [h.strip() for h in settings.listen.split(",") if h.strip()] or ["127.0.0.1"]
        for name in hosts:
            await web.TCPSite(runner, name, settings.port).start()
        urls = []
        for address in runner.addresses:
            host, port = address[0], address[1]
            urls.append(f"http://{'[' + host + ']' if ':' in host else host}:{port}")
        if on_ready is not None:
            on_ready(urls)
        else:
            print(f"latentgraph {app[STATE].version} serving on {', '.join(urls)}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
