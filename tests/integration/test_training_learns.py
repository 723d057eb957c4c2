"""LoRA training learns: on Easel's reference model (models/Stable-diffusion/easel-reference, 64×64 shapes),
150 steps teach a new word, "zwx", to mean a yellow triangle on a red background. Afterwards the trigger
prompt shows it for most seeds where the base model never does, prompts without the trigger keep their
colours, the saved file applied by Easel's LoRA path matches the model as trained (within 1/255), and at
weight 0 the images are the base model's, byte for byte.

The reference model's VAE only reproduces its six training colours (a cyan circle comes back green), and a
LoRA of a few hundred steps does not draw it a new shape, so what is taught is a new word for a look the
model can render: the thing a trigger word is for."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tools.reference.shapes import PALETTE, ShapeSpec, random_spec, render

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "models" / "Stable-diffusion" / "easel-reference"
SEEDS = [11, 12, 13, 14, 15, 16, 17, 18]


def _dataset(root: Path) -> Path:
    """12 yellow triangles on red captioned "a zwx", and 16 of the model's own shapes with their captions
    (regularisation, so that the rest of what it knows stays)."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for index in range(12):
        half = float(rng.uniform(12, 22))
        cx, cy = (float(v) for v in rng.uniform(half + 2, 62 - half, 2))
        triangle = ShapeSpec("triangle", "yellow", "red", cx, cy, half)
        Image.fromarray(render(triangle)).save(root / f"t{index}.png")
        (root / f"t{index}.txt").write_text("a zwx")
    for index in range(16):
        spec = random_spec(rng)
        Image.fromarray(render(spec)).save(root / f"r{index}.png")
        (root / f"r{index}.txt").write_text(spec.full_caption())
    return root


def _near(image: Image.Image, colour: str) -> float:
    """The share of pixels within 90 (sum over RGB) of a palette colour."""
    pixels = np.asarray(image, dtype=float)
    return float((np.abs(pixels - np.array(PALETTE[colour], dtype=float)).sum(-1) < 90).mean())


def _reference_model(tmp_path: Path) -> tuple[Path, Any]:
    """A data dir holding a copy of the reference model, and that model loaded in fp32 for training."""
    from webui.registry.scanner import scan_checkpoints
    from webui.runtime.loader import load_checkpoint

    data = tmp_path / "data"
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(REFERENCE, checkpoints / REFERENCE.name)
    (record,) = scan_checkpoints(checkpoints)
    return data, load_checkpoint(record, dtype=torch.float32, tokenizer_cache=tmp_path / "tokenizers")


def _shows_concept(image: Image.Image) -> bool:
    return _near(image, "red") > 0.5 and _near(image, "yellow") > 0.05


def test_a_lora_teaches_the_reference_model_a_new_word(tmp_path: Path) -> None:
    from webui.container import build_services
    from webui.domain.generation import Txt2ImgRequest
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.generate import DiffusionJob, generate_batch
    from webui.settings import Settings
    from webui.training.dataset import load_dataset
    from webui.training.lora import LoraTrainingConfig, train_lora

    data, model = _reference_model(tmp_path)
    sampler, schedule = resolve_sampler("DPM++ 2M", "Karras")
    in_memory: list[Image.Image] = []

    def sample(step: int) -> None:  # the model as trained, with its adapters, at the last step
        if step == 150:
            job = DiffusionJob(
                prompt="a zwx", negative_prompt="", steps=20, cfg_scale=7.0, width=64, height=64,
                seeds=SEEDS[:2], subseeds=[0, 0], subseed_strength=0.0, sampler=sampler, schedule=schedule,
            )  # fmt: skip
            in_memory.extend(generate_batch(model, job, on_step=None)[0])

    config = LoraTrainingConfig(
        name="zwx", resolution=64, rank=8, alpha=8, total_steps=150, batch_size=4, learning_rate=1e-3,
        text_encoder_learning_rate=5e-4, train_text_encoder=True, seed=1, warmup_steps=10, sample_every=150,
        eval_every=15,
    )  # fmt: skip
    dataset = load_dataset(_dataset(tmp_path / "dataset"))
    result = train_lora(model, dataset, config, data / "models" / "Lora", on_sample=sample)
    assert result.path is not None and result.steps == 150
    assert np.mean(result.losses[-20:]) < np.mean(result.losses[:20])
    # the eval loss, on the same images, noise and timesteps every 15 steps, drops
    assert [step for step, _ in result.eval_losses] == list(range(0, 151, 15))
    evals = [loss for _, loss in result.eval_losses]
    assert evals[-1] < 0.9 * evals[0] and np.mean(evals[-3:]) < 0.9 * np.mean(evals[:3]), evals

    services = build_services(Settings(data_dir=data, preload_model=False))
    try:

        def images(prompt: str, seeds: list[int]) -> list[Image.Image]:
            request = Txt2ImgRequest(
                prompt=prompt, steps=20, width=64, height=64, seed=seeds[0], batch_size=len(seeds),
                sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=7.0, save_images=False,
            )  # fmt: skip
            done = services.generation.submit_txt2img(request).result(timeout=300)
            return [Image.open(io.BytesIO(image.png_bytes)).convert("RGB") for image in done.images]

        base = images("a zwx", SEEDS)
        taught = images("a zwx <lora:zwx:1>", SEEDS)
        assert sum(map(_shows_concept, taught)) >= 6, [(_near(i, "red"), _near(i, "yellow")) for i in taught]
        assert sum(map(_shows_concept, base)) <= 2, [(_near(i, "red"), _near(i, "yellow")) for i in base]

        # the file, applied by Easel, is the model as trained (1/255: rounding of the fp16 file); the same
        # batch shape as in training, so only the file's rounding differs
        for trained, applied in zip(in_memory, images("a zwx <lora:zwx:1>", SEEDS[:2]), strict=True):
            difference = np.abs(np.asarray(trained, dtype=int) - np.asarray(applied, dtype=int))
            assert difference.max() <= 1, difference.max()

        # prompts without the trigger keep their colours
        for prompt, background, shape in [
            ("a red circle on a blue background", "blue", "red"),
            ("a yellow square on a black background", "black", "yellow"),
        ]:
            with_lora = images(f"{prompt} <lora:zwx:1>", SEEDS[:4])
            for image in with_lora:
                assert _near(image, background) > 0.4 and _near(image, shape) > 0.05, prompt

        # at weight 0 it is the base model exactly
        zero, plain = images("a zwx <lora:zwx:0>", SEEDS[:2]), images("a zwx", SEEDS[:2])  # same shapes
        assert [image.tobytes() for image in zero] == [image.tobytes() for image in plain]
    finally:
        services.generation.shutdown()


