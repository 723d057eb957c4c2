"""DreamBooth on tiny SD 1.5 and SDXL single files: the trained weights go back into the LDM layout of the
base file exactly (every other tensor copied), prior preservation draws and reuses its class images, the new
checkpoint is found, identified and loaded like any other, and a run that cannot fit in memory is refused
with the numbers before anything is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.conftest import _link_or_copy
from tests.fixtures.training import load_checkpoint_at, load_tiny
from webui.training.dataset import load_dataset
from webui.training.dreambooth import (
    DreamBoothConfig,
    check_memory,
    memory_estimate,
    train_dreambooth,
)
from webui.training.lora import TrainingError


def _dataset(root: Path) -> Path:
    folder = root / "dataset" / "10_zwx ball"
    folder.mkdir(parents=True)
    for index, colour in enumerate([(220, 20, 20), (20, 20, 220)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"ball-{index}.png")
    return root / "dataset"


@pytest.mark.parametrize("key", ["sd15_single", "sdxl_single"])
def test_trained_tensors_go_back_to_the_base_files_keys_exactly(
    tmp_path: Path, tiny_model_files: dict[str, Path], key: str
) -> None:
    from webui.runtime.loader import TensorSource
    from webui.training.checkpoint_file import trained_tensors

    model = load_tiny(tmp_path, tiny_model_files, key)
    base = TensorSource.for_file(tiny_model_files[key])
    stored = base.tensors(("",))
    placed = trained_tensors(model, set(stored), text_encoder=True)
    encoders = [m for m in (model.text_encoder, model.text_encoder_2) if m is not None]
    expected = sum(1 for _ in model.unet.state_dict()) + sum(
        1 for m in encoders for name in m.state_dict() if not name.endswith("position_ids")
    )
    if model.text_encoder_2 is not None:  # OpenCLIP keeps q, k, v (weights and biases) as one in_proj pair
        expected -= 4 * len(model.text_encoder_2.text_model.encoder.layers)
    assert len(placed) == expected  # every trained tensor has exactly one place
    for name, tensor in placed.items():
        assert torch.equal(tensor.to(stored[name].dtype).reshape(stored[name].shape), stored[name]), name


def _drawer(model: Any) -> Any:
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.generate import DiffusionJob, generate_batch

    sampler, schedule = resolve_sampler("Euler", None)
    drawn: list[int] = []

    def draw(prompt: str, seed: int) -> Image.Image:
        drawn.append(seed)
        job = DiffusionJob(
            prompt=prompt, negative_prompt="", steps=2, cfg_scale=7.0, width=64, height=64, seeds=[seed],
            subseeds=[0], subseed_strength=0.0, sampler=sampler, schedule=schedule,
        )  # fmt: skip
        return generate_batch(model, job)[0][0]

    draw.drawn = drawn  # type: ignore[attr-defined]
    return draw


def test_dreambooth_with_prior_preservation_saves_a_checkpoint_easel_loads(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    from webui.registry.scanner import scan_checkpoints

    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    before = {name: t.clone() for name, t in model.unet.state_dict().items()}
    out = tmp_path / "models" / "Stable-diffusion"
    config = DreamBoothConfig(
        name="zwx-ball-db", resolution=64, total_steps=3, batch_size=1, learning_rate=1e-3, seed=3,
        prior_preservation=True, class_prompt="a photo of a ball", class_images=2, min_snr_gamma=None,
    )  # fmt: skip
    draw = _drawer(model)
    steps: list[int] = []
    result = train_dreambooth(
        model, load_dataset(_dataset(tmp_path)), config, out,
        on_step=lambda step, _total, _loss: steps.append(step) or True,
        class_folder=tmp_path / "run" / "class_images", draw=draw,
    )  # fmt: skip
    assert steps == [1, 2, 3] and result.path == out / "zwx-ball-db.safetensors"
    assert sorted(p.name for p in (tmp_path / "run" / "class_images").iterdir()) == [
        "class-00000.png", "class-00001.png"
    ]  # fmt: skip
    assert draw.drawn == [3, 4]
    trained = {name: t.clone() for name, t in model.unet.state_dict().items()}
    assert any(not torch.equal(trained[name], before[name]) for name in before)  # the UNet learnt

    with safe_open(str(result.path), framework="pt") as handle:
        assert handle.metadata()["easel.training"] == "dreambooth"
        assert handle.get_tensor("first_stage_model.decoder.conv_out.weight").dtype == torch.float16
    (record,) = [r for r in scan_checkpoints(out) if Path(r.path) == result.path]
    assert record.family is not None and record.family.value == "sd1"
    loaded = load_checkpoint_at(result.path, tmp_path)
    for name, tensor in loaded.unet.state_dict().items():  # what was trained, at fp16's precision
        assert torch.allclose(tensor, trained[name], atol=2e-3, rtol=1e-3), name
    base_vae = load_checkpoint_at(out / tiny_model_files["sd15_single"].name, tmp_path).vae.state_dict()
    for name, tensor in loaded.vae.state_dict().items():  # copied from the base, untouched
        assert torch.allclose(tensor, base_vae[name], atol=2e-3, rtol=1e-3), name

    again = train_dreambooth(  # the class images are reused: none is drawn again
        model, load_dataset(tmp_path / "dataset"),
        DreamBoothConfig(**{**config.__dict__, "name": "zwx-ball-db-2", "total_steps": 1}), out,
        class_folder=tmp_path / "run" / "class_images", draw=draw,
    )  # fmt: skip
    assert again.path is not None and draw.drawn == [3, 4]
    with pytest.raises(TrainingError, match="already exists"):
        train_dreambooth(model, load_dataset(tmp_path / "dataset"), config, out)
    with pytest.raises(TrainingError, match="class prompt"):
        DreamBoothConfig(name="x", prior_preservation=True).check()


def test_a_run_that_cannot_fit_is_refused_with_the_numbers(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    config = DreamBoothConfig(name="big", resolution=512, batch_size=2)
    estimate = memory_estimate(model, config)
    unet_params = sum(p.numel() for p in model.unet.parameters())
    assert estimate.gradients == 4 * unet_params and estimate.optimizer == 8 * unet_params  # AdamW, fp32
    assert estimate.activations == 2 * 3 * 2**30  # two 512² images
    lighter = memory_estimate(
        model, DreamBoothConfig(name="big", resolution=512, batch_size=2, gradient_checkpointing=True,
                                optimizer="Adafactor")
    )  # fmt: skip
    assert lighter.total < estimate.total and lighter.optimizer < estimate.optimizer
    with_text = memory_estimate(model, DreamBoothConfig(name="big", train_text_encoder=True))
    assert with_text.gradients > memory_estimate(model, DreamBoothConfig(name="big")).gradients
    check_memory(estimate, estimate.total, "cuda")  # just fits
    check_memory(estimate, None, "mps")  # unknown: not refused
    with pytest.raises(TrainingError, match=r"needs about 6\.\d GiB on the cuda .* 1\.0 GiB are free.*LoRA"):
        check_memory(estimate, 2**30, "cuda")


def test_a_diffusers_folder_base_gives_a_folder_easel_loads(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    """Its configs need not be the family's and a single LDM file cannot carry them: the result is a
    diffusers folder with the base's configs, tokenizer and untouched components, and the trained weights."""
    from webui.domain.models import ModelFormat
    from webui.registry.scanner import scan_checkpoints

    base = tmp_path / "models" / "Stable-diffusion" / "tiny.folder"  # a dot in a folder's name is kept
    _link_or_copy(tiny_model_files["sd15_folder"], base)
    model = load_checkpoint_at(base, tmp_path)
    config = DreamBoothConfig(
        name="zwx.db", resolution=64, total_steps=2, learning_rate=1e-3, train_text_encoder=True, seed=2
    )
    result = train_dreambooth(model, load_dataset(_dataset(tmp_path)), config, base.parent)
    target = base.parent / "zwx.db"
    assert result.path == target and target.is_dir()
    assert not [p for p in base.parent.iterdir() if p.name.startswith(".")]  # no partial folder is left
    for same in ("model_index.json", "unet/config.json", "text_encoder/config.json", "scheduler"):
        assert sorted(_files(target / same)) == sorted(_files(base / same)), same
    for name, data in _files(base / "vae").items():  # untouched: copied byte for byte
        assert _files(target / "vae")[name] == data, name
    assert _files(target / "tokenizer") == _files(base / "tokenizer")
    assert sorted(p.name for p in (target / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"
    ]  # fmt: skip
    with safe_open(str(target / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["easel.training"] == "dreambooth"
        assert handle.metadata()["easel.steps"] == "2"
    (record,) = [r for r in scan_checkpoints(base.parent) if Path(r.path) == target]
    assert record.format is ModelFormat.DIFFUSERS and record.family is not None
    loaded = load_checkpoint_at(target, tmp_path)
    for part in ("unet", "text_encoder"):
        trained = getattr(model, part).state_dict()
        for name, tensor in getattr(loaded, part).state_dict().items():  # fp16's precision
            assert torch.allclose(tensor, trained[name].float(), atol=2e-3, rtol=1e-3), (part, name)
    changed = load_checkpoint_at(base, tmp_path).unet.state_dict()
    assert any(not torch.equal(changed[n], t) for n, t in loaded.unet.state_dict().items())
    with pytest.raises(TrainingError, match="already exists"):
        train_dreambooth(model, load_dataset(tmp_path / "dataset"), config, base.parent)


def _files(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_stopped_and_resumed_dreambooth_run_equals_one_that_never_stopped(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    """fp32, the same seed: 4 steps in one go against 2, a stop (checkpoint and state saved), and a resume
    to 4 whose checkpoint replaces the stop's; the state file is removed once the run has finished."""
    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    base = Path(model.record.path)
    dataset = load_dataset(_dataset(tmp_path))

    def config(name: str) -> DreamBoothConfig:
        return DreamBoothConfig(
            name=name, resolution=64, total_steps=4, batch_size=2, learning_rate=1e-3, seed=5,
            schedule="cosine", warmup_steps=1, train_text_encoder=True,
        )  # fmt: skip

    out = base.parent
    whole = train_dreambooth(model, dataset, config("whole"), out)
    model = load_checkpoint_at(base, tmp_path)  # each run starts from the base, as a new worker does
    state = tmp_path / "run" / "state.pt"
    state.parent.mkdir()
    with pytest.raises(TrainingError, match="no saved state"):
        train_dreambooth(model, dataset, config("parted"), out, state_file=state, resume=True)
    first = train_dreambooth(
        model, dataset, config("parted"), out, state_file=state,
        on_step=lambda step, _total, _loss: step < 2,
    )  # fmt: skip
    assert first.stopped and first.steps == 2 and state.is_file()
    with safe_open(str(out / "parted.safetensors"), framework="pt") as handle:
        assert handle.metadata()["easel.steps"] == "2"
    model = load_checkpoint_at(base, tmp_path)  # the resumed run's weights come from the state
    rest = train_dreambooth(model, dataset, config("parted"), out, state_file=state, resume=True)
    assert rest.steps == 4 and not rest.stopped and not state.exists()
    assert first.losses + rest.losses == pytest.approx(whole.losses, abs=1e-6)
    with safe_open(str(out / "parted.safetensors"), framework="pt") as handle:
        assert handle.metadata()["easel.steps"] == "4"  # the stop's file was replaced
        one = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    with safe_open(str(out / "whole.safetensors"), framework="pt") as handle:
        # the same arithmetic; fp16 rounding may differ in the last place
        for key in handle.keys():  # noqa: SIM118
            assert torch.allclose(handle.get_tensor(key).float(), one[key].float(), atol=1e-3), key
