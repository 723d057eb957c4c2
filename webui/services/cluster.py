"""One Easel front over many GPU workers (``--ray-address``): the dispatcher.

The front keeps the queue, the scheduler (``cluster_scheduler``) and every file: a worker runs a job with
saving off and sends back the encoded images with their infotexts; the front saves them, numbers them and
adds them to the history. Jobs are self-contained (the front's options travel with them, seeds are fixed
before queueing), so a job whose worker dies runs again on another worker and gives the same bytes; a job
that two workers died running fails with a message instead of being retried forever. The running job's
progress and live preview are copied to the front's progress (``/sdapi/v1/progress``, the browser's bar),
and Interrupt / Skip reach the worker. A job that saves its images is also written to the journal
(``cluster_journal``): when the front starts again after a crash, it runs the jobs that had not finished
and saves what they make, each image once.

Pure Python: a worker is anything with the ``WorkerHandle`` methods (``webui.runtime.cluster_worker``
makes them from Ray actors).
"""

from __future__ import annotations

import io
import logging
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from webui.domain.generation import GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.services.cluster_journal import JobJournal, JournalEntry
from webui.services.cluster_scheduler import QueuedJob, Scheduler, WorkerState

log = logging.getLogger(__name__)

Request = Txt2ImgRequest | Img2ImgRequest  # img2img requests carry their pictures (base64): self-contained

# a result as the journal keeps it: the images' bytes apart; the detected maps (returned to the caller only)
# left out
WITHOUT_BYTES: dict[str, Any] = {"images": {"__all__": {"png_bytes"}}, "detected_maps": True}
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


class Finish(Protocol):
    """Saves a job's images on the front (numbering, history); ``saved``: images of this job a previous
    run of the front saved already (index → path); ``on_saved`` hears of each image's file."""

    def __call__(
        self,
        request: Request,
        result: GenerationResult,
        saved: dict[int, str] | None = None,
        on_saved: Callable[[int, str], None] | None = None,
    ) -> GenerationResult: ...


