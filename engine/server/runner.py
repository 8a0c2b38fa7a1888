"""The in-process `Runner`: the engine's `Executor`, whose cache lives as long as the server."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

from engine.executor import Event, Executor
from engine.node import Environment
from engine.server.queue import Emit, QueueItem, RunOutcome

__all__ = ["ExecutorRunner"]

log = logging.getLogger("latentgraph.server")


class ExecutorRunner:
    """Runs queued prompts with one `Executor`; `free` empties its cache and calls the `free` service."""

    def __init__(self, executor: Executor, env: Environment) -> None:
        self.executor = executor
        self.env = env

    def run(self, item: QueueItem, emit: Emit, interrupt: threading.Event) -> RunOutcome:
        """Execute the item's prompt, forwarding the executor's events to `emit`."""

        def listener(event: Event) -> None:
            emit(event.type, event.data)

        result = self.executor.execute(
            item.prompt, prompt_id=item.prompt_id, extra_data=item.extra_data,
            targets=list(item.outputs) or None, listener=listener, interrupt=interrupt,
        )
        error: dict[str, Any] | None = result.error
        if result.validation is not None and not result.validation.ok and error is not None:
            # The graph no longer validates (e.g. a model file was removed after it was queued).
            details = "; ".join(
                e.get("message", "") for entry in result.validation.node_errors.values() for e in entry.get("errors", [])
            )
            error = {"exception_type": "ValidationError",
                     "exception_message": f"{error.get('message', 'invalid prompt')}: {details}".rstrip(": ")}
        return RunOutcome(result.status, dict(result.outputs), error)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Drop cached results (free_memory) and ask the model cache, if any, to unload."""
        if free_memory:
            self.executor.reset()
        service = self.env.services.get("free")
        if callable(service):
            service(unload_models=unload_models, free_memory=free_memory)
        gc.collect()
