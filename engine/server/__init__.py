"""latentgraph's HTTP and websocket server: ComfyUI's API, a persistent queue, the editor's files.

Build it with `create_app(settings)` (an aiohttp Application) or run it with `serve(settings)`.
"""

from engine.server.app import STATE, ServerState, create_app, serve
from engine.server.queue import PromptQueue, QueueItem, Runner, RunOutcome, Sink
from engine.server.safety import ServerConfigError
from engine.server.store import DuplicatePromptError, SQLiteQueue, StoreError
from engine.server.worker import Worker

__all__ = [
    "create_app",
    "serve",
    "ServerState",
    "STATE",
    "ServerConfigError",
    "PromptQueue",
    "QueueItem",
    "Runner",
    "RunOutcome",
    "Sink",
    "SQLiteQueue",
    "DuplicatePromptError",
    "StoreError",
    "Worker",
]
