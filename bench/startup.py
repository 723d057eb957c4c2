"""How long Easel takes to start: Gradio's import with and without its stub rewriting, and the app itself.

Alternates, in fresh processes, a plain ``import gradio`` and Easel's ``import_gradio()`` (``--rounds``
times each, medians and their ratio), then starts ``app.py --api`` on a data dir holding the reference
model and reports when the port first answers (the starting page), when the studio is ready, and each
start-up stage as ``/easel/v1/startup`` reported it.

Run: ``python bench/startup.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import app_process  # noqa: E402

IMPORTS = {
    "plain import gradio": "import gradio",
    "import_gradio()": "from webui.ui.gradio_import import import_gradio; import_gradio()",
}


def time_import(code: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - began


def time_app(data_dir: Path) -> tuple[float, float, list[tuple[float, str]]]:
    began = time.perf_counter()
    process, url = app_process.start(data_dir, "--api")
    stages: list[tuple[float, str]] = []
    page = ready = 0.0
    try:
        while time.perf_counter() - began < 300:
            try:
                with urllib.request.urlopen(url + app_process.STARTUP, timeout=5) as response:
                    status = json.loads(response.read())
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError((data_dir / "app.log").read_text()) from None
                time.sleep(0.02)
                continue
            now = time.perf_counter() - began
            page = page or now
            if not stages or stages[-1][1] != status["stage"]:
                stages.append((now, status["stage"]))
            if status["ready"] or status["error"]:
                ready = now
                break
            time.sleep(0.02)
    finally:
        app_process.stop(process)
    return page, ready, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(args.rounds):
        for name, code in IMPORTS.items():
            times[name].append(time_import(code))
    for name, values in times.items():
        print(
            f"{name:<22} median {statistics.median(values):5.2f} s  ({', '.join(f'{v:.2f}' for v in values)})"
        )
    plain, easel = (statistics.median(times[name]) for name in IMPORTS)
    print(f"import_gradio() / plain: {easel / plain:.2f}x")

    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        models = data_dir / "models" / "Stable-diffusion"
        models.mkdir(parents=True)
        for item in (ROOT / "models" / "Stable-diffusion").iterdir():
            (models / item.name).symlink_to(item)
        for _ in range(args.rounds):
            page, ready, stages = time_app(data_dir)
            steps = ", ".join(f"{stage} at {at:.1f}" for at, stage in stages)
            print(f"app.py --api: page {page:.2f} s, ready {ready:.2f} s  ({steps})")


if __name__ == "__main__":
    main()
