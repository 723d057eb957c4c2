"""One Easel front over many GPU workers (``--ray-address``): the dispatcher.

The front keeps the queue, the scheduler (``cluster_scheduler``) and every file: a worker runs a job with
saving off and sends back the encoded images with their infotexts; the front saves them, numbers them and
adds them to the history. Jobs are self-contained (the front's options travel with them, seeds are fixed
before queueing), so a job whose worker dies runs again on another worker and gives the same bytes; a job
that two workers died running fails with a message instead of being retried forever. The running job's
progress and live preview are copied to the front's progress (``/sdapi/v1/progress``, the browser's bar),
and Interrupt / Skip reach the worker.

Pure Python: a worker is anything with the ``WorkerHandle`` methods (``webui.runtime.cluster_worker``
makes them from Ray actors).
"""

from __future__ import annotations

import io
import itertools
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from webui.domain.generation import GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.services.cluster_scheduler import QueuedJob, Scheduler, WorkerState

log = logging.getLogger(__name__)

Request = Txt2ImgRequest | Img2ImgRequest  # img2img requests carry their pictures (base64): self-contained

POLL_SECONDS = 0.25  # how often a running job's progress is copied from its worker
SEED_LIMIT = 2**32


class WorkerHandle(Protocol):
    worker_id: str

    def run(self, payload: dict[str, Any]) -> dict[str, Any]: ...  # blocks until the job is done

    def progress(self) -> dict[str, Any]: ...

    def interrupt(self, skip: bool = False) -> None: ...

    def info(self) -> dict[str, Any]: ...  # device, memory, models

    def died(self, error: BaseException) -> bool: ...  # was ``error`` the worker's death?

    def wait_alive(self, timeout: float) -> bool: ...


class WorkerLost(RuntimeError):
    """The job's workers died running it (twice): not retried again."""


