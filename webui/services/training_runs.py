"""A training run as Easel follows it: its settings, where it is (state, step, losses, eval losses,
samples, result), the one-line progress the page shows, and the JSON the API returns and ``run.json``
keeps. :class:`~webui.services.training.TrainingService` creates, queues and updates runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.domain.training import RunState, TrainSettings


class RunNotFoundError(KeyError):
    def __str__(self) -> str:
        return f"no training run {self.args[0]!r}; GET /easel/v1/train lists them"


@dataclass
class TrainingRun:
    id: str
    settings: TrainSettings
    model_title: str
    family: str
    run_dir: Path
    dataset_dir: Path
    state: RunState = RunState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    step: int = 0
    total: int = 0
    losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss on the fixed eval set)
    learning_rate: float | None = None
    elapsed: float = 0.0  # seconds of training steps (loading and encoding not counted)
    samples: list[dict[str, Any]] = field(default_factory=list)  # {"step", "paths", "prompts"}
    result: str | None = None  # the saved file's name
    error: str | None = None
    status: str = "Waiting for the device"
    summary: dict[str, Any] = field(default_factory=dict)
    peak_memory: int | None = None
    _stop: bool = field(default=False, repr=False)
    _cancel: bool = field(default=False, repr=False)
    _process: Any = field(default=None, repr=False)
    _future: Any = field(default=None, repr=False)
    _outcome: RunState | None = field(
        default=None, repr=False
    )  # the trainer's "done", before it is published
    _resume: bool = field(default=False, repr=False)  # the next start goes on from the saved state
    _warning: str | None = field(default=None, repr=False)  # said again in the final status

    @property
    def resumable(self) -> bool:
        """A stopped LoRA or DreamBooth run whose training state was kept can go on from where it stopped."""
        return (
            self.state is RunState.STOPPED
            and self.settings.method in ("lora", "dreambooth")
            and (self.run_dir / "state.pt").is_file()
        )

    @property
    def name(self) -> str:
        return self.settings.name

    def smoothed_loss(self, window: int = 20) -> float | None:
        if not self.losses:
            return None
        recent = self.losses[-window:]
        return sum(recent) / len(recent)

    def steps_per_second(self) -> float | None:
        return self.step / self.elapsed if self.step and self.elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        rate = self.steps_per_second()
        return (self.total - self.step) / rate if rate and self.state is RunState.RUNNING else None

    def progress_text(self) -> str:
        """One line for the page: ``Step 12/100 · 3.1 it/s · ETA 0:28 · lr 1e-04 · loss 0.121 (smoothed
        0.118) · eval loss 0.109``."""
        if self.state is RunState.QUEUED:
            return "Queued: waiting for the device"
        parts = [f"Step {self.step}/{self.total}"]
        rate = self.steps_per_second()
        if rate:
            parts.append(f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it")
        eta = self.eta_seconds()
        if eta is not None:
            parts.append(f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
        if self.learning_rate is not None:
            parts.append(f"lr {self.learning_rate:.2e}")
        smoothed = self.smoothed_loss()
        if self.losses and smoothed is not None:
            parts.append(f"loss {self.losses[-1]:.4f} (smoothed {smoothed:.4f})")
        if self.eval_losses:
            parts.append(f"eval loss {self.eval_losses[-1][1]:.4f}")
        if self.peak_memory:
            parts.append(f"peak memory {self.peak_memory / 2**30:.2f} GiB")
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "method": self.settings.method,
            "model": self.model_title,
            "family": self.family,
            "state": self.state.value,
            "status": self.status if not self.state.finished else self.state.value,
            "step": self.step,
            "total": self.total,
            "loss": self.losses,
            "eval_loss": [[step, loss] for step, loss in self.eval_losses],
            "loss_smoothed": self.smoothed_loss(),
            "learning_rate": self.learning_rate,
            "steps_per_second": self.steps_per_second(),
            "eta_seconds": self.eta_seconds(),
            "samples": [
                {"step": sample["step"], "images": [Path(p).name for p in sample["paths"]]}
                for sample in self.samples
            ],
            "result": self.result,
            "resumable": self.resumable,
            "error": self.error,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "peak_memory": self.peak_memory,
            "dataset": self.summary,
            "settings": self.settings.model_dump(mode="json"),
        }

    def record(self) -> dict[str, Any]:
        """What ``run.json`` keeps (the API's fields, the sample paths and the folders)."""
        data = self.to_json()
        data["samples"] = self.samples
        data["elapsed"] = self.elapsed
        data["dataset_dir"] = str(self.dataset_dir)
        return data
