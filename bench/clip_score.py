"""CLIP score cost on the CPU: milliseconds per image, per prompt, and per interrogation.

Two models: Easel's reference CLIP (``models/clip/easel-reference-clip``, when present) and a CLIP with
OpenAI ViT-B/32's sizes and random weights (the cost does not depend on the weights; the anchor for a real
ViT-B/32 on a laptop CPU is 50–100 ms per image). Each number is the median of ``--rounds`` runs after a
warm-up; the images are 512×512 (resized and cropped by CLIP's preprocessing, which is included).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/clip_score.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures.clip_files import B32_SIZES, tiny_clip_model  # noqa: E402
from webui.runtime.clip import OPENAI_MEAN, OPENAI_STD, ClipEmbedder  # noqa: E402
from webui.runtime.clip_interrogate import Interrogator, PhraseLists  # noqa: E402
from webui.runtime.tokenizer import clip_tokenizer  # noqa: E402
from webui.services.clip import ClipService  # noqa: E402
from webui.services.options import OptionsStore  # noqa: E402

REFERENCE = REPO / "models" / "clip" / "easel-reference-clip"
PROMPT = "a red circle on a blue background, flat colours, centred"


def median_ms(run: Callable[[], object], rounds: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(name: str, embedder: ClipEmbedder, rounds: int) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(4)]
    one = median_ms(lambda: embedder.pil_images(images[:1]), rounds)
    four = median_ms(lambda: embedder.pil_images(images), rounds) / 4
    text = median_ms(lambda: embedder.text([PROMPT]), rounds)
    image_embedding = embedder.pil_images(images[:1])
    lists = PhraseLists.load(None)
    count = len(lists.subjects) + sum(len(lines) for lines, _ in lists.extras)
    interrogator = Interrogator()
    start = time.perf_counter()
    interrogator.interrogate(image_embedding, key=("bench",), lists=lambda: lists, embed=embedder.text)
    first = time.perf_counter() - start
    again = median_ms(
        lambda: interrogator.interrogate(
            embedder.pil_images(images[:1]), key=("bench",), lists=lambda: lists, embed=embedder.text
        ),
        rounds,
    )
    print(
        f"{name}: {one:.1f} ms/image (1 image), {four:.1f} ms/image (batch of 4), {text:.1f} ms/prompt; "
        f"interrogate: {first:.1f} s the first time ({count} list lines embedded), {again:.0f} ms after"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory(prefix="easel-clip-bench-") as tmp:
        cache = Path(tmp) / "tokenizer"
        if (REFERENCE / "config.json").is_file():
            service = ClipService(REFERENCE.parent, OptionsStore(Path(tmp) / "config.json"), cache)
            measure("reference CLIP", service.embedder(REFERENCE.name), args.rounds)
        else:
            print(f"reference CLIP: not installed ({REFERENCE})")
        model = tiny_clip_model(seed=0, sizes=B32_SIZES)
        embedder = ClipEmbedder(
            "vit-b-32-random",
            model,
            device=torch.device("cpu"),
            tokenizer=clip_tokenizer(cache),
            resize=224,
            mean=OPENAI_MEAN,
            std=OPENAI_STD,
        )
        measure("ViT-B/32-shaped random CLIP", embedder, args.rounds)


if __name__ == "__main__":
    main()
