"""The pre-flight's memory estimate (webui/training/memory.py) reads a checkpoint's sizes from its headers
alone: the parameter counts are those of the model Easel loads, and the LoRA size is what the trainer
adds; the service turns gradient checkpointing on when only that makes a run fit, and refuses a run that
cannot fit before anything is staged or queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.training import load_tiny
from webui.training.memory import GIB, checkpoint_sizes, estimate


def _parameters(module: Any) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("key", ["sd15_single", "sd15_folder", "sdxl_single"])
def test_sizes_from_the_headers_are_the_loaded_models(
    tmp_path: Path, tiny_model_files: dict[str, Path], key: str
) -> None:
    from peft import LoraConfig, get_peft_model

    from webui.training.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS

    sizes = checkpoint_sizes(tiny_model_files[key])
    assert sizes is not None
    model = load_tiny(tmp_path, tiny_model_files, key)
    assert sizes.unet == _parameters(model.unet)
    assert sizes.vae == _parameters(model.vae)
    # the loaded text encoders may drop a buffer-like key (position ids) or OpenCLIP's unused last layer
    loaded_text = _parameters(model.text_encoder) + _parameters(model.text_encoder_2)
    assert loaded_text <= sizes.text_encoders <= loaded_text * 1.15
    # the LoRA the trainer adds has the size the estimate counts (rank 4)
    unet = get_peft_model(model.unet, LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS))
    added = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert sizes.lora_parameters(4, text_encoder=False) == added
    if key == "sd15_single":
        text = get_peft_model(
            model.text_encoder, LoraConfig(r=4, lora_alpha=4, target_modules=TEXT_ENCODER_TARGETS)
        )
        added += sum(p.numel() for p in text.parameters() if p.requires_grad)
        assert sizes.lora_parameters(4, text_encoder=True) == added


def test_the_estimate_grows_with_what_is_trained_and_shrinks_with_the_savers(
    tiny_model_files: dict[str, Path],
) -> None:
    sizes = checkpoint_sizes(tiny_model_files["sd15_single"])
    assert sizes is not None

    def total(method: str, **changes: Any) -> int:
        values: dict[str, Any] = dict(
            resolution=512, batch_size=1, optimizer="AdamW", gradient_checkpointing=False,
            train_text_encoder=False, rank=16, weight_bytes=2,
        )  # fmt: skip
        values.update(changes)
        return estimate(method, sizes, **values).total

    assert total("embedding") < total("lora") < total("dreambooth")
    assert total("lora", gradient_checkpointing=True) < total("lora")
    assert total("lora", batch_size=2) > total("lora") and total("lora", resolution=1024) > total("lora")
    assert total("dreambooth", optimizer="Adafactor") < total("dreambooth")
    assert total("lora", weight_bytes=4) > total("lora")
    assert checkpoint_sizes(tiny_model_files["sd15_single"].with_suffix(".ckpt")) is None  # not readable


def test_the_service_turns_checkpointing_on_or_refuses_before_staging(services: Any) -> None:
    from tests.integration.test_training_service import UPLOADS, _settings
    from webui.services.training import TrainingRequestError

    training = services.training
    record = training.checkpoint("tiny-sd15")
    check = training.memory_check(record, _settings(), 64)
    assert check is not None and check.device == "cpu" and check.fits  # this machine: RAM, plenty
    assert f"Memory: about {check.needed.total / GIB:.1f} GiB of" in check.line()
    training.device_memory = lambda: ("cuda:0", None)  # a GPU run (half-precision weights), size unknown
    check = training.memory_check(record, _settings(), 64)
    assert check is not None and check.fits
    needed, lighter = check.needed.total, check.with_checkpointing.total
    assert lighter < needed

    # Between the two: the pre-flight says checkpointing goes on, and the queued run has it on.
    training.device_memory = lambda: ("cuda:0", (needed + lighter) // 2)
    run = training.start(_settings(), uploads=UPLOADS)
    try:
        assert run.settings.gradient_checkpointing is True
        assert any("gradient checkpointing is turned on" in w for w in run.summary["warnings"])
        assert run.summary["memory"]["fits"] is False and run.summary["memory"]["device"] == "cuda:0"
    finally:
        training.cancel(run.id)
        training.wait(run.id, timeout=240)

    # Below what even checkpointing needs: refused with the numbers and what to change; nothing staged.
    training.device_memory = lambda: ("cuda:0", lighter // 2)
    before = sorted(training.root.iterdir())
    with pytest.raises(
        TrainingRequestError, match=r"A LoRA run of this checkpoint needs about .* on the cuda:0"
    ):
        training.start(_settings(name="too-big"), uploads=UPLOADS)
    assert sorted(training.root.iterdir()) == before
