"""Which queued job each free GPU worker runs next (``--ray-address``; pure Python, no Ray).

In two rounds: first each free worker takes, by the rules below, only a job for a checkpoint it has
loaded (a starving job excepted); then the free workers left (the one with the fewest models loaded
first: its cache loses least) take any job. A worker takes:

1. a job that has waited longer than ``starve_after`` seconds, oldest first, wherever its model is, so
   affinity can never starve it;
2. else, among the jobs of the best rank — interactive (the browser) before batch (the API), then the
   user with the fewest jobs started so far, so one user's hundred queued jobs do not hold back another
   user's one — the oldest whose checkpoint this worker has loaded (no load from disk);
3. else the oldest of them that no other worker has loaded, else the oldest: a free worker never idles
   while work waits.

A job whose worker died is not given to that worker again. The queue has a limit: past it a new job is
refused with the seconds after which to retry.
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

    def restore(self, job: QueuedJob) -> None:
        """A job taken back from the journal at start: queued in the order given, whatever the limit."""
        job.submitted = job.submitted or self.clock()
        self.queue.append(job)

    def requeue(self, job: QueuedJob) -> None:
        """A job back at the head of its place in line (its worker died): not counted against the limit."""
        self.queue.insert(0, job)

    def _rank(self, job: QueuedJob) -> tuple[int, int]:
        """Interactive before batch, then the user with the fewest jobs started."""
        return (0 if job.interactive else 1, self.started.get(job.user, 0))

    def _pick(self, worker: WorkerState, now: float, warm_only: bool) -> QueuedJob | None:
        """The job ``worker`` runs next (see the module's docstring), or ``None``."""
        candidates = [job for job in self.queue if worker.worker_id not in job.excluded]
        if not candidates:
            return None
        starving = [job for job in candidates if now - job.submitted > self.starve_after]
        if starving:
            return min(starving, key=lambda job: job.submitted)
        best = min(self._rank(job) for job in candidates)
        group = [job for job in candidates if self._rank(job) == best]
        warm = [job for job in group if worker.has(job.checkpoint)]
        if warm or warm_only:
            return min(warm, key=lambda job: job.submitted) if warm else None
        others = [w for w in self.workers.values() if w.alive and w is not worker]
        cold = [job for job in group if not any(w.has(job.checkpoint) for w in others)]
        return min(cold or group, key=lambda job: job.submitted)  # never idle while work waits

    def assign(self) -> list[tuple[QueuedJob, WorkerState]]:
        """Jobs to start now, each with its worker (marked busy); the queue keeps the rest. First every free
        worker takes a job for a model it has loaded; then the others choose, the one whose cache would
        lose least first."""
        started: list[tuple[QueuedJob, WorkerState]] = []
        now = self.clock()
        for warm_only in (True, False):
            free = [w for w in self.workers.values() if w.alive and not w.busy]
            for worker in sorted(free, key=lambda w: (len(w.models), w.jobs_done)):
                job = self._pick(worker, now, warm_only)
                if job is None:
                    continue
                self.queue.remove(job)
                worker.busy = True
                self.started[job.user] = self.started.get(job.user, 0) + 1
                self.assigned += 1
                self.warm_hits += worker.has(job.checkpoint)
                started.append((job, worker))
        return started

    def users(self) -> list[dict[str, object]]:
        """Each user's jobs waiting and started so far (the fair shares), the most waiting first."""
        waiting: dict[str, int] = {}
        for job in self.queue:
            waiting[job.user] = waiting.get(job.user, 0) + 1
        names = sorted(set(waiting) | set(self.started), key=lambda name: (-waiting.get(name, 0), name))
        return [
            {"user": name, "queued": waiting.get(name, 0), "started": self.started.get(name, 0)}
            for name in names
        ]

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
