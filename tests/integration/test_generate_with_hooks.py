"""generate_batch on real loaded checkpoints with hooks on their modules: --medvram / --lowvram offload
(inputs must be made on the hooks' execution device, not where the offloaded, possibly ``meta``, weights
are; CUDA runs the same in tests/gpu) and ControlNet units, SD 1.5 and SDXL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from webui.domain.samplers import resolve_sampler
from webui.registry.controlnet import scan_controlnets
from webui.registry.scanner import scan_checkpoints
from webui.runtime.cache import DeviceChoice, _enable_offload
from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput
from webui.runtime.controlnet.models import load_controlnet
from webui.runtime.devices import execution_device
from webui.runtime.generate import DiffusionJob, generate_batch
from webui.runtime.loader import load_checkpoint


def _model(tiny_model_files: dict[str, Path], tmp_path: Path, mode: str | None) -> object:
    path = tiny_model_files["sd15_single"]
    record = next(r for r in scan_checkpoints(path.parent) if r.name == path.name)
    model = load_checkpoint(record, dtype=torch.float32, tokenizer_cache=tmp_path / "tok")
    if mode is not None:
        _enable_offload(model, DeviceChoice(torch.device("cpu"), torch.float32, "sdpa", mode))
    return model


def _generate(model: object, units: list[ControlUnitInput]) -> bytes:
    sampler, schedule = resolve_sampler("Euler")
    job = DiffusionJob(
        prompt="a square", negative_prompt="", steps=2, cfg_scale=7.0, width=64, height=64,
        seeds=[3], subseeds=[3], subseed_strength=0.0, sampler=sampler, schedule=schedule,
        extra={"control": ControlPlan(units)} if units else {},
    )  # fmt: skip
    images, _ = generate_batch(model, job)  # type: ignore[arg-type]
    return images[0].tobytes()


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_offloaded_model_generates_the_same_image(
    mode: str, tiny_model_files: dict[str, Path], controlnet_files: dict[str, Path], tmp_path: Path
) -> None:
    edges = Image.new("RGB", (64, 64))
    ImageDraw.Draw(edges).rectangle((16, 16, 48, 48), outline=(255, 255, 255), width=3)
    record = next(
        r
        for r in scan_controlnets(controlnet_files["ldm"].parent)
        if r.name.endswith("sd15_edges.safetensors")
    )
    control = load_controlnet(record, torch.float32)
    plain = _model(tiny_model_files, tmp_path, None)
    offloaded = _model(tiny_model_files, tmp_path, mode)
    if mode == "lowvram":
        assert next(offloaded.text_encoder.parameters()).device.type == "meta"  # type: ignore[attr-defined]
    assert execution_device(offloaded.unet).type == "cpu"  # type: ignore[attr-defined]
    assert _generate(offloaded, []) == _generate(plain, [])
    unit = [ControlUnitInput(control=control, image=edges)]
    assert _generate(offloaded, unit) == _generate(plain, unit)


def test_sdxl_controlnet_unit_through_generate_batch(
    tiny_model_files: dict[str, Path], controlnet_files: dict[str, Path], tmp_path: Path
) -> None:
    """SDXL: the hook hands the UNet's size/crop conditioning to the ControlNet (``added_cond_kwargs``)."""
    path = tiny_model_files["sdxl_single"]
    record = next(r for r in scan_checkpoints(path.parent) if r.name == path.name)
    model = load_checkpoint(record, dtype=torch.float32, tokenizer_cache=tmp_path / "tok")
    control_record = next(
        r
        for r in scan_controlnets(controlnet_files["sdxl"].parent)
        if r.name == controlnet_files["sdxl"].name
    )
    control = load_controlnet(control_record, torch.float32)
    assert control.is_sdxl
    edges = Image.new("RGB", (64, 64))
    ImageDraw.Draw(edges).ellipse((12, 12, 52, 52), outline=(255, 255, 255), width=3)
    plain = _generate(model, [])
    assert _generate(model, [ControlUnitInput(control=control, image=edges)]) != plain
    assert _generate(model, [ControlUnitInput(control=control, image=edges, weight=0.0)]) == plain


def test_a_lower_memory_mode_puts_the_active_model_behind_offload_hooks(
    tiny_model_files: dict[str, Path], tmp_path: Path
) -> None:
    """ModelCache.relocate (an out-of-memory job's step down): the active model leaves normal placement for
    offload hooks at once. The hooks target CUDA but nothing runs here, so no GPU is needed to check them."""
    from webui.runtime.cache import ModelCache

    path = tiny_model_files["sd15_single"]
    record = next(r for r in scan_checkpoints(path.parent) if r.name == path.name)
    cache = ModelCache(
        DeviceChoice(torch.device("cpu"), torch.float32, "sdpa", "normal"),
        capacity=1,
        tokenizer_cache=tmp_path,
    )
    model = cache.get(record)
    assert getattr(model, "_offload_mode", None) is None
    cache.relocate(DeviceChoice(torch.device("cuda"), torch.float32, "sdpa", "medvram"))
    assert cache.device.memory_mode == "medvram"
    assert model._offload_mode == "medvram"  # type: ignore[attr-defined]
    assert model.device == torch.device("cuda")  # where the hooks run it
    assert next(model.unet.parameters()).device.type == "cpu"  # the weights wait in RAM


