"""CUDA-only checks: fp16 loading, attention selection, offload modes. Skipped without a CUDA device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _record(path: Path):
    from webui.registry.scanner import scan_checkpoints

    return next(r for r in scan_checkpoints(path.parent) if r.name == path.name)


def _job(sampler: str = "Euler", *, prompt: str = "x", steps: int = 2, seed: int = 1, **extra: Any) -> Any:
    """A 64×64 job of ``steps`` steps, CFG 7, one image."""
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.generate import DiffusionJob

    spec, schedule = resolve_sampler(sampler)
    return DiffusionJob(
        prompt=prompt, negative_prompt="", steps=steps, cfg_scale=7.0, width=64, height=64, seeds=[seed],
        subseeds=[seed], subseed_strength=0.0, sampler=spec, schedule=schedule, extra=extra,
    )  # fmt: skip


def test_fp16_load_and_generate_on_cuda(tiny_model_files: dict[str, Path], tmp_path: Path) -> None:
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.generate import generate_batch

    choice = choose_device("cuda", "half", "sdpa", "normal")
    assert choice.dtype == torch.float16
    cache = ModelCache(choice, capacity=1, tokenizer_cache=tmp_path / "tok")
    model = cache.get(_record(tiny_model_files["sd15_single"]))
    assert next(model.unet.parameters()).dtype == torch.float16
    assert next(model.unet.parameters()).device.type == "cuda"
    job = _job("Euler a", prompt="a red circle", steps=4)
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
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.generate import generate_batch

    cache = ModelCache(
        choose_device("cuda", "half", "sdpa", mode), capacity=1, tokenizer_cache=tmp_path / "t"
    )
    model = cache.get(_record(tiny_model_files["sd15_single"]))
    job = _job()
    images, _ = generate_batch(model, job)
    assert images


@pytest.mark.parametrize("low_vram", [False, True])
def test_controlnet_unit_on_cuda_fp16(
    low_vram: bool, tiny_model_files: dict[str, Path], controlnet_files: dict[str, Path], tmp_path: Path
) -> None:
    """A ControlNet unit in fp16 on CUDA changes the image like on the CPU; with Low VRAM the ControlNet is
    on the GPU only during the pass."""
    from PIL import Image, ImageDraw

    from webui.registry.controlnet import scan_controlnets
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput
    from webui.runtime.controlnet.models import ControlNetCache
    from webui.runtime.generate import generate_batch

    cache = ModelCache(
        choose_device("cuda", "half", "sdpa", "normal"), capacity=1, tokenizer_cache=tmp_path / "t"
    )
    model = cache.get(_record(tiny_model_files["sd15_single"]))
    record = next(
        r
        for r in scan_controlnets(controlnet_files["ldm"].parent)
        if r.name.endswith("sd15_edges.safetensors")
    )
    control = ControlNetCache().get(record, torch.float16, "cpu" if low_vram else "cuda")
    edges = Image.new("RGB", (64, 64))
    ImageDraw.Draw(edges).rectangle((16, 16, 48, 48), outline=(255, 255, 255), width=3)

    def run(units: list[ControlUnitInput]) -> Any:
        job = _job(steps=3, **({"control": ControlPlan(units)} if units else {}))
        images, _ = generate_batch(model, job)
        return images[0]

    plain = run([])
    controlled = run([ControlUnitInput(control=control, image=edges)])
    assert plain.tobytes() != controlled.tobytes()
    assert run([ControlUnitInput(control=control, image=edges, weight=0.0)]).tobytes() == plain.tobytes()
    expected = "cpu" if low_vram else "cuda"
    assert next(control.model.parameters()).device.type == expected


MEMORY_STEPS = [("normal", "medvram"), ("medvram", "lowvram")]


def test_out_of_memory_step_down_keeps_generating(tiny_model_files: dict[str, Path], tmp_path: Path) -> None:
    """Engine.lower_memory_mode on a real GPU: normal → medvram → lowvram, each still generating; each step
    releases what is kept on the GPU between jobs (cached ControlNets, the IP-Adapter image encoder)."""
    from webui.runtime.engine import Engine
    from webui.runtime.generate import generate_batch

    engine = Engine(
        device="cuda", precision="half", attention="sdpa", memory_mode="normal", models_in_ram=1,
        tokenizer_cache=tmp_path / "t",
    )  # fmt: skip
    model = engine.cache.get(_record(tiny_model_files["sd15_single"]))
    job = _job()
    released: list[int] = []
    engine.add_releasable(lambda: 1, lambda: released.append(1))
    for expected in (("normal", "medvram"), ("medvram", "lowvram"), None):
        assert engine.lower_memory_mode() == expected
        assert len(released) == (2 if expected is None else 1 + MEMORY_STEPS.index(expected))
        images, _ = generate_batch(model, job)
        assert images


def test_the_automatic_mode_places_each_job_where_it_fits(
    tiny_model_files: dict[str, Path], tmp_path: Path
) -> None:
    """--memory-mode auto on a real GPU: too little free memory for the whole model gives medvram hooks,
    enough gives the whole model back on the GPU, and each generates the same image within fp16's noise."""
    import numpy as np

    from webui.domain.memory_plan import GIB, JobShape
    from webui.runtime.engine import Engine
    from webui.runtime.generate import generate_batch

    engine = Engine(
        device="cuda", precision="half", attention="sdpa", memory_mode="auto", models_in_ram=1,
        tokenizer_cache=tmp_path / "t",
    )  # fmt: skip
    assert engine.auto
    record = _record(tiny_model_files["sd15_single"])
    shape = JobShape("", 64, 64)
    job = _job()
    pictures = []
    for free, mode in ((64 * GIB, "normal"), (None, "medvram"), (64 * GIB, "normal")):
        if free is None:
            free = engine.plan_memory(engine.cache.active, shape, 0).need.medvram
        engine.free_memory = lambda free=free: free  # type: ignore[method-assign]
        model = engine.activate(record, shape=shape)
        assert engine.choice.memory_mode == mode
        assert (getattr(model, "_offload_mode", None) or "normal") == mode
        images, _ = generate_batch(model, job)
        pictures.append(np.asarray(images[0], dtype=np.int16))
    assert np.abs(pictures[1] - pictures[0]).max() <= 2 and np.array_equal(pictures[2], pictures[0])