def test_an_embedding_teaches_the_reference_model_a_new_word(tmp_path: Path) -> None:
    """Textual inversion: only the new word's vectors learn "a yellow triangle on a red background"; the
    prompt naming the embedding shows it for most seeds, the same words without the file do not."""
    from webui.container import build_services
    from webui.domain.generation import Txt2ImgRequest
    from webui.settings import Settings
    from webui.training.dataset import load_dataset
    from webui.training.embedding import EmbeddingTrainingConfig, train_embedding

    data, model = _reference_model(tmp_path)
    folder = _dataset(tmp_path / "dataset")
    for path in folder.glob("r*"):  # the model's own shapes would get the new word in front: left out
        path.unlink()
    config = EmbeddingTrainingConfig(
        name="zwx", resolution=64, total_steps=60, batch_size=4, vectors=2, init_text="shape",
        learning_rate=2e-2, seed=1,
    )  # fmt: skip
    result = train_embedding(model, load_dataset(folder), config, data / "models" / "embeddings")
    assert result.path is not None and result.steps == 60
    evals = [loss for _, loss in result.eval_losses]
    assert evals[-1] < evals[0], evals

    services = build_services(Settings(data_dir=data, preload_model=False))
    try:

        def images(named: bool) -> list[Image.Image]:
            request = Txt2ImgRequest(
                prompt="a zwx", steps=20, width=64, height=64, seed=SEEDS[0], batch_size=len(SEEDS),
                sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=7.0, save_images=False,
            )  # fmt: skip
            done = services.generation.submit_txt2img(request).result(timeout=300)
            assert ('TI hashes: "zwx' in done.images[0].infotext) is named, done.images[0].infotext
            return [Image.open(io.BytesIO(image.png_bytes)).convert("RGB") for image in done.images]

        taught = images(named=True)
        assert sum(map(_shows_concept, taught)) >= 6, [(_near(i, "red"), _near(i, "yellow")) for i in taught]
        result.path.rename(tmp_path / "away.safetensors")
        services.networks.refresh_embeddings()
        base = images(named=False)
        assert sum(map(_shows_concept, base)) <= 2, [(_near(i, "red"), _near(i, "yellow")) for i in base]
    finally:
        services.generation.shutdown()


def test_dreambooth_teaches_the_reference_model_a_new_word(tmp_path: Path) -> None:
    """A full fine-tune of the reference model (a diffusers folder, so the result is one too): the new
    checkpoint draws "a zwx" as a yellow triangle on red for most seeds where the base never does, and a
    prompt without the word keeps its colours (the model's own shapes are in the dataset)."""
    from webui.container import build_services
    from webui.domain.generation import Txt2ImgRequest
    from webui.settings import Settings
    from webui.training.dataset import load_dataset
    from webui.training.dreambooth import DreamBoothConfig, train_dreambooth

    data, model = _reference_model(tmp_path)
    checkpoints = data / "models" / "Stable-diffusion"
    config = DreamBoothConfig(
        name="zwx-db", resolution=64, total_steps=100, batch_size=4, learning_rate=1e-4,
        train_text_encoder=True, text_encoder_learning_rate=1e-4, seed=1,
    )  # fmt: skip
    result = train_dreambooth(model, load_dataset(_dataset(tmp_path / "dataset")), config, checkpoints)
    assert result.path == checkpoints / "zwx-db" and result.steps == 100
    del model

    services = build_services(Settings(data_dir=data, preload_model=False))
    try:

        def images(checkpoint: str, prompt: str) -> list[Image.Image]:
            request = Txt2ImgRequest(
                prompt=prompt, steps=20, width=64, height=64, seed=SEEDS[0], batch_size=len(SEEDS),
                sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=7.0, save_images=False,
                override_settings={"sd_model_checkpoint": checkpoint},
            )  # fmt: skip
            done = services.generation.submit_txt2img(request).result(timeout=300)
            assert f"Model: {checkpoint}," in done.images[0].infotext, done.images[0].infotext
            return [Image.open(io.BytesIO(image.png_bytes)).convert("RGB") for image in done.images]

        taught = images("zwx-db", "a zwx")
        assert sum(map(_shows_concept, taught)) >= 6, [(_near(i, "red"), _near(i, "yellow")) for i in taught]
        kept = images("zwx-db", "a red circle on a blue background")
        assert sum(_near(i, "blue") > 0.5 and _near(i, "red") > 0.04 for i in kept) >= 6, [
            (_near(i, "blue"), _near(i, "red")) for i in kept
        ]
        base = images("easel-reference", "a zwx")
        assert sum(map(_shows_concept, base)) <= 2, [(_near(i, "red"), _near(i, "yellow")) for i in base]
    finally:
        services.generation.shutdown()
