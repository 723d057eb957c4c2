"""Easel's GPU workers as Ray actors (``--ray-address``); imported only when that flag is given.

Each worker is one actor holding Easel's services with their own engine and model cache, on its own GPU
(``num_gpus``) or the CPU. It reads models from the front's folders (a shared models folder on a cluster)
and never writes an image: it sends the encoded images back to the front. Ray restarts a worker that dies
(``max_restarts=-1``); the front notices the death when the job's call fails, at once.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _worker_class() -> Any:
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)
    class EaselWorker:
        """One worker: Easel's services without a web server or saving."""

        def __init__(
            self, settings: dict[str, Any], threads: int | None = None, omp_threads: str | None = None
        ) -> None:
            import os
            import sys

            # Ray starts actors with OMP_NUM_THREADS=1, which would leave the CPU's share of a job (and a
            # CPU worker's whole job) on one thread: torch's own default instead, or the front's setting.
            if "torch" not in sys.modules:
                if omp_threads is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = omp_threads
            import torch

            from webui.container import build_services
            from webui.settings import Settings

            if threads:  # the front's CPU threads: a CPU job then computes exactly as on the front
                torch.set_num_threads(threads)

            # The front's folders (models, options, caches) are read as they are; what a worker would write
            # goes to a folder of its own (it never saves an image: the front does).
            private = Path(tempfile.mkdtemp(prefix="easel-worker-"))
            values = {**settings, "outputs_dir": private / "outputs"}
            values.update(preload_model=False, nowebui=True, api=False, ray_address=None)
            self.services = build_services(Settings(**values))
            self.services.generation.history = None  # the front's history index is the front's alone

        def ping(self) -> str:
            return "ok"

        def run(self, payload: dict[str, Any]) -> dict[str, Any]:
            from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest

            generation = self.services.generation
            if payload["mode"] == "extras":  # upscaling and face restoration (the front saves)
                from webui.domain.upscalers import ExtrasRequest

                extras = ExtrasRequest.model_validate(payload["request"])
                return {"result": self.services.extras.process_on_worker(extras), "models": self.models()}
            if payload["mode"] == "img2img":
                result = generation.img2img(Img2ImgRequest.model_validate(payload["request"]))
            else:
                result = generation.txt2img(Txt2ImgRequest.model_validate(payload["request"]))
            return {"result": result.model_dump(mode="python"), "models": self.models()}

        def progress(self) -> dict[str, Any]:
            state = self.services.generation.progress
            snapshot: dict[str, Any] = state.snapshot()
            preview = state.preview
            if preview is not None:
                buffer = io.BytesIO()
                preview.save(buffer, format="PNG")
                snapshot["preview"], snapshot["preview_step"] = buffer.getvalue(), state.preview_step
            return snapshot

        def interrupt(self, skip: bool = False) -> None:
            progress = self.services.generation.progress
            progress.skip() if skip else progress.interrupt()

        def models(self) -> list[str]:
            engine = self.services.generation._engine
            return [] if engine is None else [model.record.name for model in engine.cache.loaded()]

        def info(self) -> dict[str, Any]:
            import torch

            engine = self.services.generation._engine
            device = engine.choice.describe() if engine is not None else "not started"
            memory: dict[str, int] = {}
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                memory = {"free": int(free), "total": int(total)}
            return {"device": device, "memory": memory, "models": self.models()}

    return EaselWorker


class RayWorker:
    """The front's handle on one worker actor (``webui.services.cluster.WorkerHandle``)."""

    def __init__(self, worker_id: str, actor: Any) -> None:
        self.worker_id = worker_id
        self.actor = actor

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The job's answer; the job's own error (a bad request, an unknown upscaler...) is raised as it
        was on the worker, without Ray's wrapping, so the API and the page show its message."""
        import ray
        from ray.exceptions import RayTaskError

        try:
            answer: dict[str, Any] = ray.get(self.actor.run.remote(payload))
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        return answer

    def progress(self) -> dict[str, Any]:
        import ray

        state: dict[str, Any] = ray.get(self.actor.progress.remote(), timeout=5)
        return state

    def interrupt(self, skip: bool = False) -> None:
        self.actor.interrupt.remote(skip)

    def info(self) -> dict[str, Any]:
        import ray

        info: dict[str, Any] = ray.get(self.actor.info.remote(), timeout=5)
        return info

    def died(self, error: BaseException) -> bool:
        from ray.exceptions import ActorUnavailableError, RayActorError

        return isinstance(error, RayActorError | ActorUnavailableError)

    def wait_alive(self, timeout: float) -> bool:
        import ray

        try:
            ray.get(self.actor.ping.remote(), timeout=timeout)
            return True
        except Exception:
            time.sleep(0.2)
            return False


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``local``: start a private one on this machine, bound to the
    loopback interface). A private Ray's processes end with the thread that started them, so ``ray.init``
    runs in a thread of its own that lives as long as Easel."""
    import ray

    if ray.is_initialized():
        return
    ready = threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            if address == "local":
                ray.init(include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
            else:
                ray.init(address=address, include_dashboard=False, logging_level="WARNING")
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        threading.Event().wait()  # keeps the thread, and so Ray's processes, alive

    threading.Thread(target=hold, name="easel-ray", daemon=True).start()
    ready.wait()
    if failure:
        raise RuntimeError(f"could not start or join Ray at {address!r}: {failure[0]}") from failure[0]


def start_workers(
    address: str, count: int | None, gpus: float | None, settings: dict[str, Any], threads: int | None = None
) -> list[RayWorker]:
    """Connect to Ray (``local``: a private Ray on this machine, bound to the loopback interface) and start
    ``count`` workers (default: one per GPU in the cluster, else one) with ``gpus`` GPUs each (default 1
    when the cluster has GPUs, else 0), using ``threads`` CPU threads each (default: torch's)."""
    import ray

    connect(address)
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = gpus if gpus is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    count = count or (int(cluster_gpus // gpus) if gpus else 1) or 1
    device = "cuda" if gpus > 0 else "cpu"
    worker = _worker_class().options(num_gpus=gpus, num_cpus=0)
    omp = os.environ.get("OMP_NUM_THREADS")
    actors = [worker.remote({**settings, "device": device}, threads, omp) for _ in range(count)]
    ray.get([actor.ping.remote() for actor in actors])
    log.info("cluster: %d workers on Ray (%s), %s GPU each", count, address, gpus)
    return [RayWorker(f"worker-{index + 1}", actor) for index, actor in enumerate(actors)]
