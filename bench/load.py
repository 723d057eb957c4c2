"""Many users at once: N concurrent clients × M requests over the REST API of a real Easel server.

A server (``app.py --nowebui``) is started on 127.0.0.1 with a data dir of its own: the shipped reference
checkpoint and a second checkpoint with other weights (the reference UNet with seeded noise added), the
shipped reference LoRA and ControlNet. Each client sends its requests one after another; the clients run at
the same time. Requests mix txt2img, img2img, inpaint, hires fix, ControlNet and LoRA jobs, each with its own
checkpoint (``override_settings``), LoRA set, ControlNet unit and seed, and asks the server to save. With
``--gradio-clients K`` (default 1) the last K clients go through the browser's Gradio API instead
(``gradio_client``, the UI's ``/txt2img``: txt2img, hires fix and LoRA jobs on the selected checkpoint).

Checked afterwards:

* every request answered 200 with its images;
* its infotext matches the request (prompt, seed, steps, size, checkpoint, denoising, hires, LoRA, ControlNet)
  and is the one embedded in the returned PNG;
* its pixels equal a serial run of the same request (sent again, one at a time, after the concurrent run);
* ``outputs/`` holds exactly one complete, readable file per returned image, each carrying the parameters of
  one returned image (none lost, none overwritten), distinct numbers, no temp file.

Reported: p50/p95 latency; queue wait (latency minus the same request's serial latency); the server's RSS
after the first jobs (20, or half the run when smaller) and after the run. Bounded in count (clients ×
requests) and in time (``--time-limit``: no new request starts after it).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/load.py                   # 3 clients × 4 requests (2-core CPU)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/load.py --clients 8 --requests 25    # the full size
    HF_HUB_OFFLINE=1 .venv/bin/python bench/load.py --json /tmp/load.json --keep /tmp/load-data
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHIPPED = REPO / "models"
CHECKPOINTS = ["easel-reference", "easel-reference-b"]
LORA = "easel-reference-grayscale"
CONTROLNET = "easel-reference-edges"
KINDS = ["txt2img", "img2img", "inpaint", "hires", "controlnet", "lora"]
GRADIO_KINDS = ["txt2img", "hires", "lora"]
GRADIO_TXT2IMG = "gradio:/txt2img"
# Request fields the UI's txt2img endpoint takes (the rest are A1111 API fields).
GRADIO_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg_scale",
    "sampler_name",
    "width",
    "height",
    "enable_hr",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "denoising_strength",
)
SHAPES = ["circle", "square", "triangle"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------- data dir


def prepare_data_dir(root: Path) -> Path:
    """A data dir with two checkpoints, the reference LoRA and the reference ControlNet."""
    import torch
    from safetensors.torch import load_file, save_file

    models = root / "models"
    checkpoints = models / "Stable-diffusion"
    checkpoints.mkdir(parents=True, exist_ok=True)
    reference = SHIPPED / "Stable-diffusion" / "easel-reference"
    shutil.copytree(reference, checkpoints / CHECKPOINTS[0])
    other = checkpoints / CHECKPOINTS[1]
    shutil.copytree(reference, other)
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    generator = torch.Generator().manual_seed(19)
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.02
            tensors[name] = (tensor.float() + noise).to(tensor.dtype)
    save_file(tensors, str(weights))
    (models / "Lora").mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / "Lora" / f"{LORA}.safetensors", models / "Lora" / f"{LORA}.safetensors")
    shutil.copytree(SHIPPED / "ControlNet" / CONTROLNET, models / "ControlNet" / CONTROLNET)
    return root


# --------------------------------------------------------------------------------------------- requests


@dataclass
class Job:
    client: int
    index: int
    kind: str
    endpoint: str
    body: dict[str, Any]
    lora_weight: float | None = None
    # filled in by the run
    status: int = 0
    error: str = ""
    latency: float = 0.0
    images: list[bytes] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    serial_latency: float = 0.0
    serial_images: list[bytes] = field(default_factory=list)


def _png_b64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _shape_image(rng: random.Random, size: int, *, outline: bool = False) -> Any:
    from PIL import Image, ImageDraw

    background = (0, 0, 0) if outline else tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    box = sorted(rng.sample(range(8, size - 8), 2))
    area = (box[0], box[0], box[1] + 4, box[1] + 4)
    if outline:
        draw.rectangle(area, outline=(255, 255, 255), width=2)
    else:
        draw.ellipse(area, fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def _mask(rng: random.Random, size: int) -> Any:
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    corner = rng.randrange(4, size // 2)
    ImageDraw.Draw(mask).rectangle((corner, corner, corner + size // 3, corner + size // 3), fill=255)
    return mask


def plan(
    clients: int, per_client: int, *, seed: int = 19, steps: int = 6, size: int = 64, gradio_clients: int = 0
) -> list[list[Job]]:
    """Each client's requests; kinds rotate over the whole run, everything else is drawn from ``seed``.

    The last ``gradio_clients`` clients use the browser's Gradio API (``/txt2img``): txt2img, hires fix and
    LoRA jobs on the checkpoint selected in the UI (the UI has no per-request checkpoint)."""
    rng = random.Random(seed)
    plans: list[list[Job]] = []
    for client in range(clients):
        jobs = []
        gradio = client >= clients - gradio_clients
        for index in range(per_client):
            kinds = GRADIO_KINDS if gradio else KINDS
            kind = kinds[(client * per_client + index) % len(kinds)]
            prompt = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} on a {rng.choice(COLOURS)} background"
            lora_weight = None
            if kind == "lora" or rng.random() < 0.25:  # LoRA jobs, and a LoRA on some others too
                lora_weight = round(rng.uniform(0.3, 1.0), 2)
                prompt += f" <lora:{LORA}:{lora_weight}>"
            body: dict[str, Any] = {
                "prompt": prompt,
                "negative_prompt": rng.choice(["", "blurry", "text, watermark"]),
                "seed": rng.randrange(1 << 31),
                "steps": steps,
                "cfg_scale": rng.choice([5.0, 7.0]),
                "sampler_name": rng.choice(["DPM++ 2M", "Euler a", "Euler", "DDIM"]),
                "width": size,
                "height": size,
                "save_images": True,
                "send_images": True,
                "override_settings": {"sd_model_checkpoint": rng.choice(CHECKPOINTS)},
            }
            endpoint = "txt2img"
            if kind in ("img2img", "inpaint"):
                endpoint = "img2img"
                body["init_images"] = [_png_b64(_shape_image(rng, size))]
                body["denoising_strength"] = round(rng.uniform(0.4, 0.8), 2)
                if kind == "inpaint":
                    body.update(mask=_png_b64(_mask(rng, size)), mask_blur=2, inpainting_fill=1)
            elif kind == "hires":
                body.update(
                    enable_hr=True,
                    hr_scale=1.5,
                    hr_upscaler="Latent",
                    hr_second_pass_steps=max(1, steps // 2),
                    denoising_strength=0.6,
                )
            elif kind == "controlnet":
                unit = {
                    "enabled": True,
                    "module": "none",
                    "model": CONTROLNET,
                    "image": _png_b64(_shape_image(rng, size, outline=True)),
                    "weight": round(rng.uniform(0.5, 1.0), 2),
                    "save_detected_map": False,
                }
                body["alwayson_scripts"] = {"controlnet": {"args": [unit]}}
            if gradio:
                body["override_settings"] = {"sd_model_checkpoint": CHECKPOINTS[0]}  # the selected one
                jobs.append(Job(client, index, kind, GRADIO_TXT2IMG, body, lora_weight))
                continue
            jobs.append(Job(client, index, kind, f"/sdapi/v1/{endpoint}", body, lora_weight))
        plans.append(jobs)
    return plans


# --------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``app.py --nowebui`` on loopback, in a child process whose RSS can be read."""

    def __init__(self, data_dir: Path, port: int, log_path: Path, *, ui: bool = False) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "app.py"),
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--api" if ui else "--nowebui",
                "--models-in-ram",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, client: Any, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if client.get(f"{self.url}/sdapi/v1/sd-models", timeout=5).status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(0.25)
        raise RuntimeError("the server did not answer in time")

    def wait_ui(self, limit: float) -> None:
        import gradio_client

        deadline = time.monotonic() + limit
        while True:
            try:
                gradio_client.Client(self.url, verbose=False).close()
                return
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.5)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# --------------------------------------------------------------------------------------------- run