def test_a_model_waiting_in_ram_is_page_locked_and_comes_back_unchanged(
    tiny_model_files: dict[str, Path], tmp_path: Path
) -> None:
    """Switching away moves a model into page-locked RAM (reused on the next switch); switching back gives
    the same image as before."""
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.generate import generate_batch

    cache = ModelCache(choose_device("cuda", "half", "sdpa", "normal"), capacity=2, tokenizer_cache=tmp_path)
    first_record, second_record = (_record(tiny_model_files[k]) for k in ("sd15_single", "sdxl_single"))
    job = _job(steps=3, seed=5)
    first = cache.get(first_record)
    assert first.pinned is None  # never switched away from: never pinned
    before = generate_batch(first, job)[0][0].tobytes()
    cache.get(second_record)
    weights = [t for module in first.modules() for t in (*module.parameters(), *module.buffers())]
    assert all(t.device.type == "cpu" and t.is_pinned() for t in weights)
    chunks = [chunk.data_ptr() for chunk in first.pinned.chunks]
    assert cache.get(first_record) is first and cache.loads == 2
    assert all(t.is_cuda for t in first.unet.parameters())
    assert generate_batch(first, job)[0][0].tobytes() == before
    cache.get(second_record)
    assert [chunk.data_ptr() for chunk in first.pinned.chunks] == chunks  # the same chunks, reused
    choice = choose_device("cuda", "half", "sdpa", "normal")
    cache_off = ModelCache(choice, capacity=2, tokenizer_cache=tmp_path, pinned_ram=False)
    plain = cache_off.get(first_record)
    cache_off.get(second_record)
    assert plain.pinned is None and not next(plain.unet.parameters()).is_pinned()


