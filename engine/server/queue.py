"""The queue/worker interface: queued prompts, history entries, and the protocols they meet at.

The HTTP layer only ever talks to a `PromptQueue` (which also keeps the history) and a `Worker`;
the worker only talks to the queue, a `Runner` (something that executes one prompt) and a `Sink`
(where events go). A distributed backend replaces the runner (ship the item elsewhere, stream the
events back) or the queue (a shared store several workers pull from) without touching the routes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "QueueItem",
    "RunOutcome",
    "PromptQueue",
    "Runner",
    "Sink",
    "Emit",
    "SENSITIVE_EXTRA_KEYS",
    "public_extra_data",
    "json_number",
]

# Keys of extra_data that carry credentials: they reach the runner but never history or /queue.
SENSITIVE_EXTRA_KEYS = frozenset({"auth_token_comfy_org", "api_key_comfy_org"})

Emit = Callable[[str, dict[str, Any]], None]


def json_number(number: float) -> int | float:
    """A queue number as ComfyUI clients see it: an int when it is whole."""
    return int(number) if float(number).is_integer() else float(number)


def public_extra_data(extra_data: dict[str, Any]) -> dict[str, Any]:
    """extra_data without credentials, as history and `GET /queue` show it."""
    return {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_KEYS}


@dataclass
class QueueItem:
    """One queued prompt: ComfyUI's tuple `(number, prompt_id, prompt, extra_data, outputs)`.

    `resumed` counts how often the prompt was running when the server stopped and was re-queued
    at the front; `crashes` counts the stops that were not clean (SIGKILL, a crash, out of memory).
    """

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    resumed: int = 0
    crashes: int = 0

    @property
    def client_id(self) -> str | None:
        """The websocket session that submitted the prompt, if any."""
        value = self.extra_data.get("client_id")
        return value if isinstance(value, str) and value else None

    def as_tuple(self) -> list[Any]:
        """The ComfyUI queue tuple, credentials removed."""
        return [json_number(self.number), self.prompt_id, self.prompt, public_extra_data(self.extra_data),
                list(self.outputs)]


@dataclass
class RunOutcome:
    """What a runner reports for one prompt: "success", "error" or "interrupted", plus UI outputs."""

    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


class PromptQueue(Protocol):
    """Pending and running prompts plus the finished ones' history; safe to call from any thread."""

    def next_number(self) -> int:
        """The next queue number (monotonic, also across restarts)."""
        ...

    def put(self, item: QueueItem) -> None:
        """Queue a prompt; raises `DuplicatePromptError` if its id is already queued or running."""
        ...

    def get_next(self, timeout: float | None = None) -> QueueItem | None:
        """Block until a prompt is pending, mark it running and return it; None on timeout or `wake`."""
        ...

    def task_done(self, item: QueueItem, entry: dict[str, Any]) -> None:
        """Remove a running prompt and record its history entry, atomically."""
        ...

    def release(self, item: QueueItem) -> None:
        """Put a running prompt back at the front (the worker stops before finishing it)."""
        ...

    def wake(self) -> None:
        """Make a blocked `get_next` return None (the worker then checks for stop/free requests)."""
        ...

    def running(self) -> list[QueueItem]:
        """Prompts being executed now."""
        ...

    def pending(self) -> list[QueueItem]:
        """Prompts waiting, in the order they will run."""
        ...

    def remaining(self) -> int:
        """Pending plus running prompts (ComfyUI's `queue_remaining`)."""
        ...

    def delete(self, prompt_ids: Iterable[str]) -> list[str]:
        """Drop pending prompts by id; returns the ids dropped (running ones are left alone)."""
        ...

    def clear(self) -> list[str]:
        """Drop every pending prompt; returns their ids."""
        ...

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, dict[str, Any]]:
        """History entries by prompt id, oldest first, with ComfyUI's `max_items`/`offset` rules."""
        ...

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """One history entry, or None."""
        ...

    def delete_history(self, prompt_ids: Iterable[str]) -> list[str]:
        """Forget some history entries; returns the ids removed."""
        ...

    def clear_history(self) -> int:
        """Forget all history; returns how many entries were removed."""
        ...


class Runner(Protocol):
    """Executes one prompt, reporting events through `emit`; keeps its cache between prompts."""

    def run(self, item: QueueItem, emit: Emit, interrupt: threading.Event) -> RunOutcome:
        """Run the prompt to the end, an error, or until `interrupt` is set."""
        ...

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Release memory between prompts (`POST /free`)."""
        ...


class Sink(Protocol):
    """Where the worker's messages go (the websocket hub); called from the worker's thread."""

    def event(self, event: str, data: dict[str, Any], client_id: str | None) -> None:
        """A JSON message for one client (all clients when `client_id` is None)."""
        ...

    def preview(self, image: bytes, image_format: int, metadata: dict[str, Any], client_id: str | None) -> None:
        """An encoded preview image (format 1 JPEG, 2 PNG) with its node metadata."""
        ...

    def queue_changed(self) -> None:
        """The queue changed: broadcast the new status."""
        ...