def _send(client: Any, url: str, job: Job, timeout: float) -> tuple[int, float, dict[str, Any] | str]:
    """POST the job (REST), or call the UI's endpoint (``client`` is then a ``gradio_client.Client``)."""
    if job.endpoint == GRADIO_TXT2IMG:
        return _send_gradio(client, job)
    started = time.perf_counter()
    response = client.post(url + job.endpoint, json=job.body, timeout=timeout)
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return response.status_code, latency, response.text[:300]
    answer = response.json()
    images = [base64.b64decode(i) for i in answer["images"]]
    return 200, latency, {"images": images, "infotexts": json.loads(answer["info"])["infotexts"]}


def _send_gradio(client: Any, job: Job) -> tuple[int, float, dict[str, Any] | str]:
    fields = {key: job.body[key] for key in GRADIO_FIELDS if key in job.body}
    started = time.perf_counter()
    _preview, _progress, gallery, infotext, error = client.predict(**fields, api_name="/txt2img")
    latency = time.perf_counter() - started
    message = error.get("value") if isinstance(error, dict) else error
    if message or not gallery:
        return 500, latency, f"UI error: {message or 'no image'}"
    images = []
    for item in gallery:
        image = item["image"]
        images.append(Path(image["path"] if isinstance(image, dict) else image).read_bytes())
    return 200, latency, {"images": images, "infotexts": [infotext]}