class ClusterDispatcher:
    def __init__(
        self,
        handles: list[WorkerHandle],
        *,
        progress: Any,
        finish: Finish,
        options: Callable[[], dict[str, Any]],
        checkpoint: Callable[[Request], str],
        scheduler: Scheduler | None = None,
        journal: JobJournal | None = None,
        saves: Callable[[Request], bool] = lambda request: request.save_images,
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
        # job id → (its future, what the worker is sent, the generation request; None for a task)
        self._futures: dict[str, tuple[Future[Any], dict[str, Any], Request | None]] = {}
        self._running: dict[str, str] = {}  # job id → worker id
        self._shown: str | None = None  # the job whose progress the front shows (the latest started)
        self._info: dict[str, dict[str, Any]] = {}
        self.journal = journal  # jobs that save their images, on disk until they are saved
        self.saves = saves  # does a job save its images (and so go to the journal)?
        self._journaled: set[str] = set()
        self.losses: list[float] = []  # when each worker death was noticed (time.monotonic)
        self.retried = 0  # jobs run again after their worker died
        self.recovered = 0  # jobs taken back from the journal at start

    # -- submitting ----------------------------------------------------------------------------------------
    def submit(
        self,
        request: Request,
        task_id: str | None = None,
        *,
        user: str | None = None,
        interactive: bool | None = None,
    ) -> Future[GenerationResult]:
        """Queue ``request`` (its seeds fixed here, so any worker gives the same image) for ``user`` (the
        scheduler shares the workers fairly between users; default: "browser" or "api"); ``interactive``
        (default: an A1111 browser task id) jobs go before batch jobs. ``QueueFull`` when the queue is at
        its limit."""
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
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        if interactive is None:
            interactive = bool(task_id and task_id.startswith("task("))
        user = user or ("browser" if interactive else "api")
        job = QueuedJob(job_id, user, self.checkpoint(request), interactive)
        future: Future[GenerationResult] = Future()
        with self._lock:
            self.scheduler.submit(job)  # QueueFull goes to the caller
            if self.journal is not None and self.saves(request):
                try:
                    self.journal.add(
                        job_id, user=job.user, interactive=interactive, checkpoint=job.checkpoint,
                        request=request.model_dump(mode="json"), payload=payload,
                    )  # fmt: skip
                except BaseException:
                    self.scheduler.queue.remove(job)
                    raise
                self._journaled.add(job_id)
            self._futures[job_id] = (future, payload, request)
        self._pump()
        return future

    def submit_task(self, payload: dict[str, Any], user: str | None = None) -> Future[Any]:
        """Queue work other than a generation (``payload["mode"]``: "extras"): any free worker runs it (it
        needs no checkpoint); the future gets the worker's answer. Not journaled: its caller waits for it."""
        job = QueuedJob(f"task-{uuid.uuid4().hex[:12]}", user or "api", "", interactive=False)
        future: Future[Any] = Future()
        with self._lock:
            self.scheduler.submit(job)
            self._futures[job.job_id] = (future, payload, None)
        self._pump()
        return future

    def recover(self) -> int:
        """At start: the journal's jobs queued again (those whose worker had answered are only saved), in
        the order they were first queued; their images are saved as they finish. Returns their count."""
        if self.journal is None:
            return 0
        entries = []
        for entry in self.journal.unfinished():
            try:
                request = _request(entry.request, entry.payload["mode"])
            except (KeyError, ValueError) as exc:  # written by another version of Easel: not run
                log.error("cluster: job %s from the last run cannot be read, left out: %s", entry.job_id, exc)
                self.journal.forget(entry.job_id)
                continue
            entries.append(entry)
            future: Future[GenerationResult] = Future()
            future.add_done_callback(self._report_recovered)
            with self._lock:
                self._journaled.add(entry.job_id)
                self._futures[entry.job_id] = (future, entry.payload, request)
                if entry.result is None:
                    job = QueuedJob(entry.job_id, entry.user, entry.checkpoint, entry.interactive)
                    self.scheduler.restore(job)
            if entry.result is not None:
                saving = threading.Thread(target=self._save_answered, args=(entry, request, future))
                saving.daemon = True
                saving.start()
        self.recovered = len(entries)
        if entries:
            log.info("cluster: %d unfinished jobs from the last run taken up again", len(entries))
        self._pump()
        return len(entries)

    def _save_answered(self, entry: JournalEntry, request: Request, future: Future[GenerationResult]) -> None:
        """A journaled job whose worker had answered before the front stopped: its images saved."""
        assert entry.result is not None
        answer = dict(entry.result)
        answer["images"] = [
            {**image, "png_bytes": data} for image, data in zip(answer["images"], entry.images, strict=True)
        ]
        with self._lock:
            self._futures.pop(entry.job_id, None)
        future.set_running_or_notify_cancel()
        self._deliver(entry.job_id, request, GenerationResult.model_validate(answer), future, entry.saved)

    @staticmethod
    def _report_recovered(done: Future[GenerationResult]) -> None:
        error = None if done.cancelled() else done.exception()
        if error is not None:  # nobody waits for a job from the last run: its failure goes to the log
            log.error("cluster: a job from the last run failed: %s", error)

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
            self._forget(job.job_id)
            self._pump()
            return
        stop_watching = self._start_watching(job, handle, request)
        try:
            answer = handle.run(payload)
        except BaseException as error:
            stop_watching()
            if handle.died(error):
                self._lost(job, worker, error)
            else:
                self._settle(job, worker, None)
                self._forget(job.job_id)  # the job's own error (a bad request): it would fail again
                future.set_exception(error)
        else:
            stop_watching()
            self._settle(job, worker, answer.get("models"))
            if request is None:  # a task: the answer as it is
                future.set_result(answer["result"])
            else:
                try:
                    result = GenerationResult.model_validate(answer["result"])
                except BaseException as error:
                    self._forget(job.job_id)
                    future.set_exception(error)
                else:
                    self._deliver(job.job_id, request, result, future)
        self._pump()

    def _start_watching(
        self, job: QueuedJob, handle: WorkerHandle, request: Request | None
    ) -> Callable[[], None]:
        """A generation's progress shown while it runs (``_watch``); returns what stops that. A task shows
        none."""
        if request is None:
            return lambda: None
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(job, handle, request, done), daemon=True)
        watcher.start()

        def stop() -> None:
            done.set()
            watcher.join()

        return stop

    def _deliver(
        self,
        job_id: str,
        request: Request,
        result: GenerationResult,
        future: Future[GenerationResult],
        saved: dict[int, str] | None = None,
    ) -> None:
        """The worker's answer saved on the front (for a journaled job: the images into the journal first,
        each file's path as it is saved, then the job forgotten), and given to the caller."""
        journal = self.journal if job_id in self._journaled else None
        try:
            if journal is None:
                future.set_result(self.finish(request, result))
                return
            if saved is None:  # a fresh answer (a recovered one is in the journal already)
                bare = result.model_dump(mode="json", exclude=WITHOUT_BYTES)
                journal.answered(job_id, bare, [image.png_bytes or b"" for image in result.images])
            done = self.finish(request, result, saved, lambda index, path: journal.saved(job_id, index, path))
        except BaseException as error:  # saving failed (disk full...): the job's error; a journaled answer
            log.warning("job %s: its images could not be saved: %s", job_id, error)  # is saved at next start
            future.set_exception(error)
            return
        self._forget(job_id)
        future.set_result(done)

    def _forget(self, job_id: str) -> None:
        """The job is over (saved, failed or cancelled): out of the journal."""
        if job_id in self._journaled and self.journal is not None:
            self._journaled.discard(job_id)
            try:
                self.journal.forget(job_id)
            except Exception:
                log.warning("could not remove job %s from the queue journal", job_id, exc_info=True)

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
                self._forget(job.job_id)
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
        line = f"GPU workers: {alive} of {len(workers)} up, {busy} busy, {queued} queued ({loaded})"
        if self.recovered:  # the images are in outputs/ and the History, not in a page that is gone
            line += f"; {self.recovered} unfinished jobs from the last run taken up again (see the History)"
        return line

    def describe(self) -> dict[str, Any]:
        """``GET /easel/v1/cluster``: each worker, whether it is alive, what it has loaded, its queue (the
        job it runs), its device and memory; the front's queue, and each user's share of it."""
        with self._lock:
            states = {w.worker_id: (w.alive, w.busy, list(w.models)) for w in self.scheduler.workers.values()}
            queued = len(self.scheduler.queue)
            hits, assigned = self.scheduler.warm_hits, self.scheduler.assigned
            users = self.scheduler.users()
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
        counts = {
            "queued": queued, "warm_hits": hits, "assigned": assigned, "retried": self.retried,
            "recovered": self.recovered,
        }  # fmt: skip
        return {"workers": workers, **counts, "users": users}


def start_cluster(settings: Any, generation: Any) -> ClusterDispatcher:
    """The workers started on Ray (``settings.ray_address``) and the dispatcher over them."""
    from webui.runtime.cluster_worker import start_workers

    shared = settings.model_dump(exclude={"cmd_flags"})
    torch = sys.modules.get("torch")  # the front's CPU threads, when it has started torch
    threads = int(torch.get_num_threads()) if torch is not None else None
    handles = start_workers(settings.ray_address, settings.workers, settings.worker_gpus, shared, threads)
    dispatcher = ClusterDispatcher(
        list(handles),
        progress=generation.progress,
        finish=generation.save_remote,
        options=lambda: generation.options.get().model_dump(mode="json"),
        checkpoint=generation.checkpoint_name,
        journal=JobJournal(settings.cluster_journal_path),
        saves=generation.will_save,
    )
    dispatcher.recover()
    return dispatcher


def _request(fields: dict[str, Any], mode: str) -> Request:
    if mode == "img2img":
        return Img2ImgRequest.model_validate(fields)
    return Txt2ImgRequest.model_validate(fields)
