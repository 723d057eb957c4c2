"""The cluster dispatcher with stand-in workers (no Ray): a job whose worker dies runs again elsewhere with
the same payload (seeds fixed before queueing), two deaths fail the job with a message, a job's own error
reaches the caller and frees the worker, and Interrupt reaches the worker running the job."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from webui.domain.generation import GeneratedImage, GenerationResult, Txt2ImgRequest
from webui.services.cluster import ClusterDispatcher, WorkerLost
from webui.services.progress import ProgressState


class Died(Exception):
    pass


class Worker:
    def __init__(self, worker_id: str, behaviour: list[str]) -> None:
        self.worker_id = worker_id
        self.behaviour = behaviour  # per call: "ok", "die", "fail" or "wait" (until interrupted)
        self.payloads: list[dict[str, Any]] = []
        self.interrupted = threading.Event()

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.payloads.append(payload)
        what = self.behaviour.pop(0) if self.behaviour else "ok"
        if what == "die":
            raise Died(f"{self.worker_id} died")
        if what == "fail":
            raise ValueError("the sampler is not known")
        if what == "wait":
            assert self.interrupted.wait(10)
        request = Txt2ImgRequest.model_validate(payload["request"])
        image = GeneratedImage(seed=request.seed, subseed=request.subseed, prompt=request.prompt,
                               negative_prompt="", infotext=self.worker_id)  # fmt: skip
        result = GenerationResult(request=request, images=[image], model_name="tiny", model_hash=None)
        return {"result": result.model_dump(mode="python"), "models": ["tiny.safetensors"]}

    def progress(self) -> dict[str, Any]:
        return {"state": {"job_no": 0, "sampling_step": 1, "sampling_steps": 4}, "textinfo": "Batch 1 of 1"}

    def interrupt(self, skip: bool = False) -> None:
        self.interrupted.set()

    def info(self) -> dict[str, Any]:
        return {"device": "cpu", "memory": {}, "models": []}

    def died(self, error: BaseException) -> bool:
        return isinstance(error, Died)

    def wait_alive(self, timeout: float) -> bool:
        return True


def _dispatcher(*workers: Worker) -> ClusterDispatcher:
    return ClusterDispatcher(
        list(workers),
        progress=ProgressState(),
        finish=lambda request, result: result,
        options=lambda: {"samples_format": "png"},
        checkpoint=lambda request: "tiny.safetensors",
    )


def test_a_job_whose_worker_dies_runs_again_elsewhere_with_the_same_seeds() -> None:
    first, second = Worker("w1", ["die"]), Worker("w2", [])
    dispatcher = _dispatcher(first, second)
    result = dispatcher.submit(Txt2ImgRequest(prompt="a cat", seed=-1)).result(timeout=10)
    assert result.images[0].infotext == "w2"
    (died,) = first.payloads
    (ran,) = second.payloads
    assert died == ran and died["request"]["seed"] >= 0  # fixed once, before queueing
    assert ran["request"]["save_images"] is False  # workers never write; the front does
    assert ran["request"]["override_settings"]["samples_format"] == "png"  # the front's options travel
    assert dispatcher.retried == 1


def test_a_job_that_two_workers_die_running_fails_with_a_message() -> None:
    dispatcher = _dispatcher(Worker("w1", ["die"]), Worker("w2", ["die"]))
    with pytest.raises(WorkerLost, match="Two GPU workers stopped while running this job"):
        dispatcher.submit(Txt2ImgRequest(prompt="a cat")).result(timeout=10)


def test_the_jobs_own_error_reaches_the_caller_and_the_worker_goes_on() -> None:
    dispatcher = _dispatcher(Worker("w1", ["fail", "ok"]))
    with pytest.raises(ValueError, match="sampler"):
        dispatcher.submit(Txt2ImgRequest(prompt="a cat")).result(timeout=10)
    assert dispatcher.submit(Txt2ImgRequest(prompt="a cat", seed=5)).result(timeout=10).images[0].seed == 5
    (worker,) = dispatcher.describe()["workers"]
    assert worker["alive"] and worker["queue"] == 0 and worker["models"] == ["tiny.safetensors"]


def test_interrupt_on_the_front_reaches_the_worker_and_progress_comes_back() -> None:
    worker = Worker("w1", ["wait"])
    dispatcher = _dispatcher(worker)
    future = dispatcher.submit(Txt2ImgRequest(prompt="a cat", steps=4))
    progress = dispatcher.progress
    for _ in range(100):
        if progress.snapshot()["state"]["sampling_step"] == 1:
            break
        threading.Event().wait(0.05)
    assert future.running()  # the page shows the job's progress, not "waiting"
    assert progress.snapshot()["textinfo"] == "Batch 1 of 1"  # copied from the worker
    progress.interrupt()
    assert future.result(timeout=10).images
    assert worker.interrupted.is_set()
    assert not progress.snapshot()["busy"]


def test_a_task_runs_on_a_free_worker_and_is_retried_once_if_it_dies() -> None:
    class Upscaler(Worker):
        def run(self, payload: dict[str, Any]) -> dict[str, Any]:
            if payload["mode"] != "extras":
                return super().run(payload)
            self.payloads.append(payload)
            if self.behaviour and self.behaviour.pop(0) == "die":
                raise Died(f"{self.worker_id} died")
            return {"result": [{"png": b"x", "info": {"by": self.worker_id}}], "models": []}

    dispatcher = _dispatcher(Upscaler("w1", ["die"]), Upscaler("w2", []))
    answer = dispatcher.submit_task({"mode": "extras", "request": {}}).result(timeout=10)
    assert answer == [{"png": b"x", "info": {"by": "w2"}}] and dispatcher.retried == 1
    assert dispatcher.describe()["queued"] == 0
