"""CUDA-only checks: fp16 loading, attention selection, offload modes. Skipped without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _record(path: Path):
    from webui.registry.scanner import scan_checkpoints

    return next(r for r in scan_checkpoints(path.parent) if r.name == path.name)


def test_fp16_load_and_generate_on_cuda(tiny_model_files: dict[str, Path], tmp_path: Path) -> None:
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.generate import DiffusionJob, generate_batch

    choice = choose_device("cuda", "half", "sdpa", "normal")
    assert choice.dtype == torch.float16
    cache = ModelCache(choice, capacity=1, tokenizer_cache=tmp_path / "tok")
    model = cache.get(_record(tiny_model_files["sd15_single"]))
    assert next(model.unet.parameters()).dtype == torch.float16
    assert next(model.unet.parameters()).device.type == "cuda"
    sampler, schedule = resolve_sampler("Euler a")
    job = DiffusionJob(
        prompt="a red circle", negative_prompt="", steps=4, cfg_scale=7.0, width=64, height=64,
        seeds=[1], subseeds=[1], subseed_strength=0.0, sampler=sampler, schedule=schedule,
    )  # fmt: skip
    images, _ = generate_batch(model, job)
    assert images[0].size == (64, 64)


def test_attention_choice_falls_back_without_xformers() -> None:
    from webui.runtime.cache import choose_device

    choice = choose_device("cuda", "half", "xformers", "normal")
    try:
        import xformers  # noqa: F401

        assert choice.attention == "xformers"
    except ImportError:
        assert choice.attention == "sdpa"


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_offload_modes_generate(mode: str, tiny_model_files: dict[str, Path], tmp_path: Path) -> None:
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.generate import DiffusionJob, generate_batch

    cache = ModelCache(
        choose_device("cuda", "half", "sdpa", mode), capacity=1, tokenizer_cache=tmp_path / "t"
    )
    model = cache.get(_record(tiny_model_files["sd15_single"]))
    sampler, schedule = resolve_sampler("Euler")
    job = DiffusionJob(
        prompt="x", negative_prompt="", steps=2, cfg_scale=7.0, width=64, height=64,
        seeds=[1], subseeds=[1], subseed_strength=0.0, sampler=sampler, schedule=schedule,
    )  # fmt: skip
    images, _ = generate_batch(model, job)
    assert images
