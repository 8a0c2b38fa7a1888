"""What the server's handlers share: settings, plugins, the runner, the queue, the hub, the worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.config import Settings
from engine.executor import Executor
from engine.node import Environment
from engine.plugins import PluginHost
from engine.server.files import Folders
from engine.server.hub import Hub
from engine.server.jsonio import ApiError
from engine.server.queue import PromptQueue, Runner
from engine.server.store import SQLiteQueue
from engine.server.worker import Worker

__all__ = ["ServerState", "STATE"]


@dataclass
class ServerState:
    """Everything the handlers share; one per application. The queue and hub exist once started."""

    settings: Settings
    host: PluginHost
    env: Environment
    executor: Executor | None
    runner: Runner
    folders: Folders
    version: str
    features: dict[str, Any]
    max_pixels: int
    max_upload_bytes: int
    given_queue: PromptQueue | None = None  # a queue passed to create_app (else the SQLite one)
    store: SQLiteQueue | None = None  # the SQLite queue this app opened and closes
    hub: Hub | None = None
    worker: Worker | None = None

    @property
    def queue(self) -> PromptQueue:
        """The prompt queue; 503 before start-up finished."""
        queue = self.given_queue or self.store
        if queue is None:
            raise ApiError(503, "starting", "the server is still starting; retry in a moment")
        return queue


STATE = web.AppKey("latentgraph_state", ServerState)
