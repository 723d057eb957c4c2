"""When does a txt2img batch of 4 reach the page, with CLIP scoring on vs off?

Easel scores images after they are shown (a follow-up event), so the images should arrive no later with
scoring on. This starts ``python app.py`` on the shipped reference model and reference CLIP, drives the
txt2img tab in headless chromium, and alternates rounds with the option ``easel_clip_score`` on and off
(same process, same page): from the Generate click to the 4 images in the gallery ("delivered"), and, with
scoring on, to the scores on their captions ("scored").

    HF_HUB_OFFLINE=1 .venv/bin/python bench/clip_delivery.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.app_process import running_easel  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def set_option(url: str, values: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url + "/sdapi/v1/options",
        data=json.dumps(values).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=30).read()


def fill(page: Any, elem_id: str, value: int) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Tab")


def one_round(page: Any, scoring: bool, seed: int) -> tuple[float, float | None]:
    box = page.locator("#txt2img_seed input, #txt2img_seed textarea").first
    box.fill(str(seed))
    box.press("Tab")
    started = time.perf_counter()
    page.click("#txt2img_generate")
    page.wait_for_function(
        f"document.querySelector('#txt2img_infotext textarea').value.includes('Seed: {seed}')"
        " && document.querySelectorAll('#txt2img_gallery img').length >= 1",
        timeout=300_000,
    )
    delivered = time.perf_counter() - started
    if not scoring:
        return delivered, None
    page.wait_for_function(
        "document.querySelector('#txt2img_infotext textarea').value.includes('CLIP score:')", timeout=300_000
    )
    return delivered, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "models" / "Stable-diffusion").mkdir(parents=True)
        (data / "models" / "clip").mkdir(parents=True)
        os.symlink(
            REPO / "models/Stable-diffusion/easel-reference", data / "models/Stable-diffusion/easel-reference"
        )
        os.symlink(REPO / "models/clip/easel-reference-clip", data / "models/clip/easel-reference-clip")
        with running_easel(data, "--api") as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(url)
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            page.fill("#txt2img_prompt textarea", "a red circle on a blue background")
            for elem_id, value in (
                ("txt2img_width", 64),
                ("txt2img_height", 64),
                ("txt2img_steps", args.steps),
            ):
                fill(page, elem_id, value)
            fill(page, "txt2img_batch_size", 4)
            results: dict[bool, list[tuple[float, float | None]]] = {True: [], False: []}
            seed = 1000
            for round_index in range(args.rounds + 1):  # round 0 warms both paths up
                for scoring in (False, True) if round_index % 2 else (True, False):
                    set_option(url, {"easel_clip_score": scoring})
                    seed += 1
                    measured = one_round(page, scoring, seed)
                    if round_index:
                        results[scoring].append(measured)
            browser.close()
    off = statistics.median(d for d, _ in results[False])
    on = statistics.median(d for d, _ in results[True])
    scored = statistics.median(s for _, s in results[True] if s is not None)
    print(f"txt2img batch of 4, 64x64, {args.steps} steps, reference model + CLIP, {args.rounds} rounds")
    print(f"load average at the end: {os.getloadavg()}")
    print(f"images delivered, scoring off: {off:.2f} s (median)")
    print(f"images delivered, scoring on:  {on:.2f} s (median)  ratio on/off {on / off:.2f}")
    print(f"scores shown, scoring on:      {scored:.2f} s (median)  +{scored - on:.2f} s after the images")
    for scoring in (False, True):
        rounds = ", ".join(f"{d:.2f}" for d, _ in results[scoring])
        print(f"  delivered, scoring {'on' if scoring else 'off'}, each round: {rounds}")


if __name__ == "__main__":
    main()
