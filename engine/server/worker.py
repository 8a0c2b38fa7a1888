"""The worker: one thread that takes prompts off a `PromptQueue`, runs them and records history.

It meets the rest of the server only through `PromptQueue`, `Runner` and `Sink`. Events reach
clients in the order the runner emits them; the final `executing` with `node: null` is sent after the
history entry is written, so a client that reads `/history/{id}` on seeing it always finds it.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
from typing import Any

from engine.server.queue import PromptQueue, QueueItem, Runner, RunOutcome, Sink, public_extra_data

__all__ = ["Worker", "RECORDED_EVENTS", "encode_preview", "PREVIEW_JPEG", "PREVIEW_PNG"]

log = logging.getLogger("latentgraph.server")

# The messages a history entry keeps, as ComfyUI's `status.messages` does (plus our resume note).
RECORDED_EVENTS = frozenset({
    "execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted",
    "execution_resumed",
})
_FINAL = {"success": "execution_success", "error": "execution_error", "interrupted": "execution_interrupted"}
PREVIEW_JPEG = 1
PREVIEW_PNG = 2
PREVIEW_MAX_SIZE = 512


def _now_ms() -> int:
    return int(time.time() * 1000)


def encode_preview(image: Any, max_size: int = PREVIEW_MAX_SIZE) -> tuple[bytes, int]:
    """A PIL image as preview bytes: at most `max_size` px a side, JPEG (PNG when it has alpha)."""
    img = image.copy()
    img.thumbnail((max_size, max_size))
    buf = io.BytesIO()
    if img.mode in ("RGBA", "LA"):
        img.save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), PREVIEW_PNG
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue(), PREVIEW_JPEG


class Worker:
    """Runs queued prompts one at a time on its own thread; interrupt, free and stop are thread-safe."""

    def __init__(self, queue: PromptQueue, runner: Runner, sink: Sink, *, previews: bool = True,
                 max_crashes: int = 2) -> None:
        self.queue = queue
        self.runner = runner
        self.sink = sink
        self.previews = previews
        self.max_crashes = max_crashes  # a prompt that took the server down this often is not retried
        self._lock = threading.Lock()
        self._interrupt = threading.Event()
        self._stop = threading.Event()
        self._current: QueueItem | None = None
        self._free: tuple[bool, bool] = (False, False)
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    # ---- control (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="latentgraph-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the running prompt (it goes back to the front of the queue) and end the thread."""
        self._stop.set()
        self._interrupt.set()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("worker did not stop within %.0f s; a node is not honouring interrupts", timeout)
            self._thread = None

    @property
    def current(self) -> QueueItem | None:
        """The prompt running now, if any."""
        return self._current

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is `prompt_id`, when given); True if one was."""
        with self._lock:
            current = self._current
            if current is None or (prompt_id is not None and current.prompt_id != prompt_id):
                return False
            self._interrupt.set()
            return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Ask for memory to be released before the next prompt (at once when idle)."""
        with self._lock:
            u, f = self._free
            self._free = (u or unload_models, f or free_memory)
        self.queue.wake()

    # ---- the thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._apply_free()
            try:
                item = self.queue.get_next()
            except Exception:  # a closed or broken store: nothing more to run
                log.exception("worker cannot read the queue; stopping")
                return
            if item is None:
                continue
            self.idle.clear()
            try:
                self._run(item)
            except Exception:  # never let one prompt end the worker
                log.exception("worker failed while finishing prompt %s", item.prompt_id)
            finally:
                self.idle.set()

    def _apply_free(self) -> None:
        with self._lock:
            unload, free = self._free
            self._free = (False, False)
        if unload or free:
            try:
                self.runner.free(unload, free)
            except Exception:
                log.exception("freeing memory failed")

    def _run(self, item: QueueItem) -> None:
        with self._lock:
            self._current = item
            self._interrupt.clear()
        self.sink.queue_changed()
        client = item.client_id
        messages: list[list[Any]] = []
        seen: set[str] = set()

        def emit(event: str, data: dict[str, Any]) -> None:
            if event == "preview":
                self._preview(item, data, client)
                return
            if event == "executing" and data.get("node") is None:
                return  # sent once the history entry is written
            if event == "execution_start" and item.resumed:
                data = {**data, "resumed": item.resumed}
            seen.add(event)
            if event in RECORDED_EVENTS:
                messages.append([event, data])
            self.sink.event(event, data, client)

        if item.resumed:
            emit("execution_resumed", {"prompt_id": item.prompt_id, "resumed": item.resumed,
                                       "crashes": item.crashes, "timestamp": _now_ms()})
        outcome = self._execute(item, emit)
        if self._stop.is_set() and outcome.status == "interrupted":
            # Shutting down: the prompt was cut off, not cancelled by a user; run it again on start.
            self.queue.release(item)
            with self._lock:
                self._current = None
            return
        final = _FINAL.get(outcome.status, "execution_error")
        if final not in seen:
            emit(final, self._final_data(item, outcome))
        entry = self._history_entry(item, outcome, messages)
        self.queue.task_done(item, entry)
        with self._lock:
            self._current = None
        self.sink.event("executing", {"node": None, "display_node": None, "prompt_id": item.prompt_id}, client)
        self.sink.queue_changed()

    def _execute(self, item: QueueItem, emit: Any) -> RunOutcome:
        if item.crashes > self.max_crashes:
            return RunOutcome("error", error={
                "exception_type": "ServerStopped",
                "exception_message": (
                    f"the server stopped {item.crashes} times while running prompt {item.prompt_id} "
                    f"(killed, crashed or out of memory), so it is not retried again; queue it again "
                    f"to retry, with smaller sizes if memory ran out"),
            })
        try:
            return self.runner.run(item, emit, self._interrupt)
        except Exception as exc:
            log.exception("prompt %s failed outside any node", item.prompt_id)
            return RunOutcome("error", error={
                "exception_type": type(exc).__name__,
                "exception_message": str(exc) or type(exc).__name__,
                "traceback": traceback.format_exception(exc),
            })

    @staticmethod
    def _final_data(item: QueueItem, outcome: RunOutcome) -> dict[str, Any]:
        data: dict[str, Any] = {"prompt_id": item.prompt_id, "timestamp": _now_ms()}
        if outcome.status == "success":
            return data
        err = dict(outcome.error or {})
        data.update({"node_id": err.get("node_id"), "node_type": err.get("node_type"),
                     "executed": list(err.get("executed", []))})
        if outcome.status != "interrupted":
            data.update({
                "exception_message": err.get("exception_message", "prompt failed"),
                "exception_type": err.get("exception_type", "Exception"),
                "traceback": list(err.get("traceback", [])),
                "current_inputs": err.get("current_inputs", {}),
                "current_outputs": err.get("current_outputs", {}),
            })
        return data

    @staticmethod
    def _history_entry(item: QueueItem, outcome: RunOutcome, messages: list[list[Any]]) -> dict[str, Any]:
        outputs = {str(k): v for k, v in (outcome.outputs or {}).items()}
        status: dict[str, Any] = {
            "status_str": "success" if outcome.status == "success" else "error",
            "completed": outcome.status == "success",
            "messages": messages,
        }
        if item.resumed:
            status["resumed"] = item.resumed
        return {
            "prompt": [item.as_tuple()[0], item.prompt_id, item.prompt, public_extra_data(item.extra_data),
                       list(item.outputs)],
            "outputs": outputs,
            "status": status,
            "meta": {k: {"node_id": k, "display_node": k, "parent_node": None, "real_node_id": k} for k in outputs},
        }

    def _preview(self, item: QueueItem, data: dict[str, Any], client: str | None) -> None:
        image = data.get("image")
        if not self.previews or image is None:
            return
        try:
            payload, fmt = encode_preview(image)
        except Exception:
            log.exception("cannot encode a preview of node %s", data.get("node"))
            return
        node = str(data.get("node"))
        meta = {"node_id": node, "prompt_id": item.prompt_id, "display_node_id": node, "parent_node_id": None,
                "real_node_id": node, "image_type": "image/png" if fmt == PREVIEW_PNG else "image/jpeg"}
        self.sink.preview(payload, fmt, meta, client)
