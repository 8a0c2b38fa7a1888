"""The SQLite-backed prompt queue and history: one file, WAL, survives restarts and SIGKILL.

A prompt moves pending -> running -> history; the last step is one transaction, so a crash leaves
each prompt in exactly one place. A prompt found `running` when the file is opened was cut off by a
crash: it is put back at the front of the queue with `resumed` incremented.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.server.jsonio import dumps
from engine.server.queue import QueueItem

__all__ = ["SQLiteQueue", "DuplicatePromptError", "StoreError", "MAX_HISTORY"]

MAX_HISTORY = 10_000  # ComfyUI's cap; the oldest entries go first
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    priority INTEGER NOT NULL DEFAULT 1,  -- 0: resumed after a crash, runs before everything else
    state TEXT NOT NULL CHECK (state IN ('pending', 'running')),
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL,
    resumed INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    queued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_order ON queue (state, priority, number, seq);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    entry TEXT NOT NULL,
    completed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(RuntimeError):
    """The queue database cannot be opened or has an unknown layout."""


class DuplicatePromptError(ValueError):
    """A prompt id that is already pending or running was queued again."""


class SQLiteQueue:
    """`PromptQueue` over one SQLite file (see `engine.server.queue.PromptQueue` for the methods)."""

    def __init__(self, path: Path, *, max_history: int = MAX_HISTORY) -> None:
        self.path = Path(path)
        self.max_history = max_history
        self._lock = threading.RLock()
        self._ready = threading.Condition(self._lock)
        self._woken = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a killed process (not a power cut).
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(
                    f"{self.path}: queue database has layout version {version}, this server knows "
                    f"{SCHEMA_VERSION}; move the file away or upgrade latentgraph"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the queue database ({exc}); move the file away to "
                             f"start with an empty queue and history") from exc
        self.recovered = self._recover()

    # ---- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _recover(self) -> list[str]:
        """Put prompts cut off by a crash back at the front; returns their ids."""
        with self._transaction() as db:
            ids = [r[0] for r in db.execute("SELECT prompt_id FROM queue WHERE state = 'running' ORDER BY seq")]
            db.execute("UPDATE queue SET state = 'pending', priority = 0, resumed = resumed + 1, "
                       "crashes = crashes + 1 WHERE state = 'running'")
        return ids

    def close(self) -> None:
        """Close the database; further calls fail."""
        with self._lock:
            self._woken = True
            self._ready.notify_all()
            self._db.close()

    @staticmethod
    def _item(row: tuple[Any, ...]) -> QueueItem:
        prompt_id, number, prompt, extra_data, outputs, resumed, crashes = row
        return QueueItem(number=number, prompt_id=prompt_id, prompt=json.loads(prompt),
                         extra_data=json.loads(extra_data), outputs=json.loads(outputs), resumed=resumed,
                         crashes=crashes)

    _COLUMNS = "prompt_id, number, prompt, extra_data, outputs, resumed, crashes"
    _ORDER = "ORDER BY priority, number, seq"

    # ---- queue ---------------------------------------------------------------------------------

    def next_number(self) -> int:
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'next_number'").fetchone()
            number = int(row[0]) if row else 0
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_number', ?)", (str(number + 1),))
        return number

    def put(self, item: QueueItem) -> None:
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO queue (prompt_id, number, state, prompt, extra_data, outputs, resumed, queued_at) "
                    "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                    (item.prompt_id, float(item.number), dumps(item.prompt), dumps(item.extra_data),
                     dumps(item.outputs), item.resumed, time.time()),
                )
            except sqlite3.IntegrityError:
                raise DuplicatePromptError(
                    f"prompt_id {item.prompt_id!r} is already queued or running; send a new prompt_id "
                    f"(or none, and the server picks one)"
                ) from None
            self._ready.notify()

    def get_next(self, timeout: float | None = None) -> QueueItem | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                if self._woken:
                    self._woken = False
                    return None
                with self._transaction() as db:
                    row = db.execute(f"SELECT {self._COLUMNS} FROM queue WHERE state = 'pending' "
                                     f"{self._ORDER} LIMIT 1").fetchone()
                    if row is not None:
                        db.execute("UPDATE queue SET state = 'running' WHERE prompt_id = ?", (row[0],))
                        return self._item(row)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._ready.wait(left)

    def task_done(self, item: QueueItem, entry: dict[str, Any]) -> None:
        text = dumps(entry)
        with self._transaction() as db:
            db.execute("DELETE FROM queue WHERE prompt_id = ?", (item.prompt_id,))
            db.execute("DELETE FROM history WHERE prompt_id = ?", (item.prompt_id,))
            db.execute("INSERT INTO history (prompt_id, entry, completed_at) VALUES (?, ?, ?)",
                       (item.prompt_id, text, time.time()))
            count = db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            if count > self.max_history:
                db.execute("DELETE FROM history WHERE seq IN (SELECT seq FROM history ORDER BY seq LIMIT ?)",
                           (count - self.max_history,))

    def release(self, item: QueueItem) -> None:
        with self._transaction() as db:
            db.execute("UPDATE queue SET state = 'pending', priority = 0, resumed = resumed + 1 "
                       "WHERE prompt_id = ? AND state = 'running'", (item.prompt_id,))
            self._ready.notify()

    def wake(self) -> None:
        with self._ready:
            self._woken = True
            self._ready.notify_all()

    def running(self) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM queue WHERE state = 'running' ORDER BY seq")
            return [self._item(r) for r in rows]

    def pending(self) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM queue WHERE state = 'pending' {self._ORDER}")
            return [self._item(r) for r in rows]

    def remaining(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def delete(self, prompt_ids: Iterable[str]) -> list[str]:
        removed: list[str] = []
        with self._transaction() as db:
            for pid in prompt_ids:
                cur = db.execute("DELETE FROM queue WHERE prompt_id = ? AND state = 'pending'", (str(pid),))
                if cur.rowcount:
                    removed.append(str(pid))
        return removed

    def clear(self) -> list[str]:
        with self._transaction() as db:
            ids = [r[0] for r in db.execute(f"SELECT prompt_id FROM queue WHERE state = 'pending' {self._ORDER}")]
            db.execute("DELETE FROM queue WHERE state = 'pending'")
        return ids

    # ---- history -------------------------------------------------------------------------------

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, dict[str, Any]]:
        with self._lock:
            if offset < 0 and max_items is not None:
                total = self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
                offset = total - max_items
            offset = max(offset, 0)
            limit = -1 if max_items is None else max(max_items, 0)
            rows = self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq LIMIT ? OFFSET ?",
                                    (limit, offset)).fetchall()
        return {pid: json.loads(text) for pid, text in rows}

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT entry FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_history(self, prompt_ids: Iterable[str]) -> list[str]:
        removed: list[str] = []
        with self._transaction() as db:
            for pid in prompt_ids:
                if db.execute("DELETE FROM history WHERE prompt_id = ?", (str(pid),)).rowcount:
                    removed.append(str(pid))
        return removed

    def clear_history(self) -> int:
        with self._transaction() as db:
            return int(db.execute("DELETE FROM history").rowcount)
