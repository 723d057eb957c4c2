"""The stage runner both reference trainers share: run named stages in order, time each one and keep what it
measured in ``<work>/training.json`` (the record the model cards quote)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Record:
    """What the run did, written next to the model for the model card."""

    plan: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_stages(
    stages: Sequence[str],
    handlers: dict[str, Callable[[], dict[str, Any] | None]],
    work: Path,
    record: Record,
    *,
    device: str,
    resume: bool,
) -> None:
    """Run ``stages`` by name. A handler returns its statistics, or ``None`` for a stage that measures nothing
    (shipping, or work already done). ``resume`` keeps the statistics of stages run before (a partial run)."""
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "training.json"
    if resume and record_path.exists():
        record.stages = json.loads(record_path.read_text()).get("stages", {})
    started = time.perf_counter()
    for stage in stages:
        if stage not in handlers:
            raise SystemExit(f"unknown stage {stage!r}; the stages are {', '.join(handlers)}")
        stage_started = time.perf_counter()
        log(f"stage {stage} on {device}")
        stats = handlers[stage]()
        if stats is None:
            continue
        stats["device"] = device
        stats["wall_seconds"] = round(time.perf_counter() - stage_started)
        # The machine's load when the stage ended (1, 5, 15 min): a shared machine trains more slowly.
        stats["load_average"] = [round(x, 2) for x in os.getloadavg()]
        record.stages[stage] = stats
        record_path.write_text(json.dumps(record.__dict__, indent=2))
    log(f"done in {round(time.perf_counter() - started)} s")
