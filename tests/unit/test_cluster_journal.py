"""The cluster's durable queue (``--ray-address``) with stand-in workers (no Ray): a front that stops with
jobs queued and running takes them up again at its next start, with the same seeds; a job whose worker had
answered is saved without running again, and an image already written is not written twice; jobs that
fail, are cancelled or save nothing leave no trace in the journal."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.unit.test_cluster_dispatch import Worker
from webui.container import build_services
from webui.domain.generation import GeneratedImage, GenerationResult, Txt2ImgRequest
from webui.services.cluster import ClusterDispatcher
from webui.services.cluster_journal import JobJournal
from webui.services.progress import ProgressState
from webui.settings import Settings


class Stuck(Worker):
    """A worker whose job never ends while the test runs (the front "crashes" meanwhile)."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id, [])
        self.started = threading.Event()
        self.release = threading.Event()

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.payloads.append(payload)
        self.started.set()
        self.release.wait(30)
        raise RuntimeError("the old front is gone")


class Saver:
    """The front's saving as the dispatcher sees it: records what it was asked, notes each image."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[int, str] | None]] = []

    def __call__(
        self, request: Any, result: GenerationResult, saved: Any = None, on_saved: Any = None
    ) -> Any:
        self.calls.append((request.seed, saved))
        for index in range(len(result.images)):
            if on_saved is not None and index not in (saved or {}):
                on_saved(index, f"/outputs/{request.seed}-{index}.png")
        return result


def _front(journal: JobJournal, saver: Saver, *workers: Worker) -> ClusterDispatcher:
    return ClusterDispatcher(
        list(workers),
        progress=ProgressState(),
        finish=saver,
        options=lambda: {},
        checkpoint=lambda request: "tiny.safetensors",
        journal=journal,
    )


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_front_that_stops_takes_its_queued_and_running_jobs_up_again(tmp_path: Path) -> None:
    path = tmp_path / "cluster-queue.sqlite3"
    stuck = Stuck("w1")
    first = _front(JobJournal(path), Saver(), stuck)
    for prompt in ("a cat", "a dog"):
        first.submit(Txt2ImgRequest(prompt=prompt, seed=-1, save_images=True), user="ann")
    first.submit(
        Txt2ImgRequest(prompt="a fox", seed=-1, save_images=True), user="browser:bo", interactive=True
    )
    first.submit(Txt2ImgRequest(prompt="not saved", save_images=False))  # nothing to lose: not journaled
    assert stuck.started.wait(10)
    entries = JobJournal(path).unfinished()  # the running job and the two queued ones
    sent = {e.request["prompt"]: e.request["seed"] for e in entries}
    assert [(e.request["prompt"], e.user, e.interactive) for e in entries] == [
        ("a cat", "ann", False), ("a dog", "ann", False), ("a fox", "browser:bo", True)
    ]  # fmt: skip

    # the front stops here (its running job never comes back); a new one starts on the same data dir
    saver, worker = Saver(), Worker("w1", [])
    second = _front(JobJournal(path), saver, worker)
    assert second.recover() == 3
    for _ in range(200):
        if len(saver.calls) == 3:
            break
        threading.Event().wait(0.05)
    ran = [p["request"] for p in worker.payloads]
    # the page's job first, then the others in the order first queued, with the seeds fixed before the stop
    assert [r["prompt"] for r in ran] == ["a fox", "a cat", "a dog"]
    assert {r["prompt"]: r["seed"] for r in ran} == sent
    assert all(saved is None for _seed, saved in saver.calls)  # fresh answers
    for _ in range(100):
        if len(JobJournal(path)) == 0:
            break
        threading.Event().wait(0.05)
    assert len(JobJournal(path)) == 0  # all saved: forgotten
    assert second.describe()["recovered"] == 3
    assert "3 unfinished jobs from the last run taken up again" in second.summary()  # the top bar says so
    stuck.release.set()


def test_an_answered_job_is_saved_without_running_again_and_keeps_its_saved_files(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path / "q.sqlite3")
    request = Txt2ImgRequest(prompt="a cat", seed=7, save_images=True)
    images = [GeneratedImage(seed=7 + i, subseed=0, prompt="a cat", negative_prompt="", infotext="x",
                             png_bytes=_png((i, 0, 0))) for i in range(2)]  # fmt: skip
    result = GenerationResult(request=request, images=images, model_name="tiny", model_hash=None)
    fields = request.model_dump(mode="json")
    payload = {"mode": "txt2img", "request": {}}
    journal.add("job-1", user="api", interactive=False, checkpoint="tiny", request=fields, payload=payload)
    bare = result.model_dump(mode="json", exclude={"images": {"__all__": {"png_bytes"}}})
    journal.answered("job-1", bare, [image.png_bytes or b"" for image in images])
    journal.saved("job-1", 0, "/outputs/00000-7.png")  # the front stopped after the first file

    saver, worker = Saver(), Worker("w1", [])
    front = _front(journal, saver, worker)
    assert front.recover() == 1
    for _ in range(100):
        if len(journal) == 0:
            break
        threading.Event().wait(0.05)
    assert worker.payloads == []  # not run again
    assert saver.calls == [(7, {0: "/outputs/00000-7.png"})]
    assert len(journal) == 0


def test_failed_and_cancelled_jobs_leave_the_journal(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path / "q.sqlite3")
    stuck = Stuck("w1")
    front = _front(journal, Saver(), Worker("w0", ["fail"]))
    with pytest.raises(ValueError, match="sampler"):
        front.submit(Txt2ImgRequest(prompt="a cat", save_images=True)).result(timeout=10)
    assert len(journal) == 0  # the job's own error: it would fail again after a restart
    front = _front(journal, Saver(), stuck)
    front.submit(Txt2ImgRequest(prompt="runs", save_images=True))
    assert stuck.started.wait(10)
    queued = front.submit(Txt2ImgRequest(prompt="cancelled", save_images=True))
    assert len(journal) == 2 and queued.cancel()
    stuck.release.set()
    for _ in range(100):
        if len(journal) == 0:
            break
        threading.Event().wait(0.05)
    assert len(journal) == 0


@pytest.fixture
def generation(tmp_path: Path) -> Any:
    services = build_services(Settings(data_dir=tmp_path, preload_model=False, nowebui=True))
    yield services.generation
    services.generation.shutdown()


def test_the_fronts_saving_never_writes_an_image_twice(generation: Any) -> None:
    request = Txt2ImgRequest(prompt="a cat", seed=7, save_images=True)
    images = [GeneratedImage(seed=7, subseed=0, prompt="a cat", negative_prompt="", infotext="x",
                             png_bytes=_png((i * 80, 0, 0))) for i in range(3)]  # fmt: skip
    result = GenerationResult(request=request, images=images, model_name="tiny", model_hash=None)
    noted: dict[int, str] = {}
    first = generation.save_remote(request, result, None, noted.__setitem__)
    paths = [image.path for image in first.images]
    assert len(set(paths)) == 3 and noted == dict(enumerate(paths))
    # the front stopped after writing the second file but before noting it: the journal knows only one
    again = generation.save_remote(request, result, {0: paths[0]}, None)
    assert [image.path for image in again.images] == paths
    folder = Path(paths[0]).parent
    assert len(list(folder.iterdir())) == 3  # nothing written twice
    fresh = generation.save_remote(request, result)  # a new job with the same bytes: new files
    assert len(list(folder.iterdir())) == 6 and fresh.images[0].path not in paths


def test_a_broken_queue_file_is_kept_aside_and_unreadable_jobs_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cluster-queue.sqlite3"
    path.write_bytes(b"this is not a database, but a user may need what is left of it" * 20)
    journal = JobJournal(path)  # starts empty instead of keeping the workers from starting
    assert len(journal) == 0
    (kept,) = tmp_path.glob("cluster-queue.sqlite3.broken-*")
    assert kept.read_bytes().startswith(b"this is not a database")
    common: dict[str, Any] = {"user": "api", "interactive": False, "checkpoint": "tiny"}
    payload = {"mode": "txt2img", "request": {}}
    journal.add("job-old", **common, request={"prompt": "x", "steps": "many"}, payload=payload)
    good = Txt2ImgRequest(prompt="a cat", seed=3, save_images=True).model_dump(mode="json")
    journal.add("job-ok", **common, request=good, payload=payload)
    worker = Worker("w1", [])
    front = _front(journal, Saver(), worker)
    assert front.recover() == 1  # the unreadable one (another version's fields) is logged and dropped
    assert "job-old" in caplog.text
    for _ in range(100):
        if len(journal) == 0:
            break
        threading.Event().wait(0.05)
    assert len(journal) == 0 and len(worker.payloads) == 1
