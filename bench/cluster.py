"""The cluster dispatcher on a private Ray (loopback), with sleep-bound stand-in workers.

Each stand-in is a Ray actor that takes a job by sleeping ``--job`` seconds, plus ``--load`` seconds when
the job's checkpoint is not the one it holds (a worker keeps one model). The front is Easel's
``ClusterDispatcher`` and ``Scheduler`` as they run in ``--ray-address`` mode. Measured:

* dispatch overhead: one worker, jobs of 0 s one after another; the median submit → result time;
* scaling efficiency at 2 and 8 workers: 4 jobs per worker submitted at once (ideal wall time over
  measured);
* warm-model hit rate on a mixed-model trace (4 workers, 4 checkpoints, 80 jobs) with Easel's scheduler
  and with affinity switched off (first free worker, FIFO);
* recovery: a worker killed in the middle of a job; the time until the dispatcher notices.

    python bench/cluster.py [--job 0.5] [--load 1.0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from webui.domain.generation import GeneratedImage, GenerationResult, Txt2ImgRequest  # noqa: E402
from webui.runtime.cluster_worker import RayWorker, connect  # noqa: E402
from webui.services.cluster import ClusterDispatcher  # noqa: E402
from webui.services.cluster_scheduler import Scheduler  # noqa: E402
from webui.services.progress import ProgressState  # noqa: E402


@ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4, num_cpus=0)
class StandIn:
    def __init__(self, job: float, load: float) -> None:
        self.job, self.load, self.held, self.loads = job, load, "", 0

    def ping(self) -> str:
        return "ok"

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        request = Txt2ImgRequest.model_validate(payload["request"])
        wanted = request.checkpoint or ""
        if wanted != self.held:
            self.loads += 1
            self.held = wanted
            time.sleep(self.load)
        time.sleep(self.job)
        image = GeneratedImage(seed=request.seed, subseed=request.subseed, prompt="", negative_prompt="",
                               infotext="")  # fmt: skip
        result = GenerationResult(request=request, images=[image], model_name=wanted, model_hash=None)
        return {"result": result.model_dump(mode="python"), "models": [wanted]}

    def progress(self) -> dict[str, Any]:
        return {"state": {}, "textinfo": None}

    def interrupt(self, skip: bool = False) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return {"device": "stand-in", "memory": {}, "models": [self.held] if self.held else []}

    def load_count(self) -> int:
        return int(self.loads)


class Fifo(Scheduler):
    """Affinity off: the workers' models are not recorded, so a job takes the first free worker."""

    def finished(self, worker_id: str, models: list[str] | None = None) -> None:
        super().finished(worker_id, None)


def _cluster(
    count: int, job: float, load: float, scheduler: Scheduler | None = None
) -> tuple[Any, list[Any]]:
    actors = [StandIn.remote(job, load) for _ in range(count)]
    ray.get([actor.ping.remote() for actor in actors])
    handles = [RayWorker(f"w{index}", actor) for index, actor in enumerate(actors)]
    dispatcher = ClusterDispatcher(
        handles, progress=ProgressState(), finish=lambda request, result: result, options=dict,
        checkpoint=lambda request: request.checkpoint or "", scheduler=scheduler,
    )  # fmt: skip
    return dispatcher, actors


def _request(checkpoint: str = "a", seed: int = 1) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt="x", checkpoint=checkpoint, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=float, default=0.5, help="seconds a stand-in job sleeps")
    parser.add_argument("--load", type=float, default=1.0, help="seconds a model switch adds")
    args = parser.parse_args()
    connect("local")
    rows: list[tuple[str, str]] = []

    dispatcher, actors = _cluster(1, 0.0, 0.0)
    dispatcher.submit(_request()).result()
    times = []
    for index in range(50):
        start = time.perf_counter()
        dispatcher.submit(_request(seed=index)).result()
        times.append(time.perf_counter() - start)
    rows.append(
        (
            "dispatch overhead (0 s jobs, 1 worker, 50 jobs)",
            f"median {1000 * statistics.median(times):.1f} ms",
        )
    )
    for actor in actors:
        ray.kill(actor)

    for count in (2, 8):
        dispatcher, actors = _cluster(count, args.job, 0.0)
        jobs = 4 * count
        start = time.perf_counter()
        futures = [dispatcher.submit(_request(seed=index)) for index in range(jobs)]
        for future in futures:
            future.result()
        wall = time.perf_counter() - start
        ideal = jobs * args.job / count
        efficiency = f"{wall:.2f} s (ideal {ideal:.2f} s): efficiency {100 * ideal / wall:.1f} %"
        rows.append((f"scaling, {count} workers, {jobs} jobs of {args.job} s", efficiency))
        for actor in actors:
            ray.kill(actor)

    trace_rng = random.Random(7)
    models = ["m1", "m2", "m3", "m4"]
    trace, current = [], "m1"
    for _ in range(80):  # runs of jobs on one model, as users work: a switch one time in four
        if trace_rng.random() < 0.25:
            current = trace_rng.choice(models)
        trace.append(current)
    for name, scheduler in (("Easel", Scheduler()), ("FIFO", Fifo())):
        dispatcher, actors = _cluster(4, args.job, args.load, scheduler)
        start = time.perf_counter()
        futures = [dispatcher.submit(_request(model, index)) for index, model in enumerate(trace)]
        for future in futures:
            future.result()
        wall = time.perf_counter() - start
        loads = sum(ray.get([actor.load_count.remote() for actor in actors]))
        hits = f"warm hits {100 * (1 - loads / len(trace)):.1f} % ({loads} loads), {wall:.1f} s"
        rows.append((f"mixed-model trace, {name} (4 workers, 4 models, 80 jobs)", hits))
        for actor in actors:
            ray.kill(actor)

    dispatcher, actors = _cluster(2, 3.0, 0.0)
    future = dispatcher.submit(_request())
    while not dispatcher._running:
        time.sleep(0.01)
    time.sleep(0.5)
    (worker_id,) = dispatcher._running.values()
    killed = time.monotonic()
    ray.kill(dispatcher.handles[worker_id].actor, no_restart=False)
    future.result()
    done = time.monotonic()
    noticed = (
        f"noticed after {dispatcher.losses[0] - killed:.2f} s, job done {done - killed:.2f} s after the kill"
    )
    rows.append(("recovery: worker killed mid-job (3 s jobs)", noticed))
    threading.Event().wait(0.1)

    print("| measure | result |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
