"""Progress of the running job, in the shape A1111's ``/sdapi/v1/progress`` reports it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProgressState:
    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    textinfo: str = ""
    interrupted: bool = False
    skipped: bool = False
    job_timestamp: str = ""
    started: float = 0.0
    preview: Any = None  # PIL image of the latest live preview, or None
    preview_step: int = -1
    busy: bool = False
    # An extension script's job (many jobs in one): busy and interruptible between its jobs too
    script_running: bool = False
    script_interrupted: bool = False
    script_text: str = ""  # the script's own line ("X/Y/Z plot: cell 3 of 9"), shown before the job's
    script_fraction: float | None = None  # the script's share done; None: the running job's
    script_started: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int, steps: int) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.sampling_step, self.sampling_steps = 0, steps
            self.interrupted = self.skipped = False
            self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
            self.started = time.monotonic()
            self.preview, self.preview_step = None, -1
            self.textinfo = "Starting"
            self.busy = True

    def step(self, step: int, steps: int, textinfo: str | None = None) -> None:
        with self._lock:
            self.sampling_step, self.sampling_steps = step, steps
            if textinfo is not None:
                self.textinfo = textinfo

    def mirror(self, job_no: int, step: int, steps: int, textinfo: str | None) -> None:
        """Another process's job state, copied here (a Ray worker's, for ``/sdapi/v1/progress``)."""
        with self._lock:
            self.job_no, self.sampling_step, self.sampling_steps = job_no, step, steps
            if textinfo:
                self.textinfo = textinfo

    def next_batch(self) -> None:
        with self._lock:
            self.job_no += 1
            self.sampling_step = 0
            self.skipped = False

    def set_preview(self, image: Any, step: int) -> None:
        with self._lock:
            self.preview, self.preview_step = image, step

    def set_text(self, textinfo: str) -> None:
        with self._lock:
            self.textinfo = textinfo

    def end(self) -> None:
        with self._lock:
            self.busy = self.script_running
            self.job = ""
            self.sampling_step = 0
            self.textinfo = ""

    def interrupt(self) -> None:
        with self._lock:
            if self.busy:
                self.interrupted = True
                self.script_interrupted = self.script_running

    def begin_script(self, title: str) -> None:
        """A script's job starts: the progress stays busy (and Interrupt reaches it) until ``end_script``."""
        self.begin(title, 1, 0)
        with self._lock:
            self.script_running, self.script_interrupted = True, False
            self.script_text, self.script_fraction = "", None
            self.script_started = self.started
            self.textinfo = ""

    def set_script_progress(self, text: str, fraction: float | None = None) -> None:
        with self._lock:
            self.script_text = text
            self.script_fraction = None if fraction is None else max(0.0, min(1.0, fraction))

    def end_script(self) -> None:
        with self._lock:
            self.script_running = self.script_interrupted = False
            self.script_text, self.script_fraction = "", None
        self.end()

    def skip(self) -> None:
        with self._lock:
            if self.busy:
                self.skipped = True

    def _text(self) -> str:
        if self.script_running and self.script_text:
            return f"{self.script_text} · {self.textinfo}" if self.textinfo else self.script_text
        return self.textinfo

    @property
    def fraction(self) -> float:
        if self.busy and self.script_running and self.script_fraction is not None:
            return self.script_fraction
        if not self.busy or self.job_count == 0:
            return 0.0
        per_job = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
        return min(1.0, (self.job_no + per_job) / self.job_count)

    def eta_seconds(self) -> float:
        fraction = self.fraction
        if not self.busy or fraction <= 0:
            return 0.0
        scripted = self.script_running and self.script_fraction is not None
        elapsed = time.monotonic() - (self.script_started if scripted else self.started)
        return max(0.0, elapsed / fraction - elapsed)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "progress": self.fraction,
                "eta_relative": self.eta_seconds(),
                "state": {
                    "skipped": self.skipped,
                    "interrupted": self.interrupted,
                    "stopping_generation": False,
                    "job": self.job,
                    "job_count": self.job_count if self.busy else 0,
                    "job_timestamp": self.job_timestamp,
                    "job_no": self.job_no,
                    "sampling_step": self.sampling_step,
                    "sampling_steps": self.sampling_steps,
                },
                "textinfo": self._text() or None,
                "busy": self.busy,
            }


FINISHED_TASKS_KEPT = 16  # as A1111: how many finished task ids /internal/progress still knows


@dataclass
class TaskRegistry:
    """Task ids of queued, running and recently finished jobs (A1111's ``force_task_id`` / ``id_task``).

    Clients that send ``force_task_id`` with a generation can follow it through ``/internal/progress`` and
    see the queue in ``/internal/pending-tasks``. Jobs without an id are not tracked.
    """

    pending: list[str] = field(default_factory=list)
    current: str | None = None
    finished: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def queued(self, task_id: str) -> None:
        with self._lock:
            self.pending.append(task_id)

    def started(self, task_id: str) -> None:
        with self._lock:
            if task_id in self.pending:
                self.pending.remove(task_id)
            self.current = task_id

    def done(self, task_id: str) -> None:
        with self._lock:
            if task_id in self.pending:
                self.pending.remove(task_id)
            if self.current == task_id:
                self.current = None
            self.finished.append(task_id)
            del self.finished[:-FINISHED_TASKS_KEPT]

    def state(self, task_id: str | None) -> dict[str, Any]:
        """``active`` / ``queued`` / ``completed`` and the queue position of ``task_id``."""
        with self._lock:
            queued = task_id in self.pending
            return {
                "active": task_id is not None and task_id == self.current,
                "queued": queued,
                "completed": task_id in self.finished,
                "position": self.pending.index(task_id) + 1 if queued and task_id is not None else 0,
                "queue_size": len(self.pending),
            }

    def pending_ids(self) -> list[str]:
        with self._lock:
            return list(self.pending)
