"""Loading ControlNets in every layout offline, on the CPU, and caching them.

One tiny seeded ControlNet is written as a diffusers folder, an original ``control_model.*`` file (also
with bare keys), a diffusers-key file and a ``.pth``: all must load and compute bitwise the same thing as
the in-memory model they were written from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests.fixtures.controlnet_files import (  # noqa: E402
    TINY_DOWNSCALE,
    controlnet_inputs,
    tiny_sd15_controlnet,
    tiny_sdxl_controlnet,
    tiny_t2i_adapter,
    write_controlnet_layouts,
    write_diffusers_file,
    write_folder,
    write_ldm_file,
)
from webui.domain.controlnet_models import (  # noqa: E402
    ControlNetKind,
    ControlNetLayout,
    ControlNetRecord,
    fits,
)
from webui.registry.controlnet import scan_controlnets  # noqa: E402
from webui.registry.hashes import legacy_hash  # noqa: E402
from webui.runtime.controlnet.models import (  # noqa: E402
    ControlNetCache,
    ControlNetLoadError,
    LoadedControlNet,
    load_controlnet,
)
from webui.runtime.ldm_layout import convert_controlnet, save_single_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "models" / "ControlNet"

LAYOUTS = ("diffusers", "ldm", "bare", "diffusers_file", "pth")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ControlNet")
    sd15, sdxl = tiny_sd15_controlnet(), tiny_sdxl_controlnet()
    files: dict[str, dict[str, Path]] = {}
    for key, model, folder in (("sd15", sd15, root), ("sdxl", sdxl, root / "xl")):
        files[key] = write_controlnet_layouts(model, folder, f"tiny-{key}")
        files[key]["bare"] = write_ldm_file(model, folder / f"tiny-{key}-bare.safetensors", prefix="")
    write_folder(tiny_t2i_adapter(), root / "tiny-adapter")
    records = {record.path: record for record in scan_controlnets(root)}
    return {"root": root, "models": {"sd15": sd15, "sdxl": sdxl}, "files": files, "records": records}


def _record(built: dict[str, Any], key: str, layout: str) -> ControlNetRecord:
    record: ControlNetRecord = built["records"][str(built["files"][key][layout])]
    return record


def _run(model: Any, inputs: dict[str, Any]) -> list[Any]:
    with torch.no_grad():
        down, mid = model(**inputs, return_dict=False)
    return [*down, mid]


@pytest.mark.parametrize("key", ["sd15", "sdxl"])
def test_every_layout_computes_bitwise_the_same(built: dict[str, Any], key: str) -> None:
    reference = built["models"][key]
    inputs = controlnet_inputs(reference)
    expected = _run(reference, inputs)
    assert any(t.abs().sum() > 0 for t in expected)  # random zero convolutions: a real comparison
    for layout in LAYOUTS:
        record = _record(built, key, layout)
        loaded = load_controlnet(record, torch.float32)
        assert loaded.kind is ControlNetKind.CONTROLNET
        assert loaded.downscale == TINY_DOWNSCALE
        assert loaded.is_sdxl is (key == "sdxl")
        assert loaded.context_dim == (192 if key == "sdxl" else 64)
        assert loaded.base == ("sdxl" if key == "sdxl" else None)
        assert loaded.model.training is False
        assert not any(p.requires_grad for p in loaded.model.parameters())
        outputs = _run(loaded.model, inputs)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected, strict=True):
            assert torch.equal(got, want), f"{key} {layout} differs"


def test_scan_records_match_the_files(built: dict[str, Any]) -> None:
    expected = {
        "diffusers": ControlNetLayout.DIFFUSERS,
        "ldm": ControlNetLayout.LDM,
        "bare": ControlNetLayout.LDM,
        "diffusers_file": ControlNetLayout.DIFFUSERS_FILE,
        "pth": ControlNetLayout.LDM,
    }
    for layout, wanted in expected.items():
        record = _record(built, "sdxl", layout)
        assert record.layout is wanted and record.error is None
    assert _record(built, "sdxl", "ldm").title.startswith("xl/tiny-sdxl [")


def test_dtype_is_honoured(built: dict[str, Any], tmp_path: Path) -> None:
    record = _record(built, "sd15", "ldm")
    half = load_controlnet(record, torch.float16)
    assert half.dtype == torch.float16
    assert {p.dtype for p in half.model.parameters()} == {torch.float16}
    folder = load_controlnet(_record(built, "sd15", "diffusers"), torch.bfloat16)
    assert {p.dtype for p in folder.model.parameters()} == {torch.bfloat16}
    # A half-precision file loads in float32 too, and computes what its half weights compute.
    model = built["models"]["sd15"]
    path = write_ldm_file(model, tmp_path / "fp16.safetensors", dtype=torch.float16)
    (stored,) = scan_controlnets(tmp_path)
    widened = load_controlnet(stored, torch.float32)
    assert {p.dtype for p in widened.model.parameters()} == {torch.float32}
    inputs = controlnet_inputs(model)
    reference = _run(model, inputs)
    for got, want in zip(_run(widened.model, inputs), reference, strict=True):
        assert torch.allclose(got, want, atol=5e-2, rtol=5e-2)
    assert path.stat().st_size < _record(built, "sd15", "ldm").size


def test_attention_uses_torch_sdpa(built: dict[str, Any]) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    loaded = load_controlnet(_record(built, "sd15", "ldm"), torch.float32)
    processors = loaded.model.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def test_t2i_adapter_folder_loads(built: dict[str, Any]) -> None:
    (record,) = [r for r in built["records"].values() if r.name == "tiny-adapter"]
    assert record.kind is ControlNetKind.T2I_ADAPTER and record.layout is ControlNetLayout.T2I_ADAPTER
    loaded = load_controlnet(record, torch.float32)
    assert loaded.kind is ControlNetKind.T2I_ADAPTER and loaded.downscale == TINY_DOWNSCALE
    assert (loaded.is_sdxl, loaded.context_dim) == (False, None)
    with torch.no_grad():
        features = loaded.model(torch.rand(1, 3, 16, 16))
    assert [tuple(f.shape) for f in features] == [(1, 32, 8, 8), (1, 64, 4, 4)]  # the tiny UNet's levels


def test_sdxl_t2i_adapter_takes_the_full_size_image(tmp_path: Path) -> None:
    from diffusers import T2IAdapter

    torch.manual_seed(0)
    adapter = T2IAdapter(
        in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=1, downscale_factor=16,
        adapter_type="full_adapter_xl",
    )  # fmt: skip
    write_folder(adapter, tmp_path / "xl-adapter")
    (record,) = scan_controlnets(tmp_path)
    assert (record.kind, record.base) == (ControlNetKind.T2I_ADAPTER, "sdxl")
    loaded = load_controlnet(record, torch.float32)
    assert (loaded.downscale, loaded.is_sdxl, loaded.base) == (8, True, "sdxl")


def test_cache_returns_the_same_object_and_evicts_the_least_recent(built: dict[str, Any]) -> None:
    cache = ControlNetCache(capacity=2)
    a, b, c = (_record(built, "sd15", layout) for layout in ("ldm", "diffusers_file", "diffusers"))
    first = cache.get(a, torch.float32)
    assert cache.get(a, torch.float32) is first
    assert (a, torch.float32) in cache and (a, torch.float16) not in cache
    half = cache.get(a, torch.float16)  # another dtype is another entry
    assert half is not first and half.dtype == torch.float16
    assert len(cache) == 2
    cache.get(a, torch.float32)  # a/fp32 is now the most recent: a/fp16 goes first
    second = cache.get(b, torch.float32)
    assert (a, torch.float16) not in cache and len(cache) == 2
    assert [entry.record.name for entry in cache.loaded()] == [a.name, b.name]
    cache.get(c, torch.float32)
    assert (a, torch.float32) not in cache and cache.get(b, torch.float32) is second
    changed = a.model_copy(update={"mtime": a.mtime + 1})  # the file was replaced: loaded again
    assert cache.get(changed, torch.float32) is not first
    cache.clear()
    assert len(cache) == 0


def test_cache_is_thread_safe(built: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = ControlNetCache(capacity=1)
    record = _record(built, "sd15", "ldm")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _i: cache.get(record, torch.float32), range(4)))
    assert all(result is results[0] for result in results) and len(cache) == 1


def test_truncated_files_give_a_clear_error(built: dict[str, Any], tmp_path: Path) -> None:
    for layout, name in (("ldm", "cut.safetensors"), ("pth", "cut.pth")):
        source = built["files"]["sd15"][layout]
        target = tmp_path / name
        shutil.copy(source, target)
        record = next(r for r in scan_controlnets(tmp_path) if r.name == name)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])  # truncated after the scan
        with pytest.raises(ControlNetLoadError) as info:
            load_controlnet(record, torch.float32)
        message = str(info.value)
        assert name in message and ("truncated" in message or "corrupt" in message), message
        target.unlink()


def test_missing_and_unexpected_weights_are_named(built: dict[str, Any], tmp_path: Path) -> None:
    model = built["models"]["sd15"]
    state = convert_controlnet(model)
    state.pop("control_model.zero_convs.3.0.weight")
    save_single_file(tmp_path / "missing.safetensors", state)
    extra = dict(model.state_dict())
    extra["down_blocks.9.resnets.0.conv9.weight"] = torch.zeros(1)
    save_single_file(tmp_path / "extra.safetensors", extra)
    records = {r.name: r for r in scan_controlnets(tmp_path)}
    with pytest.raises(ControlNetLoadError, match=r"missing.safetensors: .*missing 1 weights"):
        load_controlnet(records["missing.safetensors"], torch.float32)
    with pytest.raises(ControlNetLoadError, match=r"down_blocks\.9\.resnets\.0\.conv9\.weight"):
        load_controlnet(records["extra.safetensors"], torch.float32)


def test_unsupported_and_vanished_files(built: dict[str, Any], tmp_path: Path) -> None:
    save_single_file(tmp_path / "control-lora.safetensors", {"lora_controlnet": torch.zeros(1)})
    (record,) = scan_controlnets(tmp_path)
    assert record.error and "Control-LoRA" in record.error
    with pytest.raises(ControlNetLoadError, match="Control-LoRA"):
        load_controlnet(record, torch.float32)
    xs = tmp_path / "xs"
    xs.mkdir()
    (xs / "config.json").write_text('{"_class_name": "ControlNetXSAdapter"}')
    (xs / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    xs_record = next(r for r in scan_controlnets(tmp_path) if r.name == "xs")
    assert xs_record.error and "ControlNetXSAdapter" in xs_record.error
    with pytest.raises(ControlNetLoadError, match="ControlNetXSAdapter is not supported"):
        load_controlnet(xs_record, torch.float32)
    gone = ControlNetRecord(name="gone.safetensors", path=str(tmp_path / "gone.safetensors"), layout="ldm")
    with pytest.raises(ControlNetLoadError, match="no longer exists"):
        load_controlnet(gone, torch.float32)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (empty / "config.json").write_text('{"_class_name": "ControlNetModel"}')
    folder = next(r for r in scan_controlnets(tmp_path) if r.name == "empty-folder")
    assert folder.error and "no weights file" in folder.error
    with pytest.raises(ControlNetLoadError, match="empty-folder"):
        load_controlnet(folder, torch.float32)


def test_diffusers_file_of_sdxl_runs_with_added_conditions(built: dict[str, Any], tmp_path: Path) -> None:
    path = write_diffusers_file(built["models"]["sdxl"], tmp_path / "xl.safetensors", dtype=torch.float16)
    (record,) = scan_controlnets(tmp_path)
    assert Path(record.path) == path and record.base == "sdxl"
    loaded = load_controlnet(record, torch.float32)
    assert loaded.model.config.addition_time_embed_dim == 8
    inputs = controlnet_inputs(loaded.model, batch=1)
    outputs = _run(loaded.model, inputs)
    assert outputs[-1].shape == (1, 64, 4, 4) and torch.isfinite(outputs[-1]).all()
    inputs.pop("added_cond_kwargs")
    with pytest.raises((TypeError, ValueError, KeyError, AttributeError)):
        _run(loaded.model, inputs)  # an SDXL ControlNet needs SDXL's added conditions


def test_reference_controlnet_scans_loads_and_runs() -> None:
    records = {record.name: record for record in scan_controlnets(REFERENCE)}
    record = records["easel-reference-edges"]
    weights = REFERENCE / "easel-reference-edges" / "diffusion_pytorch_model.safetensors"
    assert record.layout is ControlNetLayout.DIFFUSERS and record.kind is ControlNetKind.CONTROLNET
    assert record.error is None and (record.base, record.context_dim) == (None, 64)
    assert record.legacy_hash == legacy_hash(weights)
    assert record.title == f"easel-reference-edges [{record.legacy_hash}]"
    loaded: LoadedControlNet = load_controlnet(record, torch.float32)
    assert loaded.downscale == 4  # trained for the reference model's 4× VAE: 64 px hint → 16 latent
    assert loaded.base is None and fits(record, "sd1") and fits(record, "sdxl")  # shapes checked at run time
    generator = torch.Generator().manual_seed(0)
    hint = torch.zeros(1, 3, 64, 64)
    hint[:, :, 16:48, 16] = 1.0  # a vertical outline
    with torch.no_grad():
        down, mid = loaded.model(
            torch.randn(1, 4, 16, 16, generator=generator),
            torch.tensor(500),
            encoder_hidden_states=torch.randn(1, 77, 64, generator=generator),
            controlnet_cond=hint,
            return_dict=False,
        )
    assert len(down) == 9 and mid.shape == (1, 64, 4, 4)
    assert all(torch.isfinite(t).all() for t in [*down, mid]) and mid.abs().sum() > 0
