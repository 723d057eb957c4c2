"""A 3x3 X/Y/Z plot against the same 9 images made one by one (one process, the reference model at 64x64).

The plot (Steps 10, 15, 20 x CFG Scale 5, 7, 9, the bundled ``extensions/xyz-plot`` run as one queued job
by the extension host, with its legend grid drawn and saved) against:

- the same 9 requests sent one by one to ``POST /sdapi/v1/txt2img`` (FastAPI's test client, in process), and
- the same 9 requests given one by one to the generation service (no HTTP, no base64).

When the API runs extension scripts (``script_name``), the plot is also sent as one API call. Every side saves
its images (and the plot its grid). Rounds alternate the order of the sides; medians are printed, and the
ratio plot / singles (target: no slower, <= 1.0).

    python bench/xyz_plot.py
    python bench/xyz_plot.py --rounds 5 --steps "10, 15, 20" --cfg "5, 7, 9"
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.bundled_extensions import load_module  # noqa: E402
from webui.container import build_services  # noqa: E402
from webui.domain.generation import Txt2ImgRequest  # noqa: E402
from webui.extensions.api import Extension, Manifest  # noqa: E402
from webui.settings import Settings  # noqa: E402

REFERENCE = REPO / "models" / "Stable-diffusion" / "easel-reference"
BASE = {
    "prompt": "a red circle on a blue background",
    "width": 64,
    "height": 64,
    "seed": 1234,
    "sampler_name": "DPM++ 2M",
    "scheduler": "Karras",
}


def data_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="easel-bench-xyz-"))
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    (models / REFERENCE.name).symlink_to(REFERENCE)
    return root


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default="10, 15, 20")
    parser.add_argument("--cfg", default="5, 7, 9")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir(), preload_model=False, api=True, nowebui=True))
    host = services.extension_host
    main_module = load_module("xyz-plot")
    manifest = Manifest("xyz-plot", "X/Y/Z plot", "1.0.0", "", "main:setup", 1)
    ext = Extension(manifest, REFERENCE, REFERENCE, host)
    main_module.setup(ext)
    (script,) = ext.scripts
    script_args = list(main_module.DEFAULTS)
    script_args[0:2], script_args[3:5] = ["Steps", args.steps], ["CFG Scale", args.cfg]

    steps = [int(v) for v in args.steps.split(",")]
    cfgs = [float(v) for v in args.cfg.split(",")]
    cells = [{**BASE, "steps": s, "cfg_scale": c} for c in cfgs for s in steps]
    request = Txt2ImgRequest(**BASE)

    with TestClient(build_app(services)) as client:

        def plot() -> None:
            result = host.run_script(ext, script, request, script_args, "txt2img").result()
            assert len(result.images) == 1 and not result.interrupted

        def singles_api() -> None:
            for body in cells:
                response = client.post("/sdapi/v1/txt2img", json={**body, "save_images": True})
                response.raise_for_status()
                assert base64.b64decode(response.json()["images"][0])

        def singles_service() -> None:
            for body in cells:
                assert services.generation.txt2img(Txt2ImgRequest(**body)).images

        def plot_api() -> None:
            body = {**BASE, "script_name": "x/y/z plot", "script_args": script_args, "save_images": True}
            response = client.post("/sdapi/v1/txt2img", json=body)
            response.raise_for_status()

        sides: dict[str, Callable[[], None]] = {
            "X/Y/Z plot (one job)": plot,
            "9 single API calls": singles_api,
            "9 single service calls": singles_service,
        }
        probe = client.post("/sdapi/v1/txt2img", json={**BASE, "steps": 1, "script_name": "x/y/z plot",
                                                       "script_args": ["Nothing"]})  # fmt: skip
        if probe.status_code == 200:
            sides["X/Y/Z plot (one API call)"] = plot_api
        else:
            print(
                f"(the API does not run extension scripts here: {probe.status_code}; plot timed via the host)"
            )

        for fn in sides.values():  # warm-up: the model loaded, every code path run once
            fn()
        times: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for round_number in range(args.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            for name in order:
                times[name].append(timed(sides[name]))

    print(
        f"reference model 64x64, DPM++ 2M Karras, steps {args.steps} x CFG {args.cfg}, {args.rounds} rounds"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:28s} median {value:6.2f} s   ({', '.join(f'{v:.2f}' for v in times[name])})")
    plot_time = medians["X/Y/Z plot (one job)"]
    print(f"  ratio plot / 9 single API calls:     {plot_time / medians['9 single API calls']:.2f}")
    print(f"  ratio plot / 9 single service calls: {plot_time / medians['9 single service calls']:.2f}")
    if "X/Y/Z plot (one API call)" in medians:
        ratio = medians["X/Y/Z plot (one API call)"] / medians["9 single API calls"]
        print(f"  ratio plot API call / 9 single API calls: {ratio:.2f}")
    services.generation.shutdown()


if __name__ == "__main__":
    main()