def test_compiled_unet_with_cuda_graphs_follows_lora_switches_and_channels_last(
    data_dir: Path, tiny_model_files: dict[str, Path]
) -> None:
    """On a CUDA card the compiled UNet replays CUDA graphs; a LoRA merged in place reaches the captured
    graphs (their weights are static inputs) and compiles nothing again; channels-last weights (Automatic on
    CUDA) give the NCHW image within fp16's noise."""
    import base64
    import io

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image
    from torch._dynamo.utils import counters

    from tests.fixtures.lora_files import kohya_lora, tiny_sd15_modules, write_lora
    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    unet, te = tiny_sd15_modules(tiny_model_files["sd15_folder"])
    write_lora(data_dir / "models" / "Lora" / "ink.safetensors", kohya_lora(unet, [te]))
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True, device="cuda"))
    small = {
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 5,
        "sampler_name": "Euler",
        "prompt": "a red ball",
    }

    def run(client: TestClient, prompt: str = "a red ball", **settings: object) -> np.ndarray:
        response = client.post(
            "/sdapi/v1/txt2img", json={**small, "prompt": prompt, "override_settings": settings}
        )
        assert response.status_code == 200, response.text
        with Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))) as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)

    def near(a: np.ndarray, b: np.ndarray) -> bool:  # other fp16 kernels: the same image within noise
        return bool(np.abs(a - b).mean() < 1.5)

    try:
        with TestClient(build_app(services)) as client:
            nchw = run(client, easel_channels_last="Off")
            eager = run(client)  # Automatic: channels-last on CUDA
            model = services.generation.engine().cache.active
            conv = model.unet.conv_in.weight
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
            assert near(eager, nchw)
            eager_lora = run(client, "a red ball <lora:ink:1>")
            assert np.abs(eager_lora - eager).mean() > 4  # the LoRA changes the image (about 10 here)
            compiled = run(client, easel_compile_unet=True)
            assert model.unet._easel_compiled.mode == "reduce-overhead"
            assert near(compiled, eager)
            graphs = counters["stats"]["unique_graphs"]
            with_lora = run(client, "a red ball <lora:ink:1>", easel_compile_unet=True)
            assert near(with_lora, eager_lora)  # the merge reached the captured graphs
            assert near(run(client, easel_compile_unet=True), compiled)  # and left them
            assert counters["stats"]["unique_graphs"] == graphs
            no_graphs = run(client, easel_compile_unet=True, easel_cuda_graphs=False)
            assert model.unet._easel_compiled.mode == "default"
            assert near(no_graphs, compiled)
    finally:
        services.generation.shutdown()


def test_medvram_leaves_one_part_on_the_card(tiny_model_files: dict[str, Path], tmp_path: Path) -> None:
    """--medvram on SDXL: while the UNet runs, neither text encoder is on the card; after the job only the
    VAE (the last part to run) is."""
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.generate import generate_batch

    cache = ModelCache(choose_device("cuda", "half", "sdpa", "medvram"), capacity=1, tokenizer_cache=tmp_path)
    model = cache.get(_record(tiny_model_files["sdxl_single"]))
    parts = {"te": model.text_encoder, "te2": model.text_encoder_2, "unet": model.unet, "vae": model.vae}
    during: list[dict[str, str]] = []

    def places() -> dict[str, str]:
        return {name: next(module.parameters()).device.type for name, module in parts.items()}

    handle = model.unet.conv_in.register_forward_pre_hook(lambda *_: during.append(places()))  # its hook ran
    job = _job()
    generate_batch(model, job)
    handle.remove()
    assert during and all(
        seen == {"te": "cpu", "te2": "cpu", "unet": "cuda", "vae": "cpu"} for seen in during
    )
    assert places() == {"te": "cpu", "te2": "cpu", "unet": "cpu", "vae": "cuda"}


@pytest.mark.parametrize("sampler_name", ["DPM++ 2M Karras", "Euler a"])
def test_the_steps_never_wait_for_the_card_in_easels_code(
    sampler_name: str, tiny_model_files: dict[str, Path], tmp_path: Path
) -> None:
    """After the first step, nothing Easel runs per step (the step callback, its progress, the scheduled
    prompts) makes the CPU wait for the card: torch's sync debug mode names no place in ``webui/``.

    ``tests/integration/test_step_syncs.py`` finds per-step reads of tensor values on the CPU; this sees
    what only a card shows besides them: blocking copies to the card and any other synchronising call."""
    from webui.runtime.cache import ModelCache, choose_device
    from webui.runtime.devices import host_syncs
    from webui.runtime.generate import generate_batch

    with host_syncs() as syncs:  # the counter itself counts: one .item() is one place, here
        torch.ones(1, device="cuda").item()
        assert len(syncs) == 1 and syncs.places()[0].startswith(__file__)
    cache = ModelCache(choose_device("cuda", "half", "sdpa", "normal"), capacity=1, tokenizer_cache=tmp_path)
    model = cache.get(_record(tiny_model_files["sd15_single"]))
    job = _job(sampler_name, prompt="a [red:blue:3] circle", steps=6, seed=3)
    generate_batch(model, job)
    marks: list[int] = []
    with host_syncs() as syncs:
        generate_batch(model, job, on_step=lambda *_: marks.append(len(syncs)) or True)
        places = syncs.places()
    assert len(marks) == 6
    easels = [place for place in places[marks[0] : marks[-1]] if "/webui/" in place]
    assert easels == []