class ClusterDispatcher:
    def __init__(
        self,
        handles: list[WorkerHandle],
        *,
        progress: Any,
        finish: Callable[[Request, GenerationResult], GenerationResult],
        options: Callable[[], dict[str, Any]],
        checkpoint: Callable[[Request], str],
        scheduler: Scheduler | None = None,
    ) -> None:
        self.handles = {handle.worker_id: handle for handle in handles}
        self.scheduler = scheduler or Scheduler()
        for worker_id in self.handles:
            self.scheduler.add_worker(worker_id)
        self.progress = progress
        self.finish = finish  # saves the images on the front (numbering, history)
        self.options = options  # the front's options, sent with each job
        self.checkpoint = checkpoint  # the name a job's model is known by
        self._lock = threading.Lock()
        self._futures: dict[str, tuple[Future[GenerationResult], dict[str, Any], Request]] = {}
        self._running: dict[str, str] = {}  # job id → worker id
        self._shown: str | None = None  # the job whose progress the front shows (the latest started)
        self._ids = itertools.count(1)
        self._info: dict[str, dict[str, Any]] = {}
        self.losses: list[float] = []  # when each worker death was noticed (time.monotonic)
        self.retried = 0  # jobs run again after their worker died

    # -- submitting ----------------------------------------------------------------------------------------
    def submit(self, request: Request, task_id: str | None = None) -> Future[GenerationResult]:
        """Queue ``request`` (its seeds fixed here, so any worker gives the same image); ``QueueFull`` when
        the queue is at its limit."""
        fixed = {
            "seed": request.seed if request.seed >= 0 else random.randrange(SEED_LIMIT),
            "subseed": request.subseed if request.subseed >= 0 else random.randrange(SEED_LIMIT),
        }
        request = request.model_copy(update=fixed)
        sent = request.model_copy(
            update={
                "save_images": False,
                "override_settings": {**self.options(), **request.override_settings},
            }
        )
        payload = {"mode": request.mode, "request": sent.model_dump(mode="json")}
        job_id = f"job-{next(self._ids)}"
        interactive = bool(task_id and task_id.startswith("task("))
        job = QueuedJob(job_id, "browser" if interactive else "api", self.checkpoint(request), interactive)
        future: Future[GenerationResult] = Future()
        with self._lock:
            self.scheduler.submit(job)  # QueueFull goes to the caller
            self._futures[job_id] = (future, payload, request)
        self._pump()
        return future

    def _pump(self) -> None:
        with self._lock:
            started = self.scheduler.assign()
            for job, worker in started:
                self._running[job.job_id] = worker.worker_id
        for job, worker in started:
            threading.Thread(
                target=self._run, args=(job, worker), name=f"easel-cluster-{job.job_id}", daemon=True
            ).start()

    # -- running -------------------------------------------------------------------------------------------
    def pending(self) -> int:
        with self._lock:
            return len(self.scheduler.queue)

    def _run(self, job: QueuedJob, worker: WorkerState) -> None:
        future, payload, request = self._futures[job.job_id]
        handle = self.handles[worker.worker_id]
        if not future.running() and not future.set_running_or_notify_cancel():  # cancelled while queued
            self._settle(job, worker, None)
            self._pump()
            return
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(job, handle, request, done), daemon=True)
        watcher.start()
        try:
            answer = handle.run(payload)
        except BaseException as error:
            done.set()
            watcher.join()
            if handle.died(error):
                self._lost(job, worker, error)
            else:
                self._settle(job, worker, None)
                future.set_exception(error)
        else:
            done.set()
            watcher.join()
            models = answer.get("models")
            self._settle(job, worker, models)
            try:
                result = GenerationResult.model_validate(answer["result"])
                future.set_result(self.finish(request, result))
            except BaseException as error:  # saving on the front failed (disk full...): the job's error
                future.set_exception(error)
        self._pump()

    def _settle(self, job: QueuedJob, worker: WorkerState, models: list[str] | None) -> None:
        with self._lock:
            self.scheduler.finished(worker.worker_id, models)
            self._running.pop(job.job_id, None)
            self._futures_done(job.job_id)

    def _futures_done(self, job_id: str) -> None:
        self._futures.pop(job_id, None)
        if self._shown == job_id:
            self._shown = None
            self.progress.end()

    def _lost(self, job: QueuedJob, worker: WorkerState, error: BaseException) -> None:
        future = self._futures[job.job_id][0]
        log.warning("worker %s died running %s: %s", worker.worker_id, job.job_id, error)
        with self._lock:
            self.losses.append(time.monotonic())
            self.scheduler.worker_lost(worker.worker_id)
            self._running.pop(job.job_id, None)
            job.excluded.add(worker.worker_id)
            if len(job.excluded) >= 2:
                self._futures_done(job.job_id)
                future.set_exception(
                    WorkerLost(
                        "Two GPU workers stopped while running this job (out of memory, or a crash), so it "
                        "is not retried. Try a smaller size or batch, and see the workers' logs."
                    )
                )
            else:
                self.retried += 1
                self.scheduler.requeue(job)
        threading.Thread(target=self._rejoin, args=(worker.worker_id,), daemon=True).start()

    def _rejoin(self, worker_id: str) -> None:
        """A worker that died comes back (Ray restarts it) and takes jobs again."""
        while not self.handles[worker_id].wait_alive(timeout=5.0):
            pass
        with self._lock:
            self.scheduler.worker_back(worker_id)
        log.info("worker %s is back", worker_id)
        self._pump()

    def _watch(self, job: QueuedJob, handle: WorkerHandle, request: Request, done: threading.Event) -> None:
        """Copy the running job's progress and preview to the front, and the front's Interrupt / Skip to
        the worker, while the job runs."""
        with self._lock:
            self._shown = job.job_id
        self.progress.begin(request.mode, request.n_iter, request.steps)
        preview_step = -1
        sent_interrupt = sent_skip = False
        while not done.wait(POLL_SECONDS):
            if self._shown != job.job_id:
                continue
            if self.progress.interrupted and not sent_interrupt:
                sent_interrupt = self._safely(handle.interrupt)
            if self.progress.skipped and not sent_skip:
                sent_skip = self._safely(lambda: handle.interrupt(skip=True))
            try:
                state = handle.progress()
            except Exception:  # the worker died: ``run`` says so
                continue
            inner = state.get("state", {})
            self.progress.mirror(
                int(inner.get("job_no", 0)),
                int(inner.get("sampling_step", 0)),
                int(inner.get("sampling_steps", 0)) or request.steps,
                state.get("textinfo"),
            )
            preview = state.get("preview")
            if preview and state.get("preview_step", -1) != preview_step:
                from PIL import Image

                preview_step = int(state["preview_step"])
                self.progress.set_preview(Image.open(io.BytesIO(preview)), preview_step)

    @staticmethod
    def _safely(call: Callable[[], Any]) -> bool:
        try:
            call()
        except Exception:
            log.debug("could not reach the worker", exc_info=True)
        return True

    # -- the cluster page --------------------------------------------------------------------------------
    def summary(self) -> str:
        """One line for the studio's status bar (no call to the workers)."""
        with self._lock:
            workers = list(self.scheduler.workers.values())
            queued = len(self.scheduler.queue)
        alive = sum(w.alive for w in workers)
        busy = sum(w.busy for w in workers)
        loaded = "; ".join(f"{w.worker_id}: {', '.join(w.models) or '—'}" for w in workers if w.alive)
        return f"GPU workers: {alive} of {len(workers)} up, {busy} busy, {queued} queued ({loaded})"

    def describe(self) -> dict[str, Any]:
        """``GET /easel/v1/cluster``: each worker, whether it is alive, what it has loaded, its queue (the
        job it runs), its device and memory; the front's queue."""
        with self._lock:
            states = {w.worker_id: (w.alive, w.busy, list(w.models)) for w in self.scheduler.workers.values()}
            queued = len(self.scheduler.queue)
            hits, assigned = self.scheduler.warm_hits, self.scheduler.assigned
        workers = []
        for worker_id, (alive, busy, models) in states.items():
            info = self._info.get(worker_id, {})
            if alive and not busy:
                try:
                    info = self._info[worker_id] = self.handles[worker_id].info()
                except Exception:
                    info = self._info.get(worker_id, {})
            workers.append(
                {
                    "id": worker_id,
                    "alive": alive,
                    "models": models or info.get("models", []),
                    "queue": int(busy),
                    "device": info.get("device", ""),
                    "memory": info.get("memory", {}),
                }
            )
        counts = {"queued": queued, "warm_hits": hits, "assigned": assigned, "retried": self.retried}
        return {"workers": workers, **counts}


def start_cluster(settings: Any, generation: Any) -> ClusterDispatcher:
    """The workers started on Ray (``settings.ray_address``) and the dispatcher over them."""
    from webui.runtime.cluster_worker import start_workers

    shared = settings.model_dump(exclude={"cmd_flags"})
    torch = sys.modules.get("torch")  # the front's CPU threads, when it has started torch
    threads = int(torch.get_num_threads()) if torch is not None else None
    handles = start_workers(settings.ray_address, settings.workers, settings.worker_gpus, shared, threads)
    return ClusterDispatcher(
        list(handles),
        progress=generation.progress,
        finish=generation.save_remote,
        options=lambda: generation.options.get().model_dump(mode="json"),
        checkpoint=generation.checkpoint_name,
    )
