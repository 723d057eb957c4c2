"""The DreamBooth save (webui/training/checkpoint_file.py): the base file's tensors, the trained ones in their
place, floats in fp16, EMA left out, streamed in the base file's order, never over an existing file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from webui.runtime.loader import TensorSource
from webui.training.checkpoint_file import write_checkpoint
from webui.training.lora import TrainingError


@pytest.fixture
def base(tmp_path: Path) -> TensorSource:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "model.diffusion_model.a.weight": torch.randn(4, 3, generator=generator),
        "model.diffusion_model.b.bias": torch.randn(5, generator=generator, dtype=torch.float64),
        "first_stage_model.c.weight": torch.randn(2, 2, generator=generator).to(torch.bfloat16),
        "cond_stage_model.position_ids": torch.arange(7, dtype=torch.int64).reshape(1, 7),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.diffusion_modela_weight": torch.randn(4, 3, generator=generator),
    }
    path = tmp_path / "base.safetensors"
    save_file(tensors, str(path))
    return TensorSource.for_file(path)


def test_the_base_with_its_trained_tensors_replaced(base: TensorSource, tmp_path: Path) -> None:
    trained = torch.full((4, 3), 0.5, requires_grad=True)
    out = write_checkpoint(
        base, {"model.diffusion_model.a.weight": trained}, tmp_path / "new.safetensors", {"ss_steps": "10"}
    )
    stored = base.tensors(("",))
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata() == {"ss_steps": "10"}
        keys = set(handle.keys())
        written = {key: handle.get_tensor(key) for key in keys}
    assert keys == {k for k in stored if not k.startswith("model_ema.")}  # EMA copies are left out
    assert torch.equal(
        written["model.diffusion_model.a.weight"], torch.full((4, 3), 0.5, dtype=torch.float16)
    )
    for key in ("model.diffusion_model.b.bias", "first_stage_model.c.weight"):  # untouched floats: fp16
        assert written[key].dtype == torch.float16
        assert torch.equal(written[key], stored[key].to(torch.float16))
    assert torch.equal(written["cond_stage_model.position_ids"], stored["cond_stage_model.position_ids"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "base.safetensors",
        "new.safetensors",
    ]  # no temp file


def test_a_wrong_shape_an_unknown_key_or_a_taken_name_writes_nothing(
    base: TensorSource, tmp_path: Path
) -> None:
    target = tmp_path / "new.safetensors"
    with pytest.raises(TrainingError, match=r"model.diffusion_model.a.weight is \(3, 4\)"):
        write_checkpoint(base, {"model.diffusion_model.a.weight": torch.zeros(3, 4)}, target, {})
    with pytest.raises(TrainingError, match="not in the base file"):
        write_checkpoint(base, {"model.diffusion_model.zz": torch.zeros(1)}, target, {})
    assert not target.exists()
    target.write_bytes(b"the user's file")
    with pytest.raises(TrainingError, match="already exists"):
        write_checkpoint(base, {}, target, {})
    assert target.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "new.safetensors"]
