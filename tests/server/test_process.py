"""A real server process killed with SIGKILL mid-prompt loses nothing: the cut prompt resumes first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.server.conftest import chain

ROOT = Path(__file__).resolve().parents[2]


def _start(base: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.server.serve_testnodes", str(base)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("READY "):
            return proc, line.split()[1]
    proc.kill()
    raise AssertionError(f"server did not start:\n{''.join(lines)}")


def _call(url: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _wait(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_sigkill_mid_prompt_loses_nothing(tmp_path: Path) -> None:
    proc, url = _start(tmp_path)
    try:
        _call(url, "/prompt", {"prompt": chain(1, seconds=1.5, steps=30), "prompt_id": "slow"})
        _call(url, "/prompt", {"prompt": chain(2), "prompt_id": "second"})
        _call(url, "/prompt", {"prompt": chain(3), "prompt_id": "third"})
        _wait(lambda: [e[1] for e in _call(url, "/queue")["queue_running"]] == ["slow"])
        time.sleep(0.2)  # inside the Sleep node
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    proc, url = _start(tmp_path)
    try:
        queue = _call(url, "/queue")
        ids = [e[1] for e in queue["queue_running"] + queue["queue_pending"]]
        assert ids == ["slow", "second", "third"]  # re-queued at the front, then the others in order
        history = _wait(lambda: (h := _call(url, "/history")) and len(h) == 3 and h)
        assert list(history) == ["slow", "second", "third"]
        status = history["slow"]["status"]
        assert status["status_str"] == "success" and status["resumed"] == 1
        assert status["messages"][0][0] == "execution_resumed" and status["messages"][0][1]["crashes"] == 1
        assert all(history[p]["status"]["status_str"] == "success" for p in ("second", "third"))
        assert "resumed" not in history["second"]["status"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
