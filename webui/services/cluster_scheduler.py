"""Which queued job each free GPU worker runs next (``--ray-address``; pure Python, no Ray).

The order, for every free worker in turn:

1. a job that has waited longer than ``starve_after`` seconds goes first (oldest first), wherever its
   model is, so affinity can never starve it;
2. interactive jobs (the browser) before batch jobs (the API);
3. fairness: the user (or API key) with the fewest jobs started so far goes first, so one user's hundred
   queued jobs do not hold back another user's one;
4. then the oldest job.

The job so chosen goes to a free worker that has its checkpoint loaded when there is one (no load from
disk), else to the free worker whose loaded models are fewest (its cache loses the least). A job whose
worker died is not given to that worker again. The queue has a limit: past it a new job is refused with
the seconds after which to retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The cluster's queue is at its limit; retry after ``retry_after`` seconds."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            f"The generation queue is full ({limit} jobs waiting). Try again in about {retry_after} s."
        )
        self.retry_after = retry_after


@dataclass
class QueuedJob:
    job_id: str
    user: str
    checkpoint: str  # the title or name the job's model is known by on the workers
    interactive: bool = False
    submitted: float = 0.0
    excluded: set[str] = field(default_factory=set)  # workers that died running it


@dataclass
class WorkerState:
    worker_id: str
    alive: bool = True
    busy: bool = False
    models: list[str] = field(default_factory=list)  # checkpoints loaded on it, least recently used first
    jobs_done: int = 0

    def has(self, checkpoint: str) -> bool:
        return any(checkpoint in (name, name.split(" [")[0]) for name in self.models)


class Scheduler:
    """Not thread-safe by itself: the dispatcher calls it under its lock."""

    def __init__(
        self,
        *,
        max_queue: int = 256,
        starve_after: float = 30.0,
        seconds_per_job: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_queue = max_queue
        self.starve_after = starve_after
        self.seconds_per_job = seconds_per_job  # for Retry-After: a typical job's time
        self.clock = clock
        self.workers: dict[str, WorkerState] = {}
        self.queue: list[QueuedJob] = []
        self.started: dict[str, int] = {}  # jobs started per user
        self.warm_hits = self.assigned = 0

    def add_worker(self, worker_id: str) -> None:
        self.workers[worker_id] = WorkerState(worker_id)

    def submit(self, job: QueuedJob) -> None:
        if len(self.queue) >= self.max_queue:
            alive = max(1, sum(1 for w in self.workers.values() if w.alive))
            raise QueueFull(self.max_queue, max(1, round(len(self.queue) * self.seconds_per_job / alive)))
        if not job.submitted:
            job.submitted = self.clock()
        self.queue.append(job)

    def requeue(self, job: QueuedJob) -> None:
        """A job back at the head of its place in line (its worker died): not counted against the limit."""
        self.queue.insert(0, job)

    def _order(self, job: QueuedJob, now: float) -> tuple[int, int, int, float]:
        starving = 0 if now - job.submitted > self.starve_after else 1
        return (starving, 0 if job.interactive else 1, self.started.get(job.user, 0), job.submitted)

    def assign(self) -> list[tuple[QueuedJob, WorkerState]]:
        """Jobs to start now, each with its worker (marked busy); the queue keeps the rest."""
        started: list[tuple[QueuedJob, WorkerState]] = []
        now = self.clock()
        while self.queue:
            free = [w for w in self.workers.values() if w.alive and not w.busy]
            if not free:
                break
            chosen: tuple[QueuedJob, WorkerState] | None = None
            for job in sorted(self.queue, key=lambda j: self._order(j, now)):
                usable = [w for w in free if w.worker_id not in job.excluded]
                if usable:
                    warm = [w for w in usable if w.has(job.checkpoint)]
                    worker = warm[0] if warm else min(usable, key=lambda w: (len(w.models), w.jobs_done))
                    chosen = (job, worker)
                    break
            if chosen is None:
                break
            job, worker = chosen
            self.queue.remove(job)
            worker.busy = True
            self.started[job.user] = self.started.get(job.user, 0) + 1
            self.assigned += 1
            self.warm_hits += worker.has(job.checkpoint)
            started.append(chosen)
        return started

    def finished(self, worker_id: str, models: list[str] | None = None) -> None:
        worker = self.workers[worker_id]
        worker.busy = False
        worker.jobs_done += 1
        if models is not None:
            worker.models = models

    def worker_lost(self, worker_id: str) -> None:
        worker = self.workers[worker_id]
        worker.alive = worker.busy = False
        worker.models = []

    def worker_back(self, worker_id: str) -> None:
        worker = self.workers[worker_id]
        worker.alive, worker.busy = True, False
