"""The refiner on the CPU: a tiny SDXL hands its latents to a tiny SDXL refiner part-way through the steps.

The UNets' calls are counted with forward hooks, so each test says which model ran which step. CFG is on
(scale 7): one UNet call per step with the batch doubled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.integration.test_img2img_service import b64
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.domain.samplers import resolve_sampler
from webui.metadata.infotext import parse_infotext, request_fields_from_infotext
from webui.services.models import ModelNotFoundError
from webui.services.refiner import RefinerError

STEPS = 6
JOB = {
    "prompt": "a red circle",
    "width": 64,
    "height": 64,
    "steps": STEPS,
    "seed": 3,
    "sampler_name": "Euler",
}
BASE = "tiny-sdxl"
REFINER = "tiny-sdxl-refiner"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, tiny_model_files: dict[str, Path]) -> Iterator[Any]:
    from webui.container import build_services
    from webui.settings import Settings

    root = tmp_path_factory.mktemp("refiner")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    for key, name in (("sdxl_single", BASE), ("sdxl_refiner", REFINER), ("sd15_single", "tiny-sd15")):
        os.link(tiny_model_files[key], checkpoints / f"{name}.safetensors")
    built = build_services(Settings(data_dir=root, preload_model=False))
    yield built
    built.generation.shutdown()


class UNetCalls:
    """Counts forward calls of the base's and the refiner's UNet (both must be loaded)."""

    def __init__(self, services: Any) -> None:
        models = {model.record.model_name: model for model in services.generation.engine().cache.loaded()}
        self.counts = {BASE: 0, REFINER: 0}
        self.handles = [
            models[name].unet.register_forward_pre_hook(lambda *_, name=name: self._count(name))
            for name in self.counts
        ]

    def _count(self, name: str) -> None:
        self.counts[name] += 1

    def __enter__(self) -> dict[str, int]:
        return self.counts

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _txt2img(services: Any, **fields: Any) -> Any:
    return services.generation.txt2img(Txt2ImgRequest(**{**JOB, "checkpoint": BASE, **fields}))


def _low_noise_steps(services: Any, switch_at: float) -> int:
    """Steps whose timestep is at or past ``switch_at`` of the way from pure noise (A1111's rule), for the
    base model's Euler schedule."""
    from webui.runtime.samplers import build_scheduler

    sampler, schedule = resolve_sampler("Euler", "Automatic")
    config = dict(services.generation.engine().cache.active.scheduler_config)
    scheduler = build_scheduler(sampler, schedule, config, eta=None, noise_seeds=[3])
    scheduler.set_timesteps(STEPS)
    return sum((999 - round(float(t))) / 1000 >= switch_at for t in scheduler.timesteps)


def test_switch_at_one_gives_the_image_without_a_refiner(services: Any) -> None:
    plain = _txt2img(services)
    at_one = _txt2img(services, refiner_checkpoint=REFINER, refiner_switch_at=1.0)
    assert at_one.images[0].png_bytes == plain.images[0].png_bytes
    assert "Refiner" not in at_one.images[0].infotext  # it never took over, so it is not named


def test_switch_at_half_runs_the_refiner_for_the_low_noise_steps(services: Any) -> None:
    plain = _txt2img(services)
    first = _txt2img(services, refiner_checkpoint=REFINER, refiner_switch_at=0.5)
    loads = services.generation.engine().cache.loads
    with UNetCalls(services) as calls:
        again = _txt2img(services, refiner_checkpoint=REFINER, refiner_switch_at=0.5)
    refined = _low_noise_steps(services, 0.5)
    assert 0 < refined < STEPS
    assert calls == {BASE: STEPS - refined, REFINER: refined}
    assert services.generation.engine().cache.loads == loads  # both models stayed warm: no disk read
    assert again.images[0].png_bytes == first.images[0].png_bytes
    assert first.images[0].png_bytes != plain.images[0].png_bytes
    infotext = first.images[0].infotext
    hash10 = services.models.ensure_hash(services.models.find(REFINER))[:10]
    assert f"Refiner: {REFINER} [{hash10}], Refiner switch at: 0.5, Version:" in infotext
    fields = request_fields_from_infotext(parse_infotext(infotext))
    assert fields["refiner_checkpoint"] == f"{REFINER} [{hash10}]" and fields["refiner_switch_at"] == 0.5
    pasted = Txt2ImgRequest(**fields)  # the pasted title names the same checkpoint
    assert services.models.find(pasted.refiner_checkpoint or "").model_name == REFINER


def test_switch_by_sampling_steps(services: Any) -> None:
    by_steps = {"refiner_switch_by_sample_steps": True}
    _txt2img(services, refiner_checkpoint=REFINER)  # loads both
    with UNetCalls(services) as calls:
        result = _txt2img(
            services, refiner_checkpoint=REFINER, refiner_switch_at=0.5, override_settings=by_steps
        )
    assert calls == {BASE: STEPS // 2, REFINER: STEPS // 2}
    assert "Refiner switch by sampling steps: True, Refiner: tiny-sdxl-refiner [" in result.images[0].infotext


def test_img2img_that_starts_past_the_switch_is_all_refiner(services: Any) -> None:
    _txt2img(services, refiner_checkpoint=REFINER)
    request = Img2ImgRequest(
        **{**JOB, "checkpoint": BASE},
        init_images=[b64(Image.new("RGB", (64, 64), (200, 40, 40)))],
        denoising_strength=0.4,  # starts near timestep 400: already past a switch at 0.5
        refiner_checkpoint=REFINER,
        refiner_switch_at=0.5,
    )
    with UNetCalls(services) as calls:
        result = services.generation.submit_img2img(request).result()
    assert calls[BASE] == 0 and calls[REFINER] > 0
    assert "Refiner switch at: 0.5" in result.images[0].infotext


@pytest.mark.parametrize(("option", "written"), [("second pass", None), ("first pass", "first pass")])
def test_hires_passes(services: Any, option: str, written: str | None) -> None:
    hires = {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 4, "denoising_strength": 0.6}
    _txt2img(services, refiner_checkpoint=REFINER)
    with UNetCalls(services) as calls:
        result = _txt2img(
            services,
            **hires,
            refiner_checkpoint=REFINER,
            refiner_switch_at=0.01,  # the refiner takes every step of the passes it acts in
            override_settings={"hires_fix_refiner_pass": option},
        )
    hires_calls = sum(calls.values()) - STEPS
    assert 0 < hires_calls <= 4
    if option == "second pass":  # the first pass is the base's alone, the hires pass the refiner's
        assert calls == {BASE: STEPS, REFINER: hires_calls}
    else:
        assert calls == {BASE: hires_calls, REFINER: STEPS}
    infotext = result.images[0].infotext
    assert ("Hires refiner" in infotext) == (written is not None)  # A1111 writes it off its default only
    assert written is None or f"Hires refiner: {written}, " in infotext


def test_wrong_refiners_are_clear_errors_and_the_service_goes_on(services: Any) -> None:
    with pytest.raises(ModelNotFoundError, match=r"Refiner: Checkpoint 'no-such-model' not found"):
        services.generation.submit_txt2img(Txt2ImgRequest(**JOB, refiner_checkpoint="no-such-model"))
    assert services.generation.pending() == 0  # refused before anything was queued
    with pytest.raises(RefinerError, match=r"latents differ\. Choose a refiner of the same kind"):
        services.generation.submit_txt2img(
            Txt2ImgRequest(**JOB, checkpoint=BASE, refiner_checkpoint="tiny-sd15")
        )
    assert services.generation.pending() == 0
    result = _txt2img(services, refiner_checkpoint="None")  # "None" from the UI's list: no refiner
    assert "Refiner" not in result.images[0].infotext
    same = _txt2img(services, refiner_checkpoint=BASE)
    assert any("the job's own checkpoint" in warning for warning in same.warnings)


def test_the_runtime_refuses_what_cannot_take_over(services: Any) -> None:
    """Families the registry could not tell, and prediction types, are checked once both are loaded."""
    from types import SimpleNamespace

    from webui.domain.models import ModelFamily
    from webui.runtime.generate import GenerationError
    from webui.runtime.refiner import check_refiner

    def model(name: str, family: ModelFamily, channels: int = 4, prediction: str = "epsilon") -> Any:
        unet = SimpleNamespace(config=SimpleNamespace(in_channels=channels))
        return SimpleNamespace(
            record=SimpleNamespace(name=name), family=family, unet=unet,
            scheduler_config={"prediction_type": prediction},
        )  # fmt: skip

    base = model("base", ModelFamily.SD1)
    check_refiner(base, model("other", ModelFamily.SD2))  # SD 1.x and 2.x share the latent space
    with pytest.raises(GenerationError, match="latents differ"):
        check_refiner(base, model("xl", ModelFamily.SDXL_REFINER))
    with pytest.raises(GenerationError, match="inpainting or upscaling checkpoint"):
        check_refiner(base, model("inpaint", ModelFamily.SD1_INPAINT, channels=9))
    with pytest.raises(GenerationError, match="predicts v_prediction and base predicts epsilon"):
        check_refiner(base, model("v", ModelFamily.SD2_V, prediction="v_prediction"))


def test_xyz_plot_over_the_switch_point_equals_single_runs(services: Any) -> None:
    from tests.integration.test_grid_scripts import _run, _xyz_args

    request = Txt2ImgRequest(
        **{**JOB, "checkpoint": BASE, "refiner_checkpoint": REFINER, "save_images": False}
    )
    args = _xyz_args(
        a0="Refiner switch at", a1="0.5, 1", a3="Refiner checkpoint", a4="None, tiny-sdxl-refiner", a10=True
    )
    result = _run(services, "xyz-plot", request, args)
    cells = result.images[1:]
    assert len(cells) == 4
    for index, cell in enumerate(cells):
        switch_at = (0.5, 1.0)[index % 2]
        refiner = (None, REFINER)[index // 2]
        single = services.generation.txt2img(
            request.model_copy(update={"refiner_switch_at": switch_at, "refiner_checkpoint": refiner})
        )
        assert cell.png_bytes == single.images[0].png_bytes, f"cell {index}"
    assert (
        cells[0].png_bytes == cells[1].png_bytes == cells[3].png_bytes
    )  # no refiner, or one never switched to
    assert cells[2].png_bytes != cells[0].png_bytes


def test_tiling_applies_to_the_refiner_while_it_runs(services: Any) -> None:
    _txt2img(services, refiner_checkpoint=REFINER)
    refiner = next(m for m in services.generation.engine().cache.loaded() if m.record.model_name == REFINER)
    seen: list[str] = []
    handle = refiner.unet.conv_in.register_forward_pre_hook(
        lambda module, _: seen.append(module.padding_mode)
    )
    try:
        _txt2img(services, refiner_checkpoint=REFINER, refiner_switch_at=0.5, tiling=True)
    finally:
        handle.remove()
    assert seen and set(seen) == {"circular"}  # seamless in the refiner's steps too
    assert refiner.unet.conv_in.padding_mode == "zeros"  # and back to normal after the job