def _client_for(job: Job, server: Any) -> Any:
    import httpx

    if job.endpoint == GRADIO_TXT2IMG:
        import gradio_client

        return gradio_client.Client(server.url, verbose=False)
    return httpx.Client()


def run(
    clients: int = 3,
    per_client: int = 4,
    *,
    steps: int = 6,
    size: int = 64,
    seed: int = 19,
    time_limit: float = 900.0,
    warmup_jobs: int = 20,
    keep: Path | None = None,
    quiet: bool = False,
    gradio_clients: int = 0,
) -> dict[str, Any]:
    import httpx

    say = (lambda *_a: None) if quiet else (lambda *a: print(*a, flush=True))
    root = Path(tempfile.mkdtemp(prefix="easel-load-")) if keep is None else keep
    if keep is not None and keep.exists():
        shutil.rmtree(keep)
    prepare_data_dir(root)
    plans = plan(clients, per_client, seed=seed, steps=steps, size=size, gradio_clients=gradio_clients)
    total = clients * per_client
    warmup = min(warmup_jobs, max(1, total // 2))
    server = Server(root, free_port(), root / "server.log", ui=gradio_clients > 0)
    summary: dict[str, Any] = {
        "clients": clients,
        "requests_per_client": per_client,
        "steps": steps,
        "size": size,
        "data_dir": str(root),
    }
    try:
        with httpx.Client() as probe:
            started = time.monotonic()
            server.wait_ready(probe, limit=180)
            if gradio_clients:
                server.wait_ui(limit=180)
            summary["server_ready_s"] = round(time.monotonic() - started, 1)
            # The UI's jobs use the selected checkpoint; the API's choose theirs per request.
            probe.post(
                f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": CHECKPOINTS[0]}, timeout=300
            )
        say(f"server up in {summary['server_ready_s']} s; {clients} clients × {per_client} requests")
        rss: dict[str, float] = {"start": server.rss_mib()}
        done = Counter[str]()
        lock = threading.Lock()
        stop_at = time.monotonic() + time_limit

        def client_loop(jobs: list[Job]) -> None:
            with contextlib.closing(_client_for(jobs[0], server)) as http:
                for job in jobs:
                    if time.monotonic() > stop_at:
                        job.error = "not sent: time limit"
                        continue
                    try:
                        job.status, job.latency, answer = _send(http, server.url, job, timeout=time_limit)
                    except Exception as exc:  # a dropped connection counts as a failed request
                        job.error = f"{type(exc).__name__}: {exc}"
                        continue
                    if isinstance(answer, str):
                        job.error = answer
                    else:
                        job.images, job.infotexts = answer["images"], answer["infotexts"]
                    with lock:
                        done["jobs"] += 1
                        if done["jobs"] == warmup:
                            rss["after_first"] = server.rss_mib()

        wall = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(jobs,)) for jobs in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        summary["concurrent_wall_s"] = round(time.perf_counter() - wall, 1)
        rss["after_run"] = server.rss_mib()
        say(f"concurrent run: {summary['concurrent_wall_s']} s")

        jobs = [job for jobs in plans for job in jobs]
        with httpx.Client() as http:  # the same requests, one at a time, nothing saved
            for job in jobs:
                if job.status != 200:
                    continue
                endpoint = "/sdapi/v1/txt2img" if job.endpoint == GRADIO_TXT2IMG else job.endpoint
                serial = Job(job.client, job.index, job.kind, endpoint, {**job.body, "save_images": False})
                status, job.serial_latency, answer = _send(http, server.url, serial, timeout=time_limit)
                if status == 200 and not isinstance(answer, str):
                    job.serial_images = answer["images"]
        summary.update(check(jobs, root / "outputs"))
        summary.update(_timings(jobs))
        summary["rss_mib"] = {k: round(v, 1) for k, v in rss.items()}
        summary["warmup_jobs"] = warmup
        if "after_first" in rss:
            summary["rss_growth_mib"] = round(rss["after_run"] - rss["after_first"], 1)
    finally:
        server.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return summary


# --------------------------------------------------------------------------------------------- checks


def _pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.convert("RGB").tobytes()


def infotext_problems(job: Job) -> list[str]:
    """Where the job's first infotext disagrees with its request (empty when it matches)."""
    from PIL import Image

    from webui.metadata.infotext import parse_infotext

    if not job.infotexts or not job.images:
        return ["no infotext"]
    text = job.infotexts[0]
    with Image.open(io.BytesIO(job.images[0])) as image:
        embedded = image.info.get("parameters")
    problems = [] if embedded == text else ["the PNG's parameters differ from the returned infotext"]
    parsed = parse_infotext(text)
    body = job.body
    expected = {
        "Prompt": body["prompt"],
        "Seed": str(body["seed"]),
        "Steps": str(body["steps"]),
        "Sampler": body["sampler_name"],
        "CFG scale": str(body["cfg_scale"]),
        "Model": body["override_settings"]["sd_model_checkpoint"],
        "Size-1": str(body["width"]),  # hires fix: the first pass's size, as A1111 writes it
    }
    if body["negative_prompt"]:
        expected["Negative prompt"] = body["negative_prompt"]
    if "denoising_strength" in body:
        expected["Denoising strength"] = str(body["denoising_strength"])
    if body.get("enable_hr"):
        expected["Hires upscale"] = "1.5"
    for key, value in expected.items():
        if str(parsed.get(key)) != value:
            problems.append(f"{key}: {parsed.get(key)!r} != {value!r}")
    if (job.lora_weight is not None) != (LORA in str(parsed.get("Lora hashes", ""))):
        problems.append(f"Lora hashes: {parsed.get('Lora hashes')!r}")
    has_unit = "alwayson_scripts" in body
    if has_unit != ("ControlNet 0" in parsed):
        problems.append("ControlNet 0 missing" if has_unit else "an unexpected ControlNet 0")
    elif has_unit and CONTROLNET not in str(parsed["ControlNet 0"]):
        problems.append(f"ControlNet 0: {parsed['ControlNet 0']!r}")
    return problems


def check(jobs: list[Job], outputs: Path) -> dict[str, Any]:
    from PIL import Image

    answered = [job for job in jobs if job.status == 200 and job.images]
    problems: dict[str, list[str]] = {}
    for job in answered:
        found = infotext_problems(job)
        if found:
            problems[f"client {job.client} request {job.index} ({job.kind})"] = found
    same = [
        job
        for job in answered
        if job.serial_images and [_pixels(a) for a in job.images] == [_pixels(b) for b in job.serial_images]
    ]
    differ = [f"client {j.client} request {j.index} ({j.kind})" for j in answered if j not in same]

    # outputs/: one complete file per returned image, carrying that image's parameters; nothing else.
    returned = Counter(text for job in answered for text in job.infotexts[: len(job.images)])
    saved: Counter[str] = Counter()
    unreadable, strays, numbers = [], [], Counter[tuple[str, str]]()
    for path in sorted(p for p in outputs.rglob("*") if p.is_file()) if outputs.exists() else []:
        if not path.name[:5].isdigit() or path.name.startswith("."):
            strays.append(str(path.relative_to(outputs)))
            continue
        numbers[(str(path.parent), path.name[:5])] += 1
        try:
            with Image.open(path) as image:
                image.load()
                saved[str(image.info.get("parameters"))] += 1
        except Exception as exc:
            unreadable.append(f"{path.name}: {exc}")
    lost = sum((returned - saved).values())
    extra = sum((saved - returned).values())
    return {
        "requests": len(jobs),
        "answered": len(answered),
        "failed": {
            f"client {j.client} request {j.index} ({j.kind})": j.error or f"HTTP {j.status}"
            for j in jobs
            if j not in answered
        },
        "images_returned": sum(len(job.images) for job in answered),
        "kinds": dict(Counter(job.kind for job in answered)),
        "via_gradio": sum(1 for job in answered if job.endpoint == GRADIO_TXT2IMG),
        "infotext_mismatches": problems,
        "pixels_equal_serial": len(same),
        "pixels_differ_from_serial": differ,
        "files_saved": sum(saved.values()),
        "files_lost": lost,
        "files_unexpected": extra,
        "files_unreadable": unreadable,
        "stray_files": strays,
        "duplicate_numbers": sum(1 for count in numbers.values() if count > 1),
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _timings(jobs: list[Job]) -> dict[str, Any]:
    latencies = [job.latency for job in jobs if job.status == 200]
    timed = [job for job in jobs if job.status == 200 and job.serial_latency]
    waits = [max(0.0, job.latency - job.serial_latency) for job in timed]
    serial = [job.serial_latency for job in jobs if job.serial_latency]
    return {
        "latency_s": {
            "p50": round(_percentile(latencies, 0.5), 2),
            "p95": round(_percentile(latencies, 0.95), 2),
            "max": round(max(latencies, default=0.0), 2),
        },
        "queue_wait_s": {"p50": round(_percentile(waits, 0.5), 2), "p95": round(_percentile(waits, 0.95), 2)},
        "serial_latency_s": {
            "p50": round(_percentile(serial, 0.5), 2),
            "mean": round(statistics.fmean(serial), 2) if serial else 0.0,
        },
    }


def passed(summary: dict[str, Any]) -> bool:
    return (
        summary["answered"] == summary["requests"]
        and not summary["failed"]
        and not summary["infotext_mismatches"]
        and not summary["pixels_differ_from_serial"]
        and summary["files_lost"] == 0
        and summary["files_unexpected"] == 0
        and not summary["files_unreadable"]
        and not summary["stray_files"]
        and summary["duplicate_numbers"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--full", action="store_true", help="the issue's size: 8 clients × 25 requests")
    parser.add_argument(
        "--gradio-clients", type=int, default=1, help="of the clients, how many use the UI's API"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds; no request starts after")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    parser.add_argument("--keep", type=Path, help="use (and keep) this data dir: server log, outputs")
    args = parser.parse_args(argv)
    clients, per_client = (8, 25) if args.full else (args.clients, args.requests)
    load_start = [round(x, 2) for x in os.getloadavg()]
    summary = run(
        clients,
        per_client,
        steps=args.steps,
        size=args.size,
        seed=args.seed,
        time_limit=args.time_limit,
        keep=args.keep,
        gradio_clients=min(args.gradio_clients, clients),
    )
    summary["passed"] = passed(summary)
    summary["load_average_start"] = load_start
    summary["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
