"""Queue and history survive a new app on the same user folder; resumed prompts are marked."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.server import QueueItem, SQLiteQueue
from tests.server.conftest import MakeClient, chain, gated, make_settings, until_done, wait_for

pytestmark = pytest.mark.asyncio


async def test_queue_and_history_survive_restart(make_client: MakeClient, tmp_path: Path) -> None:
    first = await make_client(make_settings(tmp_path))
    ws = await first.ws_connect("/ws?clientId=r")
    await ws.receive_json()
    done = (await (await first.post("/prompt", json={"prompt": chain(1), "client_id": "r"})).json())["prompt_id"]
    await until_done(ws, done)
    await ws.close()
    await first.close()

    queue_only = await make_client(make_settings(tmp_path, worker=False))
    waiting = [(await (await queue_only.post("/prompt", json={"prompt": chain(i)})).json())["prompt_id"]
               for i in (2, 3)]
    assert [e[1] for e in (await (await queue_only.get("/queue")).json())["queue_pending"]] == waiting
    await queue_only.close()

    second = await make_client(make_settings(tmp_path))
    assert done in await (await second.get("/history")).json()

    async def all_done() -> bool:
        history = await (await second.get("/history")).json()
        return list(history) == [done, *waiting]
    await wait_for(all_done)
    numbers = [(await (await second.get(f"/history/{p}")).json())[p]["prompt"][0] for p in [done, *waiting]]
    assert numbers == [0, 1, 2]


async def test_prompt_cut_off_by_a_crash_is_resumed_first_and_marked(make_client: MakeClient,
                                                                     tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.user_dir is not None
    store = SQLiteQueue(settings.user_dir / "latentgraph.sqlite3")
    store.put(QueueItem(number=0, prompt_id="cut", prompt=chain(8), extra_data={"client_id": "z"}, outputs=["3"]))
    store.put(QueueItem(number=1, prompt_id="next", prompt=chain(9), outputs=["3"]))
    store.get_next(timeout=0)  # "cut" is running when the process dies (no task_done, no close)

    client = await make_client(settings)  # the worker starts at once: read what happened from history

    async def cut_done() -> bool:
        return "cut" in await (await client.get("/history")).json()
    await wait_for(cut_done)
    history = (await (await client.get("/history/cut")).json())["cut"]
    assert history["status"]["resumed"] == 1 and history["status"]["status_str"] == "success"
    messages = history["status"]["messages"]
    assert [m[0] for m in messages] == ["execution_resumed", "execution_start", "execution_cached",
                                        "execution_success"]
    resumed = messages[0][1]
    assert (resumed["prompt_id"], resumed["resumed"], resumed["crashes"]) == ("cut", 1, 1)
    assert messages[1][1]["resumed"] == 1

    async def next_done() -> bool:
        return "next" in await (await client.get("/history")).json()
    await wait_for(next_done)
    assert list(await (await client.get("/history")).json()) == ["cut", "next"]


async def test_prompt_that_keeps_crashing_the_server_is_not_retried(make_client: MakeClient,
                                                                    tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.user_dir is not None
    path = settings.user_dir / "latentgraph.sqlite3"
    SQLiteQueue(path).put(QueueItem(number=0, prompt_id="poison", prompt=chain(8), outputs=["3"]))
    for _ in range(3):  # three crashes while it runs
        SQLiteQueue(path).get_next(timeout=0)
    client = await make_client(settings)

    async def recorded() -> bool:
        return "poison" in await (await client.get("/history")).json()
    await wait_for(recorded)
    entry = (await (await client.get("/history/poison")).json())["poison"]
    error = entry["status"]["messages"][-1]
    assert error[0] == "execution_error" and error[1]["exception_type"] == "ServerStopped"
    assert "stopped 3 times" in error[1]["exception_message"]


async def test_clean_shutdown_puts_the_running_prompt_back(make_client: MakeClient, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    client = await make_client(settings)
    await client.post("/prompt", json={"prompt": gated("stop"), "prompt_id": "running"})
    await client.post("/prompt", json={"prompt": chain(1), "prompt_id": "waiting"})

    async def started() -> bool:
        return [e[1] for e in (await (await client.get("/queue")).json())["queue_running"]] == ["running"]
    await wait_for(started)
    await client.close()  # app shutdown: the worker interrupts the prompt and releases it
    assert settings.user_dir is not None
    store = SQLiteQueue(settings.user_dir / "latentgraph.sqlite3")
    assert store.recovered == []
    assert [(i.prompt_id, i.resumed, i.crashes) for i in store.pending()] == [("running", 1, 0), ("waiting", 0, 0)]
    assert store.history() == {}
