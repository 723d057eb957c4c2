"""LoRA training on tiny SD 1.5 and SDXL checkpoints loaded the way Easel loads them: the file is in kohya's
layout, Easel's LoRA list and patcher take it, it changes the images, and the checkpoint is left as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.fixtures.training import load_tiny
from webui.domain.generation import Txt2ImgRequest
from webui.training.dataset import load_dataset
from webui.training.lora import LoraTrainingConfig, TrainingError, train_lora


def _dataset(root: Path) -> Path:
    folder = root / "dataset" / "5_zwx ball"
    folder.mkdir(parents=True)
    for index, (size, colour) in enumerate(
        [((64, 64), (220, 20, 20)), ((64, 64), (20, 20, 220)), ((96, 64), (20, 200, 20))]
    ):
        Image.new("RGB", size, colour).save(folder / f"ball-{index}.png")
    (folder / "ball-0.txt").write_text("zwx ball, red")
    return root / "dataset"


def _keys(path: Path) -> tuple[list[str], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys()), dict(handle.metadata() or {})


def test_sd15_lora_trains_saves_in_kohya_layout_and_changes_easels_images(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    from webui.container import build_services
    from webui.settings import Settings

    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    before = {name: tensor.clone() for name, tensor in model.unet.state_dict().items()}
    dataset = load_dataset(_dataset(tmp_path))
    config = LoraTrainingConfig(
        name="zwx-ball", resolution=64, rank=4, alpha=4, total_steps=6, batch_size=2, learning_rate=5e-2,
        train_text_encoder=True, text_encoder_learning_rate=1e-2, warmup_steps=2, seed=3,
    )  # fmt: skip
    seen: list[tuple[int, int, float]] = []
    result = train_lora(
        model, dataset, config, tmp_path / "models" / "Lora", on_step=lambda *step: seen.append(step) or True
    )
    assert result.path == tmp_path / "models" / "Lora" / "zwx-ball.safetensors" and not result.stopped
    assert [step for step, _total, _loss in seen] == [1, 2, 3, 4, 5, 6] and len(result.losses) == 6
    assert all(loss > 0 for loss in result.losses)

    keys, metadata = _keys(result.path)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_down_blocks_1_attentions_0_proj_in.alpha" in keys
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.lora_up.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight" in keys
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_network_dim"] == "4"
    assert metadata["ss_output_name"] == "zwx-ball" and metadata["ss_steps"] == "6"

    # The checkpoint in memory is the checkpoint again: no adapters, the same weights.
    assert type(model.unet).__name__ == "UNet2DConditionModel"
    after = model.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[name], before[name]) for name in before)

    with pytest.raises(TrainingError, match="already exists"):
        train_lora(model, dataset, config, tmp_path / "models" / "Lora")

    services = build_services(Settings(data_dir=tmp_path, preload_model=False))
    try:
        (listed,) = services.networks.loras.records()
        assert (listed.name, listed.family.value, listed.rank) == ("zwx-ball", "sd1", 4)
        plain, with_lora = (
            services.generation.txt2img(
                Txt2ImgRequest(
                    prompt=f"zwx ball{tag}", steps=3, width=64, height=64, seed=5, save_images=False
                )
            )
            for tag in ("", " <lora:zwx-ball:1>")
        )
        assert "Lora hashes" in with_lora.images[0].infotext  # applied
        assert plain.images[0].png_bytes != with_lora.images[0].png_bytes
    finally:
        services.generation.shutdown()


def test_stopping_early_saves_what_was_learnt_and_bad_settings_are_refused(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    dataset = load_dataset(_dataset(tmp_path))
    config = LoraTrainingConfig(name="early", resolution=64, rank=2, total_steps=50, schedule="cosine")
    result = train_lora(
        model, dataset, config, tmp_path / "out", on_step=lambda step, _total, _loss: step < 2
    )
    assert result.stopped and result.steps == 2 and result.path is not None
    assert _keys(result.path)[1]["ss_steps"] == "2"
    for bad, message in [
        ({"name": "../x"}, "cannot be a file name"),
        ({"resolution": 100}, "multiple of 64"),
        ({"schedule": "wavy"}, "unknown schedule"),
        ({"rank": 0}, "rank must be at least 1"),
    ]:
        with pytest.raises(TrainingError, match=message):
            train_lora(model, dataset, LoraTrainingConfig(**{"name": "ok", **bad}), tmp_path / "out")


def test_sdxl_lora_is_written_with_ldm_names_and_both_text_encoders(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    from webui.runtime.lora import read_lora_file

    model = load_tiny(tmp_path, tiny_model_files, "sdxl_single")
    assert model.family.value == "sdxl"
    config = LoraTrainingConfig(
        name="xl", resolution=64, rank=2, total_steps=2, learning_rate=1e-3, train_text_encoder=True
    )
    result = train_lora(model, load_dataset(_dataset(tmp_path)), config, tmp_path / "out")
    assert result.path is not None
    keys, metadata = _keys(result.path)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    unet_keys = [key for key in keys if key.startswith("lora_unet_")]
    assert unet_keys and not any("down_blocks" in key or "up_blocks" in key for key in unet_keys)
    assert any(key.startswith("lora_unet_input_blocks_") for key in unet_keys)
    assert any(key.startswith("lora_te1_") for key in keys) and any(
        key.startswith("lora_te2_") for key in keys
    )
    parsed = read_lora_file(result.path, name="xl", key="xl")
    assert len(parsed.layers) == len([key for key in keys if key.endswith(".alpha")])


def test_a_loss_that_is_not_finite_stops_the_run_and_saves_nothing(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    """A learning rate of 1e30 blows the adapters up after the first step: the next loss is not finite, the
    run stops with advice, nothing is written, and the checkpoint is unchanged."""
    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    before = {name: tensor.clone() for name, tensor in model.unet.state_dict().items()}
    config = LoraTrainingConfig(
        name="blown", resolution=64, rank=2, total_steps=20, learning_rate=1e30, min_snr_gamma=None
    )
    seen: list[int] = []
    with pytest.raises(TrainingError, match=r"nothing was saved.*learning rate.*bf16 or fp32"):
        train_lora(
            model, load_dataset(_dataset(tmp_path)), config, tmp_path / "out",
            on_step=lambda step, _total, _loss: seen.append(step) or True,
        )  # fmt: skip
    assert seen and len(seen) < 20  # some steps ran before the loss went wrong
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    after = model.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[name], before[name]) for name in before)


def test_gradient_accumulation_steps_once_per_k_batches(
    tmp_path: Path, tiny_model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 3 batches per step, 2 steps run the UNet on 6 batches, report 2 losses (each the mean of its
    3 batches' losses), backpropagate each batch's loss divided by 3 (the step's gradient is their mean, not
    their sum) and tell the step callback 2 steps; 0 batches per step is refused."""
    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    batches: list[int] = []
    hook = model.unet.register_forward_hook(  # the training batches (not the eval loss's forward passes)
        lambda _module, _args, _output: batches.append(1) if torch.is_grad_enabled() else None
    )
    mse_loss = torch.nn.functional.mse_loss
    batch_losses: list[float] = []
    upstream: list[torch.Tensor] = []  # d(what is backpropagated) / d(each squared error)

    def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
        errors = mse_loss(*args, **kwargs)
        if errors.requires_grad:  # a training batch (the eval loss is measured without gradients)
            batch_losses.append(float(errors.detach().mean()))
            errors.register_hook(upstream.append)
        return errors

    monkeypatch.setattr(torch.nn.functional, "mse_loss", recorded)
    steps: list[int] = []
    dataset = load_dataset(_dataset(tmp_path))
    config = LoraTrainingConfig(
        name="accumulated", resolution=64, rank=2, total_steps=2, gradient_accumulation=3,
        min_snr_gamma=None, train_text_encoder=False,
    )  # fmt: skip
    try:
        result = train_lora(
            model, dataset, config, tmp_path / "out",
            on_step=lambda step, _total, _loss: steps.append(step) or True,
        )  # fmt: skip
    finally:
        hook.remove()
    assert len(batches) == 6 and steps == [1, 2] and len(result.losses) == 2
    for step in range(2):
        assert result.losses[step] == pytest.approx(sum(batch_losses[3 * step : 3 * step + 3]) / 3, rel=1e-6)
    assert len(upstream) == 6
    for grad in upstream:  # mean over the batch's elements, then over the 3 batches
        assert torch.allclose(grad, torch.full_like(grad, 1 / (grad.numel() * 3)))
    monkeypatch.undo()
    assert result.path is not None and result.path.is_file()
    assert _keys(result.path)[1]["ss_gradient_accumulation_steps"] == "3"
    with pytest.raises(TrainingError, match="gradient accumulation"):
        train_lora(
            model, dataset,
            LoraTrainingConfig(name="zero", resolution=64, gradient_accumulation=0), tmp_path / "out",
        )  # fmt: skip


