"""The merger's tensor work (``webui.runtime.merge``) on small synthetic checkpoints in the A1111 layout."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from webui.domain.merge import MergeError, MergeNameTakenError
from webui.runtime.merge import build_header, plan_merge, write_merge

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
OUT_BIAS = "model.diffusion_model.out.2.bias"
ATTN = "model.diffusion_model.middle_block.1.proj_in.weight"
TEXT = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
VAE_CONV = "first_stage_model.decoder.conv_out.weight"
VAE_BIAS = "first_stage_model.decoder.conv_out.bias"
EMA = "model_ema.decay"
SCHEDULE = "alphas_cumprod"


def _state(seed: int, *, channels: int = 4, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    return {
        CONV_IN: rand(8, channels, 3, 3),
        OUT_BIAS: rand(4),
        ATTN: rand(16, 16, 1, 1),
        TEXT: rand(32, 16),
        POSITION_IDS: torch.arange(77, dtype=torch.int64)[None],
        VAE_CONV: rand(3, 8, 3, 3),
        VAE_BIAS: rand(3),
        EMA: torch.tensor(0.9999 + seed * 1e-5),
        SCHEDULE: torch.rand(10, generator=generator),
    }


def _save(
    folder: Path, name: str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    path = folder / f"{name}.safetensors"
    save_file(state, str(path), metadata=metadata)
    return path


MERGED = (CONV_IN, OUT_BIAS, ATTN, TEXT, VAE_CONV, VAE_BIAS)
KEPT = (POSITION_IDS, EMA, SCHEDULE)


def test_weighted_sum_is_one_minus_alpha_a_plus_alpha_b_tensor_for_tensor(tmp_path: Path) -> None:
    a, b = _state(1), _state(2)
    plan = plan_merge(
        _save(tmp_path, "a", a), _save(tmp_path, "b", b), method="weighted_sum", precision="fp32"
    )
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.3)
    out = load_file(str(tmp_path / "out.safetensors"))
    assert list(out) == list(load_file(str(tmp_path / "a.safetensors")))
    for key in MERGED:
        assert out[key].dtype == torch.float32
        assert torch.equal(out[key], (1 - 0.3) * a[key] + 0.3 * b[key]), key
        assert not torch.equal(out[key], a[key])
    for key in KEPT:  # integer tensors, EMA and keys without "model" are A's
        assert torch.equal(out[key], a[key]), key


def test_add_difference_is_a_plus_alpha_b_minus_c(tmp_path: Path) -> None:
    a, b, c = _state(1), _state(2), _state(3)
    del c[TEXT]  # a key C lacks adds nothing (B − C counts as 0 there, as in A1111)
    plan = plan_merge(
        _save(tmp_path, "a", a), _save(tmp_path, "b", b), _save(tmp_path, "c", c), method="add_difference",
        precision="fp32",
    )  # fmt: skip
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.7)
    out = load_file(str(tmp_path / "out.safetensors"))
    for key in MERGED:
        expected = a[key] if key == TEXT else a[key] + 0.7 * (b[key] - c[key])
        assert torch.equal(out[key], expected), key
    for key in KEPT:
        assert torch.equal(out[key], a[key]), key


def test_alpha_zero_reproduces_a_bit_for_bit(tmp_path: Path) -> None:
    a = _save(tmp_path, "a", _state(1))
    plan = plan_merge(a, _save(tmp_path, "b", _state(2)), method="weighted_sum", precision="fp32")
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.0)
    original, out = load_file(str(a)), load_file(str(tmp_path / "out.safetensors"))
    assert all(torch.equal(out[key], original[key]) for key in original)


def test_fp16_output_and_no_interpolation_changes_only_the_precision(tmp_path: Path) -> None:
    a = _state(1)
    plan = plan_merge(_save(tmp_path, "a", a), method="no_interpolation", precision="fp16")
    assert plan.merged_keys == 0
    write_merge(plan, tmp_path / "half.safetensors", alpha=0.5)
    out = load_file(str(tmp_path / "half.safetensors"))
    for key, tensor in a.items():
        if tensor.is_floating_point():
            assert out[key].dtype == torch.float16
            assert torch.equal(out[key], tensor.half()), key
        else:
            assert out[key].dtype == tensor.dtype and torch.equal(out[key], tensor)


def test_fp16_inputs_are_merged_in_fp32_and_rounded_once(tmp_path: Path) -> None:
    a, b = _state(1, dtype=torch.float16), _state(2, dtype=torch.float16)
    plan = plan_merge(_save(tmp_path, "a", a), _save(tmp_path, "b", b), precision="fp16")
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.25)
    out = load_file(str(tmp_path / "out.safetensors"))
    expected = ((1 - 0.25) * a[ATTN].float() + 0.25 * b[ATTN].float()).half()
    assert torch.equal(out[ATTN], expected)


def test_inpainting_primary_merges_the_first_four_input_channels(tmp_path: Path) -> None:
    a, b = _state(1, channels=9), _state(2)
    plan = plan_merge(_save(tmp_path, "a", a), _save(tmp_path, "b", b), precision="fp32")
    assert plan.is_inpainting and not plan.is_instruct_pix2pix
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.5)
    out = load_file(str(tmp_path / "out.safetensors"))[CONV_IN]
    assert out.shape == (8, 9, 3, 3)
    assert torch.equal(out[:, :4], 0.5 * a[CONV_IN][:, :4] + 0.5 * b[CONV_IN])
    assert torch.equal(out[:, 4:], a[CONV_IN][:, 4:])
    with pytest.raises(MergeError, match="primary model \\(A\\) must be the inpainting"):
        plan_merge(tmp_path / "b.safetensors", tmp_path / "a.safetensors")


def test_keys_only_in_a_are_kept_and_keys_only_in_b_dropped(tmp_path: Path) -> None:
    a, b = _state(1), _state(2)
    b["model.diffusion_model.extra.weight"] = torch.ones(3)
    del b[TEXT]
    plan = plan_merge(_save(tmp_path, "a", a), _save(tmp_path, "b", b), precision="fp32")
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.5)
    out = load_file(str(tmp_path / "out.safetensors"))
    assert set(out) == set(a)
    assert torch.equal(out[TEXT], a[TEXT])


def test_different_architectures_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    a, b = _state(1), _state(2)
    b[ATTN] = torch.zeros(32, 16, 1, 1)
    paths = (_save(tmp_path, "a", a), _save(tmp_path, "b", b))
    with pytest.raises(MergeError, match=r"proj_in.weight has shape \[16, 16, 1, 1\].*\[32, 16, 1, 1\]"):
        plan_merge(*paths)
    c = _state(3)
    c[OUT_BIAS] = torch.zeros(5)
    with pytest.raises(MergeError, match="C must be of B's architecture"):
        plan_merge(
            paths[0], _save(tmp_path, "b2", _state(2)), _save(tmp_path, "c", c), method="add_difference"
        )
    names = ["a.safetensors", "b.safetensors", "b2.safetensors", "c.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_methods_need_their_models_and_only_safetensors_are_read(tmp_path: Path) -> None:
    a = _save(tmp_path, "a", _state(1))
    with pytest.raises(MergeError, match="secondary model"):
        plan_merge(a, method="weighted_sum")
    with pytest.raises(MergeError, match="tertiary model"):
        plan_merge(a, a, method="add_difference")
    pickle = tmp_path / "old.ckpt"
    torch.save(_state(2), pickle)
    with pytest.raises(MergeError, match=r"old\.ckpt: the merger reads single \.safetensors files only"):
        plan_merge(a, pickle)


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    a, b = _save(tmp_path, "a", _state(1)), _save(tmp_path, "b", _state(2))
    before = a.read_bytes()
    with pytest.raises(MergeNameTakenError, match=r"a\.safetensors already exists"):
        write_merge(plan_merge(a, b), a, alpha=0.5)
    assert a.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_a_stopped_merge_leaves_no_file(tmp_path: Path) -> None:
    plan = plan_merge(_save(tmp_path, "a", _state(1)), _save(tmp_path, "b", _state(2)))
    calls: list[float] = []

    def stop(_text: str, fraction: float) -> None:
        calls.append(fraction)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_merge(plan, tmp_path / "out.safetensors", alpha=0.5, progress=stop)
    assert calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_output_is_a_valid_safetensors_file_with_metadata_and_its_hash(tmp_path: Path) -> None:
    plan = plan_merge(_save(tmp_path, "a", _state(1)), _save(tmp_path, "b", _state(2)), precision="fp16")
    seen: list[float] = []
    output = write_merge(
        plan, tmp_path / "out.safetensors", alpha=0.5, metadata={"format": "pt", "note": "é, {json}"},
        progress=lambda _text, fraction: seen.append(fraction),
    )  # fmt: skip
    data = output.path.read_bytes()
    assert output.sha256 == hashlib.sha256(data).hexdigest()
    assert output.size == len(data)
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0  # the data starts 8-byte aligned, as safetensors writes it
    assert json.loads(data[8 : 8 + length])["__metadata__"] == {"format": "pt", "note": "é, {json}"}
    with safe_open(str(output.path), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "é, {json}"}
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert oct(output.path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    assert build_header(plan, {}) != build_header(plan, {"format": "pt"})


@pytest.mark.parametrize("prefixed", [False, True])
def test_a_vae_is_baked_in_over_the_merge(tmp_path: Path, prefixed: bool) -> None:
    a, b = _state(1), _state(2)
    prefix = "first_stage_model." if prefixed else ""
    vae = {
        f"{prefix}decoder.conv_out.weight": torch.full((3, 8, 3, 3), 0.5, dtype=torch.float16),
        f"{prefix}decoder.conv_out.bias": torch.full((3,), -1.0),
        "model_ema.decay": torch.tensor(1.0),
    }
    vae_path = _save(tmp_path, "vae", vae)
    plan = plan_merge(_save(tmp_path, "a", a), _save(tmp_path, "b", b), vae=vae_path, precision="fp32")
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.5)
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out[VAE_CONV], torch.full((3, 8, 3, 3), 0.5))
    assert torch.equal(out[VAE_BIAS], torch.full((3,), -1.0))
    assert torch.equal(out[EMA], a[EMA])  # the VAE's EMA counter is not a checkpoint weight
    assert torch.equal(out[ATTN], 0.5 * a[ATTN] + 0.5 * b[ATTN])


def test_a_vae_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    a = _save(tmp_path, "a", _state(1))
    wrong = _save(tmp_path, "wrong", {"decoder.conv_out.weight": torch.zeros(3, 16, 3, 3)})
    with pytest.raises(MergeError, match="The VAE does not fit"):
        plan_merge(a, method="no_interpolation", vae=wrong)
    diffusers = _save(tmp_path, "diffusers-vae", {"decoder.conv_norm_out.weight": torch.zeros(3)})
    with pytest.raises(MergeError, match="no weights that fit"):
        plan_merge(a, method="no_interpolation", vae=diffusers)


def test_a_vae_from_a_torch_pickle_is_baked_in(tmp_path: Path) -> None:
    a = _state(1)
    vae = {"decoder.conv_out.weight": torch.ones(3, 8, 3, 3), "decoder.conv_out.bias": torch.ones(3)}
    torch.save({"state_dict": vae, "global_step": 5}, tmp_path / "vae.pt")
    plan = plan_merge(
        _save(tmp_path, "a", a), method="no_interpolation", vae=tmp_path / "vae.pt", precision="fp16"
    )
    write_merge(plan, tmp_path / "out.safetensors", alpha=0.3)
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out[VAE_CONV], torch.ones(3, 8, 3, 3, dtype=torch.float16))
    assert torch.equal(out[ATTN], a[ATTN].half())