def test_medvram_then_lowvram_replaces_the_hooks_and_generates_the_same_image(
    tiny_model_files: dict[str, Path], tmp_path: Path
) -> None:
    """The second memory step down (medvram → lowvram) on the CPU, where hooks can run."""
    plain = _generate(_model(tiny_model_files, tmp_path, None), [])
    model = _model(tiny_model_files, tmp_path, "medvram")
    _enable_offload(model, DeviceChoice(torch.device("cpu"), torch.float32, "sdpa", "lowvram"))  # type: ignore[arg-type]
    assert model._offload_mode == "lowvram"  # type: ignore[attr-defined]
    assert type(model.unet._hf_hook).__name__ != "SequentialHook"  # type: ignore[attr-defined]
    assert next(model.unet.parameters()).device.type == "meta"  # type: ignore[attr-defined]
    assert _generate(model, []) == plain


def test_back_to_normal_mode_takes_the_hooks_off_and_puts_the_weights_back(
    tiny_model_files: dict[str, Path], tmp_path: Path
) -> None:
    """The automatic mode moves back up when a later job fits whole: lowvram's hooks (weights on ``meta``,
    kept in RAM by the hooks) come off and the model generates as if they had never been there."""
    from webui.runtime.cache import ModelCache

    plain = _generate(_model(tiny_model_files, tmp_path, None), [])
    path = tiny_model_files["sd15_single"]
    record = next(r for r in scan_checkpoints(path.parent) if r.name == path.name)
    normal = DeviceChoice(torch.device("cpu"), torch.float32, "sdpa", "normal")
    cache = ModelCache(normal, capacity=1, tokenizer_cache=tmp_path / "tok")
    model = cache.get(record)
    _enable_offload(model, DeviceChoice(torch.device("cpu"), torch.float32, "sdpa", "lowvram"))  # type: ignore[arg-type]
    assert next(model.unet.parameters()).device.type == "meta"
    cache.relocate(normal)
    assert getattr(model, "_offload_mode", None) is None
    assert not hasattr(model.unet, "_hf_hook")
    assert {p.device.type for m in model.modules() for p in m.parameters()} == {"cpu"}
    assert _generate(model, []) == plain


class Residency:
    """Where medvram's hooks have put each part: on the CPU nothing moves, so the test follows the hooks'
    own moves (a part arrives in its hook's pre-forward, leaves in its offload)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, names: dict[int, str]) -> None:
        from accelerate.hooks import CpuOffload

        from webui.runtime.offload import OnePartOnDevice

        self.names, self.resident, self.seen = names, set[str](), list[tuple[str, frozenset[str]]]()

        def arrive(hook: CpuOffload, module: torch.nn.Module, *args: object, **kwargs: object) -> object:
            self.resident.add(names[id(module)])
            self.seen.append((names[id(module)], frozenset(self.resident)))
            return args, kwargs

        def leave(hook: CpuOffload, module: torch.nn.Module) -> torch.nn.Module:
            self.resident.discard(names.get(id(module), ""))
            return module.to("cpu")

        monkeypatch.setattr(CpuOffload, "pre_forward", arrive)
        monkeypatch.setattr(CpuOffload, "init_hook", leave)
        monkeypatch.setattr(
            OnePartOnDevice, "on_device", staticmethod(lambda m: names[id(m)] in self.resident)
        )


def test_medvram_keeps_one_part_of_the_model_on_the_device(
    tiny_model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--medvram on SDXL: whenever a part runs (either text encoder, the UNet, the VAE), it is the only
    part of the model on the device, also in a second job whose prompt is cached (no encoder runs)."""
    path = tiny_model_files["sdxl_single"]
    record = next(r for r in scan_checkpoints(path.parent) if r.name == path.name)
    model = load_checkpoint(record, dtype=torch.float32, tokenizer_cache=tmp_path / "tok")
    parts = {"unet": model.unet, "vae": model.vae, "te": model.text_encoder, "te2": model.text_encoder_2}
    where = Residency(monkeypatch, {id(module): name for name, module in parts.items()})
    _enable_offload(model, DeviceChoice(torch.device("cpu"), torch.float32, "sdpa", "medvram"))
    _generate(model, [])
    _generate(model, [])  # the same prompt: encoded from the cache, the VAE is still "there" from job one
    # job one: prompt and negative through both encoders, two steps, the decode; job two: no encoders
    assert [part for part, _ in where.seen] == [
        "te",
        "te2",
        "te",
        "te2",
        "unet",
        "unet",
        "vae",
        "unet",
        "unet",
        "vae",
    ]
    assert all(present == {part} for part, present in where.seen), where.seen


def test_medvram_parts_of_two_models_share_the_device_and_leave_the_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model cache puts every offloaded model in one group (a refiner and its base model): a part of
    one sends the other's parts back too; a model that leaves the cache leaves the group; ``send_to_ram``
    takes a model off the device when it stops being active."""
    from webui.runtime.offload import leave_group, one_part_at_a_time, send_to_ram

    base, refiner = [torch.nn.Linear(2, 2) for _ in range(2)], [torch.nn.Linear(2, 2) for _ in range(2)]
    names = {
        id(m): f"{side}{i}" for side, ms in (("base", base), ("refiner", refiner)) for i, m in enumerate(ms)
    }
    where = Residency(monkeypatch, names)
    group = one_part_at_a_time(base, torch.device("cpu"))
    assert one_part_at_a_time(refiner, torch.device("cpu"), group) is group and len(group) == 4
    x = torch.ones(1, 2)
    base[1](x)
    refiner[0](x)
    base[0](x)
    assert [present for _, present in where.seen] == [{"base1"}, {"refiner0"}, {"base0"}]
    leave_group(refiner, group)
    assert [names[id(part.model)] for part in group] == ["base0", "base1"]
    moved: list[str] = []
    monkeypatch.setattr(torch.nn.Linear, "to", lambda self, *a, **k: moved.append(names[id(self)]) or self)
    send_to_ram(base)
    assert moved == ["base0"]  # only the part that was on the device
