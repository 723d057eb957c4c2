"""Startup and refresh time of Easel with a large model library, against one of each in the same run.

Makes two data dirs under a temporary folder: ``small`` (one LoRA, one single-file checkpoint) and
``large`` (``--loras`` LoRAs in ``--folders`` subfolders and ``--checkpoints`` checkpoints, all hard links
of the same two tiny files). For each it starts ``app.py --data-dir <dir> --api`` twice (a first start, then
a restart that finds the caches written by the first) and measures:

* ``page``: seconds from process start until the port answers (at first with the page that shows Easel's
  progress while it starts, ``webui.starting``);
* ``ready``: until ``/easel/v1/startup`` says the studio is ready (the starting page reloads into it then);
* ``config``: until ``GET /config`` (the page's component tree, what the browser needs to draw) answers;
* ``refresh``: ``POST /sdapi/v1/refresh-loras`` with the files unchanged (median of 3).

Run: ``python bench/library_scale.py [--loras 1000 --checkpoints 200 --folders 20]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import app_process  # noqa: E402  (the same start-and-wait as the tests)


def make_sources(folder: Path) -> tuple[Path, Path]:
    """One tiny SD 1.5 LoRA (the shipped reference LoRA) and one tiny SD 1.5 single-file checkpoint."""
    from tests.fixtures.tiny_models import tiny_sd15_components
    from webui.runtime.ldm_layout import diffusers_to_ldm_state_dict, save_single_file

    lora = folder / "source-lora.safetensors"
    shutil.copy2(ROOT / "models" / "Lora" / "easel-reference-grayscale.safetensors", lora)
    components = tiny_sd15_components()
    checkpoint = save_single_file(
        folder / "source-checkpoint.safetensors",
        diffusers_to_ldm_state_dict(
            unet=components["unet"],
            vae=components["vae"],
            text_encoder=components["text_encoder"],
            family="sd1",
        ),
    )
    return lora, checkpoint


def make_library(
    data_dir: Path, lora: Path, checkpoint: Path, loras: int, checkpoints: int, folders: int
) -> None:
    lora_root = data_dir / "models" / "Lora"
    ckpt_root = data_dir / "models" / "Stable-diffusion"
    for index in range(loras):
        target = lora_root / f"group-{index % folders:02d}" / f"lora-{index:04d}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(lora, target)
    for index in range(checkpoints):
        target = ckpt_root / f"model-{index:03d}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(checkpoint, target)


def _timed(wait: Any, *args: Any) -> float:
    wait(*args)
    return time.perf_counter()


def measure(data_dir: Path) -> dict[str, float]:
    log = data_dir / "app.log"
    start = time.perf_counter()
    process, url = app_process.start(data_dir, "--api")
    try:
        page = _timed(app_process.wait_answering, url, process, log, 300) - start
        ready = _timed(app_process.wait_ready, url, process, log, 600) - start
        with urllib.request.urlopen(url + "/config", timeout=60) as response:
            response.read()
        config = time.perf_counter() - start
        refreshes = []
        for _ in range(3):
            request = urllib.request.Request(url + "/sdapi/v1/refresh-loras", method="POST", data=b"")
            began = time.perf_counter()
            urllib.request.urlopen(request, timeout=120).read()
            refreshes.append(time.perf_counter() - began)
        return {"page": page, "ready": ready, "config": config, "refresh": statistics.median(refreshes)}
    finally:
        app_process.stop(process)


def measure_cards(data_dir: Path) -> dict[str, float]:
    """In this process: list the LoRA cards, filter them (a search) and draw one page of the grid."""
    from webui.container import build_services
    from webui.services.network_cards import LORA, filter_cards
    from webui.settings import Settings
    from webui.ui.network_cards import render_cards

    services = build_services(Settings(data_dir=data_dir, preload_model=False))
    try:
        cards_service = services.networks.cards
        began = time.perf_counter()
        cards = cards_service.cards(LORA, None)
        listed = time.perf_counter() - began
        began = time.perf_counter()
        shown = filter_cards(cards, "lora-09")
        searched = time.perf_counter() - began
        began = time.perf_counter()
        page = render_cards("txt2img", LORA, cards, len(cards), 3, thumbnails=cards_service.thumbnail)
        drawn = time.perf_counter() - began
        return {
            "cards": len(cards),
            "shown": len(shown),
            "list": listed,
            "search": searched,
            "page": drawn,
            "html_kb": len(page) / 1024,
        }
    finally:
        services.generation.shutdown()
        services.models.hashes.stop_background(wait=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loras", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--folders", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="easel-library-") as tmp:
        base = Path(tmp)
        lora, checkpoint = make_sources(base)
        sizes = {"small": (1, 1, 1), "large": (args.loras, args.checkpoints, args.folders)}
        results: dict[str, dict[str, float]] = {}
        for label, (loras, checkpoints, folders) in sizes.items():
            data_dir = base / label
            make_library(data_dir, lora, checkpoint, loras, checkpoints, folders)
            for run in ("first start", "restart"):
                results[f"{label}, {run}"] = measure(data_dir)
        print(f"library: {args.loras} LoRAs in {args.folders} folders, {args.checkpoints} checkpoints")
        print(f"{'run':<22} {'page (s)':>9} {'ready (s)':>10} {'/config (s)':>12} {'refresh-loras (s)':>18}")
        for key, value in results.items():
            print(
                f"{key:<22} {value['page']:>9.2f} {value['ready']:>10.2f} {value['config']:>12.2f} "
                f"{value['refresh']:>18.3f}"
            )
        cards = measure_cards(base / "large")
        print(
            f"cards: list {cards['cards']:.0f} LoRA cards {cards['list'] * 1000:.0f} ms, search "
            f"({cards['shown']:.0f} hits) {cards['search'] * 1000:.1f} ms, draw one page "
            f"{cards['page'] * 1000:.1f} ms ({cards['html_kb']:.0f} KiB of HTML)"
        )
        for run in ("first start", "restart"):
            small, large = results[f"small, {run}"], results[f"large, {run}"]
            print(
                f"{run}: large/small ready {large['ready'] / small['ready']:.2f}x, "
                f"refresh {large['refresh'] / max(small['refresh'], 1e-6):.1f}x"
            )


if __name__ == "__main__":
    main()