def test_a_stopped_and_resumed_run_equals_one_that_never_stopped(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    """fp32, the same seed: 6 steps in one go against 3 steps, a stop, and a resume to 6 (adapters, optimizer
    moments, data order and noise all come back from the state file)."""
    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    dataset = load_dataset(_dataset(tmp_path))

    def config() -> LoraTrainingConfig:
        return LoraTrainingConfig(
            name="same", resolution=64, rank=4, total_steps=6, batch_size=2, learning_rate=1e-2,
            train_text_encoder=True, schedule="cosine", warmup_steps=2, seed=9,
        )  # fmt: skip

    whole = train_lora(model, dataset, config(), tmp_path / "a", state_file=tmp_path / "a.pt")
    first = train_lora(
        model, dataset, config(), tmp_path / "b", state_file=tmp_path / "b.pt",
        on_step=lambda step, _total, _loss: step < 3,
    )  # fmt: skip
    assert first.stopped and first.steps == 3
    with pytest.raises(TrainingError, match="no saved state"):
        train_lora(model, dataset, config(), tmp_path / "c", state_file=tmp_path / "c.pt", resume=True)
    rest = train_lora(model, dataset, config(), tmp_path / "b", state_file=tmp_path / "b.pt", resume=True)
    assert rest.steps == 6 and not rest.stopped
    assert first.losses + rest.losses == pytest.approx(whole.losses, abs=1e-6)
    one, two = (torch.load(tmp_path / f"{k}.pt", weights_only=True)["weights"] for k in "ab")
    for part in one:
        for key, tensor in one[part].items():
            assert torch.allclose(tensor, two[part][key], atol=1e-6), key
    assert _keys(tmp_path / "b" / "same.safetensors")[1]["ss_steps"] == "6"  # the stop's file was replaced
