"""The SQLite queue and history: order, recovery after a crash, atomic completion, limits."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.server import DuplicatePromptError, QueueItem, SQLiteQueue, StoreError


def _item(pid: str, number: float, **extra: Any) -> QueueItem:
    return QueueItem(number=number, prompt_id=pid, prompt={"1": {"class_type": "X", "inputs": {}}},
                     extra_data=extra, outputs=["1"])


def _entry(pid: str) -> dict[str, Any]:
    return {"prompt": [0, pid, {}, {}, []], "outputs": {}, "status": {"status_str": "success", "completed": True,
                                                                      "messages": []}, "meta": {}}


def test_order_is_number_then_arrival(tmp_path: Path) -> None:
    q = SQLiteQueue(tmp_path / "q.sqlite3")
    for pid, number in (("b", 2), ("a1", 1), ("a2", 1), ("front", -5)):
        q.put(_item(pid, number))
    assert [i.prompt_id for i in q.pending()] == ["front", "a1", "a2", "b"]
    got = q.get_next(timeout=0)
    assert got is not None and got.prompt_id == "front"
    assert [i.prompt_id for i in q.running()] == ["front"] and q.remaining() == 4
    with pytest.raises(DuplicatePromptError, match="prompt_id 'front' is already queued or running"):
        q.put(_item("front", 9))
    q.close()


def test_numbers_persist_across_reopen(tmp_path: Path) -> None:
    q = SQLiteQueue(tmp_path / "q.sqlite3")
    assert [q.next_number() for _ in range(3)] == [0, 1, 2]
    q.close()
    assert SQLiteQueue(tmp_path / "q.sqlite3").next_number() == 3


def test_running_prompt_resumes_first_after_crash(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = SQLiteQueue(path)
    q.put(_item("first", 0))
    q.put(_item("second", 1))
    assert q.get_next(timeout=0).prompt_id == "first"  # type: ignore[union-attr]
    q.put(_item("urgent", -10))
    # No close(): the process "dies" with "first" running.
    again = SQLiteQueue(path)
    assert again.recovered == ["first"]
    pending = again.pending()
    assert [(i.prompt_id, i.resumed, i.crashes) for i in pending] == [("first", 1, 1), ("urgent", 0, 0),
                                                                      ("second", 0, 0)]
    assert again.running() == []


def test_release_puts_back_at_front_without_counting_a_crash(tmp_path: Path) -> None:
    q = SQLiteQueue(tmp_path / "q.sqlite3")
    q.put(_item("a", 0))
    q.put(_item("b", -1))
    item = q.get_next(timeout=0)
    assert item is not None and item.prompt_id == "b"
    q.put(_item("c", -2))
    q.release(item)
    assert [(i.prompt_id, i.resumed, i.crashes) for i in q.pending()] == [("b", 1, 0), ("c", 0, 0), ("a", 0, 0)]


def test_task_done_moves_to_history_atomically(tmp_path: Path) -> None:
    q = SQLiteQueue(tmp_path / "q.sqlite3", max_history=3)
    for i in range(5):
        q.put(_item(f"p{i}", i))
        item = q.get_next(timeout=0)
        assert item is not None
        q.task_done(item, _entry(item.prompt_id))
    assert q.remaining() == 0
    assert list(q.history()) == ["p2", "p3", "p4"]  # capped: the oldest went
    assert q.history_entry("p3") == _entry("p3")
    assert q.history_entry("p0") is None
    db = sqlite3.connect(tmp_path / "q.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_get_next_blocks_until_put_or_wake(tmp_path: Path) -> None:
    q = SQLiteQueue(tmp_path / "q.sqlite3")
    assert q.get_next(timeout=0.01) is None
    got: list[QueueItem | None] = []
    t = threading.Thread(target=lambda: got.append(q.get_next()))
    t.start()
    q.put(_item("x", 0))
    t.join(5)
    assert got[0] is not None and got[0].prompt_id == "x"
    t = threading.Thread(target=lambda: got.append(q.get_next()))
    t.start()
    q.wake()
    t.join(5)
    assert got[1] is None


def test_credentials_never_reach_the_queue_tuple() -> None:
    item = _item("s", 1, client_id="c", api_key_comfy_org="secret")
    assert item.as_tuple()[3] == {"client_id": "c"}
    assert _item("n", 2.5).as_tuple()[0] == 2.5 and isinstance(_item("n", 2.0).as_tuple()[0], int)


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="layout version 99, this server knows 1"):
        SQLiteQueue(path)
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the queue database"):
        SQLiteQueue(bad)
