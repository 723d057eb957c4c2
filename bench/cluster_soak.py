"""Soak of the cluster front (``--ray-address``): 200 jobs / 400 images with 5 worker kills and one front
restart; then the idle memory of a real cluster front.

The front here is Easel's ``ClusterDispatcher`` with its journal and the real saving of the front
(``GenerationService.save_remote``: numbered files, atomic writes) in a process of its own, over a private
Ray (loopback) with two stand-in workers: a job sleeps ``--job`` seconds and answers two PNG images that
depend only on its seed. Measured:

* a fault-free run of the jobs (one front process, no kill);
* the same jobs with three worker kills, then the front and its Ray killed with ``kill -9`` (a crash) once
  about 40 % of the images are saved, then a new front on the same data dir that takes the journal up and
  kills two more workers: the count of files (exactly the images asked for), their bytes against the
  fault-free run's, temp files left, retries;
* idle memory: ``python app.py --ray-address local --workers 2`` (the real front with its UI, no job run),
  the resident memory of the front and of Ray's head processes (GCS, raylet and helpers), the workers apart.

    python bench/cluster_soak.py [--jobs 200] [--job 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _front(data: Path, submit: int, kills: list[int], job: float) -> None:
    """One front process: submits ``submit`` jobs (none when taking a journal up), kills a busy worker
    when the outputs reach each count in ``kills``, exits when the journal is empty."""
    import io

    import ray
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from webui.container import build_services
    from webui.domain.generation import GeneratedImage, GenerationResult, Txt2ImgRequest
    from webui.runtime.cluster_worker import RayWorker, connect
    from webui.services.cluster import ClusterDispatcher
    from webui.services.cluster_journal import JobJournal
    from webui.services.progress import ProgressState
    from webui.settings import Settings

    @ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4, num_cpus=0)
    class SoakWorker:
        def ping(self) -> str:
            return "ok"

        def run(self, payload: dict[str, Any]) -> dict[str, Any]:
            request = Txt2ImgRequest.model_validate(payload["request"])
            time.sleep(job)
            images = []
            for offset in range(request.batch_size):
                seed = request.seed + offset
                picture = Image.frombytes("RGB", (16, 16), seed.to_bytes(8, "little") * 96)
                info = PngInfo()
                info.add_text("parameters", f"{request.prompt}\nSteps: 1, Seed: {seed}")
                buffer = io.BytesIO()
                picture.save(buffer, format="PNG", pnginfo=info)
                image = GeneratedImage(seed=seed, subseed=0, prompt=request.prompt, negative_prompt="",
                                       infotext=request.prompt, png_bytes=buffer.getvalue())  # fmt: skip
                images.append(image)
            result = GenerationResult(request=request, images=images, model_name="soak", model_hash=None)
            return {"result": result.model_dump(mode="python"), "models": ["soak"]}

        def progress(self) -> dict[str, Any]:
            return {"state": {}, "textinfo": None}

        def interrupt(self, skip: bool = False) -> None:
            return None

        def info(self) -> dict[str, Any]:
            return {"device": "stand-in", "memory": {}, "models": ["soak"]}

    connect("local")
    services = build_services(Settings(data_dir=data, preload_model=False, nowebui=True))
    generation = services.generation
    actors = [SoakWorker.remote() for _ in range(2)]
    ray.get([actor.ping.remote() for actor in actors])
    journal = JobJournal(data / "cluster-queue.sqlite3")
    dispatcher = ClusterDispatcher(
        [RayWorker(f"w{index}", actor) for index, actor in enumerate(actors)],
        progress=ProgressState(), finish=generation.save_remote, options=dict,
        checkpoint=lambda request: "soak", journal=journal, saves=generation.will_save,
    )  # fmt: skip
    recovered = dispatcher.recover()
    for index in range(submit):
        request = Txt2ImgRequest(prompt=f"soak {index}", seed=10 * index, batch_size=2, save_images=True)
        dispatcher.submit(request, user=f"api:user{index % 3}")
    print("submitted", flush=True)
    outputs = data / "outputs"
    for threshold in kills:
        while len(list(outputs.rglob("*.png"))) < threshold:
            time.sleep(0.02)
        while not dispatcher._running:
            time.sleep(0.01)
        (worker_id, *_) = list(dispatcher._running.values())
        ray.kill(dispatcher.handles[worker_id].actor, no_restart=False)
    while len(journal):
        time.sleep(0.1)
    summary = {"recovered": recovered, "retried": dispatcher.retried, "losses": len(dispatcher.losses)}
    print("done " + json.dumps(summary), flush=True)
    ray.shutdown()


def _spawn(data: Path, submit: int, kills: list[int], job: float) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--front", str(data), "--submit", str(submit), "--job", str(job)]
    command += ["--kills", ",".join(map(str, kills))]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)


def _images(data: Path) -> dict[int, bytes]:
    files = sorted((data / "outputs").rglob("*.png"))
    return {int(path.stem.split("-")[1]): path.read_bytes() for path in files}


def _wait_done(front: subprocess.Popen[str], timeout: float) -> dict[str, int]:
    assert front.stdout is not None
    deadline = time.monotonic() + timeout
    for line in front.stdout:
        if line.startswith("done "):
            front.wait(60)
            return dict(json.loads(line[5:]))
        if time.monotonic() > deadline:
            break
    front.kill()
    raise SystemExit(f"the front did not finish (exit {front.poll()})")


def _soak(jobs: int, job: float, rows: list[tuple[str, str]]) -> None:
    images = 2 * jobs
    with tempfile.TemporaryDirectory(prefix="easel-soak-") as root:
        clean, faulty = Path(root) / "clean", Path(root) / "faulty"
        start = time.perf_counter()
        _wait_done(_spawn(clean, jobs, [], job), 900)
        rows.append(("fault-free run", f"{len(_images(clean))} files in {time.perf_counter() - start:.1f} s"))

        start = time.perf_counter()
        first = _spawn(faulty, jobs, [images // 10, images // 5, images * 3 // 10], job)
        while len(list((faulty / "outputs").rglob("*.png"))) < images * 2 // 5:
            assert first.poll() is None, "the first front exited early"
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGKILL)  # the front and its private Ray, at once
        first.wait(30)
        at_crash = len(list((faulty / "outputs").rglob("*.png")))
        second = _spawn(faulty, 0, [images * 3 // 5, images * 4 // 5], job)
        summary = _wait_done(second, 900)
        wall = time.perf_counter() - start
        made, expected = _images(faulty), _images(clean)
        files = len(list((faulty / "outputs").rglob("*.png")))
        temps = [p for p in (faulty / "outputs").rglob("*") if p.name.startswith(".easel-tmp")]
        identical = made == expected
        rows.append(
            (
                f"soak: {jobs} jobs / {images} images, 5 worker kills, front killed at {at_crash} files",
                f"{files} files ({'byte-identical' if identical else 'DIFFERENT'} to the fault-free run), "
                f"{len(temps)} temp files, {summary['recovered']} jobs taken up after the restart, "
                f"{summary['retried']} retried after worker kills in the second front, {wall:.1f} s",
            )
        )


def _idle_memory(rows: list[tuple[str, str]]) -> None:
    import httpx
    import psutil

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="easel-idle-") as data:
        command = [sys.executable, "app.py", "--port", str(port), "--api", "--data-dir", data]
        command += ["--ray-address", "local", "--workers", "2"]
        front = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    page = httpx.get(f"http://127.0.0.1:{port}/easel/v1/cluster", timeout=5).json()
                    if page["workers"] and all(w["alive"] for w in page["workers"]):
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(1)
            httpx.get(f"http://127.0.0.1:{port}/", timeout=30)  # the page served once
            time.sleep(10)  # idle
            parent = psutil.Process(front.pid)
            front_rss = parent.memory_info().rss
            head = workers = 0
            for child in parent.children(recursive=True):
                try:
                    name, rss = " ".join(child.cmdline()), child.memory_info().rss
                except psutil.Error:
                    continue
                if "EaselWorker" in name or "default_worker.py" in name:
                    workers += rss
                else:
                    head += rss
            mib = 1024 * 1024
            rows.append(
                (
                    "idle memory, `app.py --ray-address local --workers 2` (no job yet)",
                    f"front {front_rss / mib:.0f} MiB + Ray head {head / mib:.0f} MiB = "
                    f"{(front_rss + head) / mib:.0f} MiB (the 2 workers: {workers / mib:.0f} MiB)",
                )
            )
        finally:
            os.killpg(front.pid, signal.SIGKILL)
            front.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs of two images each")
    parser.add_argument("--job", type=float, default=0.1, help="seconds a stand-in job sleeps")
    parser.add_argument("--front", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--submit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--kills", default="", help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true", help="only the soak")
    args = parser.parse_args()
    if args.front is not None:
        _front(args.front, args.submit, [int(n) for n in args.kills.split(",") if n], args.job)
        return
    rows: list[tuple[str, str]] = []
    _soak(args.jobs, args.job, rows)
    if not args.skip_memory:
        _idle_memory(rows)
    print("| measure | result |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")
    threading.Event().wait(0.1)


if __name__ == "__main__":
    main()
