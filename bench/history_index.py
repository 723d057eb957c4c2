"""Image history at scale: index build, incremental sync and page queries over 20,000 images.

Makes N synthetic small PNGs with A1111 infotext (varied prompts, models, samplers, LoRAs, seeds and sizes,
in dated folders over 60 days, as Easel saves them) in a temp dir, then measures:

* full index build (every file opened and its infotext parsed), reported per 1,000 images;
* incremental sync of the unchanged tree (a directory walk, no file opened);
* the first History page (48 newest, no filter), a text search, a filtered query and a deep page, each the
  median of several runs on a warm connection;
* the first page's 48 thumbnails, made once (cold) and then read from the cache (warm).

    python bench/history_index.py                 # 20,000 images
    python bench/history_index.py --images 2000   # quicker
    python bench/history_index.py --keep /tmp/h   # keep the tree (reused by the next run with --keep)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from webui.metadata.image_io import encode_image  # noqa: E402
from webui.services.history import HistoryQuery, HistoryService  # noqa: E402

SUBJECTS = [
    "lighthouse",
    "fox",
    "castle",
    "harbour",
    "portrait",
    "forest",
    "robot",
    "city",
    "dragon",
    "garden",
]
STYLES = ["oil painting", "watercolor", "photo", "ink sketch", "digital art", "pixel art", "3d render"]
MOODS = ["at dusk", "in fog", "under snow", "at noon", "by candlelight", "in the rain", "at dawn"]
MODELS = [f"model-{i:02d}" for i in range(12)]
SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC"]
LORAS = ["ink_style", "film_grain", "pixel_hero", "watercolor_v2", "detail_tweaker"]
SIZES = [(512, 512), (512, 768), (768, 512), (1024, 1024)]


def make_tree(root: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    start = datetime.now() - timedelta(days=60)
    folders = ["txt2img-images"] * 8 + ["img2img-images"] * 2 + ["extras-images"]
    numbers: dict[Path, int] = {}
    for i in range(count):
        when = start + timedelta(seconds=i * 60 * 60 * 24 * 60 / count)
        folder = root / rng.choice(folders) / when.date().isoformat()
        number = numbers.get(folder, 0)
        numbers[folder] = number + 1
        width, height = rng.choice(SIZES)
        prompt = f"a {rng.choice(SUBJECTS)}, {rng.choice(STYLES)}, {rng.choice(MOODS)}, highly detailed"
        extra = ""
        if rng.random() < 0.3:
            lora = rng.choice(LORAS)
            prompt += f" <lora:{lora}:0.8>"
            extra = f', Lora hashes: "{lora}: {rng.getrandbits(48):012x}"'
        image_seed = rng.getrandbits(32)
        infotext = (
            f"{prompt}\nNegative prompt: blurry, lowres\n"
            f"Steps: {rng.choice([20, 25, 30])}, Sampler: {rng.choice(SAMPLERS)}, Schedule type: Karras, "
            f"CFG scale: 7, Seed: {image_seed}, Size: {width}x{height}, "
            f"Model hash: {rng.getrandbits(40):010x}, Model: {rng.choice(MODELS)}{extra}, Version: v1"
        )
        # A small picture (the index cost does not depend on the pixel count): 32 px on the long side.
        scale = 32 / max(width, height)
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        pixels = Image.new("RGB", (max(1, round(width * scale)), max(1, round(height * scale))), color)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{number:05d}-{image_seed}.png"
        path.write_bytes(encode_image(pixels, infotext, "png"))
        stamp = when.timestamp()
        os.utime(path, (stamp, stamp))


def median_ms(func, runs: int = 7) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median wall and CPU milliseconds of ``func()`` (CPU time shows the cost when other processes
    share the cores)."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu, wall = time.process_time(), time.perf_counter()
        func()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="easel-history-bench-"))
    outputs = work / "outputs"
    try:
        existing = sum(1 for _ in outputs.rglob("*.png")) if outputs.exists() else 0
        if existing != args.images:
            shutil.rmtree(outputs, ignore_errors=True)
            start = time.perf_counter()
            make_tree(outputs, args.images)
            print(f"made {args.images:,} PNGs in {time.perf_counter() - start:.1f} s")
        for stale in (work / "history.sqlite3", work / "thumbs"):
            if stale.is_dir():
                shutil.rmtree(stale)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{stale}{suffix}").unlink(missing_ok=True)

        service = HistoryService(work / "history.sqlite3", outputs, work / "thumbs")
        print(f"sqlite full-text search: {'FTS5' if service.use_fts else 'LIKE (no FTS5)'}")
        cpu = time.process_time()
        report = service.sync()
        cpu = time.process_time() - cpu
        assert report is not None and report.added == args.images, report
        print(
            f"full build: {report.seconds:.2f} s for {args.images:,} images = "
            f"{report.seconds / args.images * 1000:.3f} s per 1,000 images "
            f"(CPU {cpu / args.images * 1000:.3f} s per 1,000; {load()})"
        )

        def unchanged_sync() -> None:
            again = service.sync()
            assert again is not None and again.added == again.updated == again.removed == 0

        wall, cpu = median_ms(unchanged_sync, runs=5)
        print(f"incremental sync, unchanged tree: median {wall:.0f} ms (CPU {cpu:.0f} ms; {load()})")

        queries = {
            "first page (48 newest)": HistoryQuery(),
            "text search 'fox dusk'": HistoryQuery(text="fox dusk"),
            "text search 'castle' + model + sampler": HistoryQuery(
                text="castle", model="model-03", sampler="DPM++ 2M"
            ),
            "LoRA filter": HistoryQuery(lora="ink_style"),
            "date range (one week)": HistoryQuery(
                date_from=(datetime.now() - timedelta(days=30)).date(),
                date_to=(datetime.now() - timedelta(days=23)).date(),
            ),
            "page 200 (deep paging)": HistoryQuery(page=200),
        }
        for name, query in queries.items():
            total = service.search(query).total
            wall, cpu = median_ms(lambda q=query: service.search(q))
            print(f"{name}: median {wall:.1f} ms (CPU {cpu:.1f} ms), {total:,} matches")

        first = service.search(HistoryQuery())
        start = time.perf_counter()
        for item in first.items:
            service.thumbnail(item.path, item.size, item.mtime_ns)
        cold = (time.perf_counter() - start) * 1000
        warm, _cpu = median_ms(lambda: [service.thumbnail(i.path, i.size, i.mtime_ns) for i in first.items])
        print(f"first page thumbnails (48): cold {cold:.0f} ms, cached {warm:.1f} ms ({load()})")
        service.close()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
