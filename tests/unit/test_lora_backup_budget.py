"""The RAM check before LoRA backups are taken: its arithmetic, and that a refused patch changes nothing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from webui.domain.lora import ActiveLora
from webui.domain.models import ModelFamily
from webui.runtime.lora import (
    BACKUP_RESERVE_BYTES,
    LoraLayer,
    LoraMemoryError,
    LoraPatcher,
    ParsedLora,
    available_ram_bytes,
    check_backup_budget,
)

MIB = 2**20


def test_budget_arithmetic_needed_plus_reserve_against_available() -> None:
    check_backup_budget(100 * MIB, 612 * MIB, reserve=512 * MIB)  # exactly fits
    check_backup_budget(10**15, None)  # availability unknown: no check
    with pytest.raises(LoraMemoryError) as caught:
        check_backup_budget(100 * MIB + 1, 612 * MIB, weights=794, reserve=512 * MIB)
    message = str(caught.value)
    assert "needs 0.10 GiB of RAM for exact backups of the 794 model weights" in message
    assert "only 0.60 GiB is available (keeping 0.50 GiB free" in message
    assert "Nothing was changed" in message
    # an SDXL-sized case: 2.5 GiB of fp16 backups on a machine with 2 GiB available
    with pytest.raises(LoraMemoryError, match=r"needs 2\.50 GiB"):
        check_backup_budget(int(2.5 * 2**30), 2 * 2**30, weights=1000)
    assert BACKUP_RESERVE_BYTES == 512 * MIB


def test_available_ram_is_read_without_psutil() -> None:
    value = available_ram_bytes()
    assert value is None or value > 0


def _model() -> SimpleNamespace:
    unet = torch.nn.Sequential()
    unet.add_module("proj", torch.nn.Linear(64, 32))  # 32×64 fp32 = 8 KiB
    unet.add_module("out", torch.nn.Linear(32, 16, bias=False).half())  # 16×32 fp16 = 1 KiB
    return SimpleNamespace(
        unet=unet,
        text_encoder=None,
        text_encoder_2=None,
        family=ModelFamily.SD1,
        record=SimpleNamespace(name="tiny.safetensors"),
    )


def _lora() -> tuple[ActiveLora, ParsedLora]:
    generator = torch.Generator().manual_seed(0)

    def layer(out_features: int, in_features: int) -> LoraLayer:
        down = torch.randn(2, in_features, generator=generator)
        return LoraLayer("lora", {"down": down, "up": torch.randn(out_features, 2, generator=generator)})

    parsed = ParsedLora("style", "k", {"unet.proj": layer(32, 64), "unet.out": layer(16, 32)})
    return ActiveLora("style", "/style.safetensors", "k", 1.0, 1.0), parsed


def test_patch_that_does_not_fit_is_refused_before_any_change() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    needed = 32 * 64 * 4 + 16 * 32 * 2
    patcher = LoraPatcher(model, available_ram=lambda: BACKUP_RESERVE_BYTES + needed - 1)
    with pytest.raises(LoraMemoryError, match="2 model weights"):
        patcher.apply([_lora()])
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert patcher.applied == () and patcher.backup_bytes == 0

    patcher = LoraPatcher(model, available_ram=lambda: BACKUP_RESERVE_BYTES + needed)
    report = patcher.apply([_lora()])
    assert report.patched and report.touched == 2
    assert patcher.backup_bytes == needed  # the estimate is what the backups really take
    patcher.apply([])
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())


def test_switch_reuses_the_backup_buffer_and_removal_gives_it_back() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    needed = 32 * 64 * 4 + 16 * 32 * 2
    ram = {"free": BACKUP_RESERVE_BYTES + needed}
    patcher = LoraPatcher(model, available_ram=lambda: ram["free"])
    active, parsed = _lora()
    patcher.apply([(active, parsed)])
    buffer = patcher._backup_buffer
    assert buffer is not None and buffer.numel() == needed
    ram["free"] = 0  # the next set fits the kept buffer: no new memory is asked for
    other = ActiveLora("style", "/style.safetensors", "k", 1.0, -1.0)
    patcher.apply([(other, parsed)])
    assert patcher._backup_buffer is buffer
    assert patcher.backup_bytes == needed
    patcher.apply([])
    assert patcher._backup_buffer is None and patcher.backup_bytes == 0
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
