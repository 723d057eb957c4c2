"""A1111's task-aware ``/internal/progress`` and ``/internal/pending-tasks`` (``force_task_id``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.test_api_core import _client

SMALL = {"width": 64, "height": 64, "seed": 3, "sampler_name": "Euler", "prompt": "a slow one"}


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    yield from _client(data_dir)


def _wait(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_tasks_are_followed_from_queue_to_completion(client: TestClient) -> None:
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1})
    results: dict[str, int] = {}

    def run(task: str, steps: int) -> None:
        body = {**SMALL, "steps": steps, "force_task_id": task}
        results[task] = client.post("/sdapi/v1/txt2img", json=body).status_code

    first = threading.Thread(target=run, args=("task(first)", 150))
    first.start()

    def progress(task: str, **extra: object) -> dict:
        return client.post("/internal/progress", json={"id_task": task, **extra}).json()

    _wait(lambda: progress("task(first)")["active"] and (progress("task(first)")["progress"] or 0) > 0)
    second = threading.Thread(target=run, args=("task(second)", 2))
    second.start()
    _wait(lambda: client.get("/internal/pending-tasks").json()["size"] == 1)
    assert client.get("/internal/pending-tasks").json() == {"size": 1, "tasks": ["task(second)"]}
    queued = progress("task(second)")
    assert queued["queued"] and not queued["active"] and queued["textinfo"] == "In queue: 1/1"
    active = progress("task(first)", id_live_preview=-1)
    assert active["active"] and 0 < active["progress"] < 1
    if active.get("live_preview"):
        assert active["live_preview"].startswith("data:image/jpeg;base64,")
        again = progress("task(first)", id_live_preview=active["id_live_preview"])
        assert again["id_live_preview"] >= active["id_live_preview"]
    client.post("/sdapi/v1/interrupt")
    first.join(timeout=120)
    second.join(timeout=120)
    assert results == {"task(first)": 200, "task(second)": 200}
    done = progress("task(first)")
    assert done["completed"] and not done["active"] and not done["queued"]
    assert progress("task(unknown)") == {
        "active": False, "queued": False, "completed": False, "progress": None, "eta": None,
        "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting...",
    }  # fmt: skip
    assert client.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}
