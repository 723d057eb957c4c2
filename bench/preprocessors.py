"""ControlNet preprocessor cost at 512x512 on this machine (random annotator weights, one process).

For every preprocessor: the time to load its networks from ``models/annotators``-style files (a fresh
runner each time, files written once by ``tests/fixtures/annotator_files.py`` into a temporary folder), then
one untimed warm-up run and the median of ``--runs`` timed runs on a 512x512 picture at processing
resolution 512. The one-off import of controlnet-aux (all its detectors) is reported on its own.
ZoeDepth (a 1.3 GB BEiT-L file) is included only with ``--zoe``.

    python bench/preprocessors.py [--size 512] [--runs 3] [--zoe] [--only canny,mlsd]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures.annotator_files import write_annotator_files  # noqa: E402
from webui.domain.controlnet_modules import LAMA_MODULE, PREPROCESSORS  # noqa: E402
from webui.runtime.controlnet.preprocessors import AnnotatorStore, Preprocessors  # noqa: E402


def bench_picture(size: int) -> Image.Image:
    """Shapes and lines on a light page: something for every detector to find."""
    image = Image.new("RGB", (size, size), (235, 232, 225))
    draw = ImageDraw.Draw(image)
    unit = size / 16
    draw.rectangle((2 * unit, 2 * unit, 7 * unit, 7 * unit), fill=(200, 40, 40))
    draw.ellipse((9 * unit, 2 * unit, 14 * unit, 7 * unit), outline=(10, 10, 10), width=max(1, size // 100))
    draw.polygon([(2 * unit, 14 * unit), (5 * unit, 9 * unit), (8 * unit, 14 * unit)], fill=(40, 90, 200))
    for step in range(6):
        x = 9 * unit + step * unit
        draw.line((x, 9 * unit, x + unit, 14 * unit), fill=(30, 30, 30), width=max(1, size // 200))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="picture side and processing resolution")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per preprocessor (median reported)")
    parser.add_argument("--zoe", action="store_true", help="include depth_zoe (writes a 1.3 GB file)")
    parser.add_argument("--only", default="", help="comma-separated module names to time")
    args = parser.parse_args()

    only = {name.strip() for name in args.only.split(",") if name.strip()}
    modules = [
        info
        for info in PREPROCESSORS
        if (not only or info.name in only) and (args.zoe or info.name != "depth_zoe")
    ]
    picture = bench_picture(args.size)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU; picture {args.size}x{args.size}")

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux  # noqa: F401
    print(f"import controlnet_aux: {time.perf_counter() - start:.2f} s (once per process)")

    mask = Image.new("L", picture.size, 0)  # LaMa fills a centred square, a quarter of the picture
    side = args.size // 2
    mask.paste(255, (side // 2, side // 2, side // 2 + side, side // 2 + side))

    def once(runner: Preprocessors, name: str) -> Any:
        if name == LAMA_MODULE:
            return SimpleNamespace(image=runner.lama_fill(picture, mask))
        return runner.run(name, picture, resolution=args.size, seed=0)

    with tempfile.TemporaryDirectory(prefix="easel-annotators-") as folder:
        root = Path(folder)
        files = sorted({name for info in modules for name in info.weight_files})
        start = time.perf_counter()
        write_annotator_files(root, files)
        print(f"wrote {len(files)} random-weight annotator files in {time.perf_counter() - start:.1f} s\n")

        rows: list[tuple[str, str, str, str]] = []
        for info in modules:
            runner = Preprocessors(AnnotatorStore(root, allow_download=False))
            start = time.perf_counter()
            runner.load(info.name)
            load_s = time.perf_counter() - start
            once(runner, info.name)  # warm-up
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                result = once(runner, info.name)
                times.append(time.perf_counter() - start)
            load = f"{load_s * 1000:.0f} ms" if info.needs_weights else "-"
            size = f"{result.image.width}x{result.image.height}"
            rows.append((info.name, load, f"{statistics.median(times) * 1000:.0f} ms", size))
            print(f"  {info.name}: load {load}, run {rows[-1][2]}", flush=True)

    print("\n| preprocessor | first load | run (median) | map size |")
    print("| --- | ---: | ---: | --- |")
    for name, load, run, size in rows:
        print(f"| {name} | {load} | {run} | {size} |")


if __name__ == "__main__":
    main()
