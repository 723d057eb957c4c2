"""The shipped reference CLIP (``models/clip/easel-reference-clip``): it loads as any CLIP does, and it knows
the reference family's shapes and colours.

The model is read the way any transformers CLIP consumer reads it — ``CLIPModel``, ``CLIPImageProcessor``
from its ``preprocessor_config.json`` — with Easel's own CLIP tokenizer, offline. "Knows" means: on a
picture of a red circle on a blue background, "a red circle on a blue background" scores above the same
caption with the shape's colour, the background's colour or the shape changed, or the colours swapped.
The thresholds are the issue's (90 % of such pairs); the measured values are in ``models/clip/README.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tools.reference.shapes import COLOURS, SHAPES, random_spec, render
from tools.train_reference_clip import full_caption, generate_reference_images, near_misses

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# EASEL_REFERENCE_MODELS checks a freshly shipped set (tools/train_reference_clip.py --out DIR) instead.
MODELS = Path(os.environ.get("EASEL_REFERENCE_MODELS", ROOT / "models"))
CLIP_FOLDER = MODELS / "clip" / "easel-reference-clip"
MAX_BYTES = 5_000_000
MIN_PAIR_ACCURACY = 0.90
# Each kind of near miss (colour, background, shape, swapped colours) on its own; shape is the hardest.
MIN_KIND_ACCURACY = 0.60


@pytest.fixture(scope="module")
def clip() -> tuple[Any, Any, Any]:
    """The shipped model, its image processor and Easel's CLIP tokenizer, all loaded offline."""
    from transformers import CLIPImageProcessor, CLIPModel

    from webui.runtime.tokenizer import clip_tokenizer

    model = CLIPModel.from_pretrained(CLIP_FOLDER, local_files_only=True).eval()
    processor = CLIPImageProcessor.from_pretrained(CLIP_FOLDER, local_files_only=True)
    tokenizer = clip_tokenizer(ROOT / "cache" / "clip-tokenizer")
    return model, processor, tokenizer


@torch.no_grad()
def cosines(clip: tuple[Any, Any, Any], images: list[np.ndarray], captions: list[str]) -> np.ndarray:
    """Cosine similarity of every image (rows) with every caption (columns)."""
    model, processor, tokenizer = clip
    pixels = processor(images=[Image.fromarray(image) for image in images], return_tensors="pt").pixel_values
    tokens = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt")
    out = model(input_ids=tokens.input_ids, pixel_values=pixels.to(model.dtype))
    image = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
    text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
    return (image @ text.T).numpy()


def pair_wins(
    clip: tuple[Any, Any, Any], images: list[np.ndarray], labels: list[tuple[str, str, str]]
) -> dict[str, list[bool]]:
    """For each picture and each near-miss caption: did the true caption score higher? By kind of miss."""
    captions = sorted({full_caption(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c})
    column = {caption: i for i, caption in enumerate(captions)}
    table = cosines(clip, images, captions)
    wins: dict[str, list[bool]] = {}
    for row, label in zip(table, labels, strict=True):
        true = row[column[full_caption(*label)]]
        for kind, others in near_misses(*label).items():
            wins.setdefault(kind, []).extend(bool(true > row[column[other]]) for other in others)
    return wins


def rate(wins: dict[str, list[bool]]) -> float:
    every = [win for kind in wins.values() for win in kind]
    return sum(every) / len(every)


def test_the_shipped_folder_is_a_small_float16_transformers_clip(clip: tuple[Any, Any, Any]) -> None:
    model, processor, tokenizer = clip
    size = sum(path.stat().st_size for path in CLIP_FOLDER.rglob("*") if path.is_file())
    assert size <= MAX_BYTES, f"{CLIP_FOLDER} is {size} bytes"
    config = json.loads((CLIP_FOLDER / "config.json").read_text())
    assert config["model_type"] == "clip"
    assert "_name_or_path" not in config  # a shipped config must not name the machine it was made on
    assert model.config.text_config.vocab_size == len(tokenizer) == 49408
    assert model.config.vision_config.image_size == 64
    assert processor.crop_size == {"height": 64, "width": 64}
    from safetensors import safe_open

    with safe_open(CLIP_FOLDER / "model.safetensors", framework="pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}  # noqa: SIM118
    record = json.loads((CLIP_FOLDER / "training.json").read_text())
    assert record["stages"]["evaluate"]["generated"]["pair_accuracy"] >= MIN_PAIR_ACCURACY


def test_the_image_processor_gives_the_pixels_the_model_was_trained_on(clip: tuple[Any, Any, Any]) -> None:
    from tools.train_reference_clip import normalise, to_unit

    _model, processor, _tokenizer = clip
    image = render(random_spec(np.random.default_rng(3)))
    pixels = processor(images=Image.fromarray(image), return_tensors="pt").pixel_values
    assert torch.allclose(pixels, normalise(to_unit([image])), atol=1e-3)


def test_padding_after_the_end_of_the_caption_changes_nothing(clip: tuple[Any, Any, Any]) -> None:
    model, _processor, tokenizer = clip
    with torch.no_grad():
        short = tokenizer(["a red circle on a blue background"], return_tensors="pt")
        padded = tokenizer(
            ["a red circle on a blue background"], padding="max_length", max_length=77, return_tensors="pt"
        )
        a = model.get_text_features(**short)
        b = model.get_text_features(**padded)
    a, b = getattr(a, "pooler_output", a), getattr(b, "pooler_output", b)
    # The two runs have different sequence lengths, so different kernels: they agree to the dtype's
    # precision (fp16 keeps ~3 decimal digits: values near 2 differ by up to 0.002 on some CPUs). Attention
    # leaking into the padding would move them by tenths.
    assert torch.allclose(a, b, atol=1e-2 if a.dtype == torch.float16 else 1e-4)


def test_the_true_caption_beats_its_near_misses_on_rendered_shapes(clip: tuple[Any, Any, Any]) -> None:
    rng = np.random.default_rng(1234)
    specs = [random_spec(rng) for _ in range(60)]
    wins = pair_wins(clip, [render(s) for s in specs], [(s.colour, s.shape, s.background) for s in specs])
    print({kind: sum(v) / len(v) for kind, v in wins.items()})
    assert rate(wins) >= MIN_PAIR_ACCURACY
    for kind, results in wins.items():  # every kind of mistake is caught, not only the easy ones
        assert sum(results) / len(results) >= MIN_KIND_ACCURACY, kind


def test_the_true_caption_beats_its_near_misses_on_generated_pictures(clip: tuple[Any, Any, Any]) -> None:
    # One prompt per (colour, shape), each on a background of its own: 18 pictures, 11 near misses each.
    prompts = [
        (colour, shape, COLOURS[(i + 1 + j) % len(COLOURS)])
        for i, colour in enumerate(COLOURS)
        for j, shape in enumerate(SHAPES)
    ]
    images = generate_reference_images(
        prompts, seeds=1, first_seed=700, model=MODELS / "Stable-diffusion" / "easel-reference"
    )
    wins = pair_wins(clip, images, prompts)
    print({kind: sum(v) / len(v) for kind, v in wins.items()})
    assert rate(wins) >= MIN_PAIR_ACCURACY
