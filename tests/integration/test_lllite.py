"""ControlNet-LLLite units: kohya-ss's published file layout (random weights, sized for the tiny SDXL), the
modules' arithmetic checked against the format written out by hand, the unit's schedule, and errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.lllite_files import lllite_state, write_lllite
from tests.fixtures.tiny_models import tiny_sdxl_components
from tests.integration.test_controlnet_service import _pixels, _title, edge_map, enabled_unit
from tests.integration.test_img2img_service import b64
from webui.domain.controlnet import ControlNetUnit
from webui.domain.controlnet_models import ControlNetKind
from webui.domain.generation import Txt2ImgRequest
from webui.runtime.controlnet.apply import ControlUnitInput
from webui.runtime.controlnet.lllite import LLLiteError, build_lllite, lllite_hooks
from webui.services.controlnet import ControlNetInputError

JOB = {"width": 64, "height": 64, "steps": 3, "seed": 7, "sampler_name": "Euler", "prompt": "a box"}
BASE = "tiny-sdxl"


@pytest.fixture(scope="module")
def sdxl_unet() -> Any:
    return tiny_sdxl_components()["unet"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_model_files: dict[str, Path], sdxl_unet: Any) -> Path:
    root = tmp_path_factory.mktemp("lllite")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    for key, name in (("sdxl_single", BASE), ("sd15_single", "tiny-sd15")):
        os.link(tiny_model_files[key], checkpoints / f"{name}.safetensors")
    folder = root / "models" / "ControlNet"
    write_lllite(folder / "controllllite_tiny_sdxl_canny.safetensors", sdxl_unet)
    write_lllite(folder / "controllllite_tiny_untrained.safetensors", sdxl_unet, zero_up=True)
    return root


@pytest.fixture(scope="module")
def services(root: Path) -> Iterator[Any]:
    from webui.container import build_services
    from webui.settings import Settings

    built = build_services(Settings(data_dir=root, preload_model=False))
    yield built
    built.generation.shutdown()


def _unit(services: Any, **change: Any) -> ControlNetUnit:
    return enabled_unit(services, "controllllite_tiny_sdxl_canny", edge_map(), **change)


def _image(services: Any, *units: ControlNetUnit, **fields: Any) -> np.ndarray:
    request = Txt2ImgRequest(**{**JOB, "checkpoint": BASE, **fields}, controlnet_units=list(units))
    return _pixels(services.generation.txt2img(request))[0]


def test_lllite_files_are_listed_for_sdxl_checkpoints(services: Any) -> None:
    record = next(r for r in services.controlnet.records() if r.model_name == "controllllite_tiny_sdxl_canny")
    assert record.kind is ControlNetKind.LLLITE and record.base == "sdxl" and record.error is None
    assert any(
        t.startswith("controllllite_tiny_sdxl_canny [") for t in services.controlnet.model_list("sdxl")
    )
    assert not any("controllllite" in t for t in services.controlnet.model_list("sd1"))


def test_an_lllite_unit_steers_the_image_and_weight_zero_is_no_unit(services: Any) -> None:
    plain = _image(services)
    controlled = _image(services, _unit(services))
    assert np.abs(controlled.astype(int) - plain).mean() > 1
    assert np.array_equal(_image(services, _unit(services, weight=0.0)), plain)
    # modules whose output layer is zero (how kohya-ss initialises training) add nothing: the image is plain
    untrained = _unit(services, model=_title(services, "controllllite_tiny_untrained"))
    assert np.array_equal(_image(services, untrained), plain)
    late = _image(services, _unit(services, guidance_start=0.5))
    assert len({plain.tobytes(), controlled.tobytes(), late.tobytes()}) == 3
    other = _image(services, _unit(services, image=b64(edge_map(32))))  # another map, another image
    assert not np.array_equal(other, controlled)
    assert np.array_equal(_image(services), plain)  # the hooks are gone after the job


def test_with_the_compiled_unet_option_a_hooked_job_runs_eagerly(services: Any) -> None:
    """A compiled graph would not see the hooks inside the UNet: the job runs as without the option."""
    eager = _image(services, _unit(services))
    request = Txt2ImgRequest(
        **{**JOB, "checkpoint": BASE},
        controlnet_units=[_unit(services)],
        override_settings={"easel_compile_unet": True},
    )
    result = services.generation.txt2img(request)
    assert np.array_equal(_pixels(result)[0], eager)
    assert any("ran without compiling" in warning for warning in result.warnings)


def test_the_hook_adds_the_published_modules_output_to_the_projection_input(sdxl_unet: Any) -> None:
    """Each controlled projection reads ``x + weight * up(relu(mid([cond(image), relu(down(x))])))``, with
    the control image at the latent's pixel size in [-1, 1] (computed here from the raw tensors)."""
    state = lllite_state(sdxl_unet)
    model = build_lllite(state, "controllllite.safetensors")
    name = "lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    target = sdxl_unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q

    class Control:
        record = type("Record", (), {"title": "controllllite"})()

    Control.model = model  # type: ignore[attr-defined]
    image = edge_map(64)
    unit = ControlUnitInput(control=Control(), image=image, weight=0.7)
    session = type("Session", (), {"step": 0, "total": 4})()
    inputs = (torch.randn(2, 4, 8, 8), 500)
    extra = {"encoder_hidden_states": torch.randn(2, 5, 192), "added_cond_kwargs": _added()}
    seen: list[torch.Tensor] = []

    def run() -> None:  # the first controlled projection of the pass: its input is the same either way
        handle = target.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            sdxl_unet(*inputs, **extra)
        finally:
            handle.remove()

    with torch.no_grad():
        run()
        with lllite_hooks(sdxl_unet, [unit], session):
            run()  # registered after the LLLite hook: sees what the projection reads
    x, controlled = seen
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    conv = [state[f"{name}.conditioning1.{i}.{p}"] for i in (0, 2) for p in ("weight", "bias")]
    cond = F.conv2d(F.relu(F.conv2d(pixels, conv[0], conv[1], 4)), conv[2], conv[3], 4)
    tokens = cond.flatten(2).transpose(1, 2).expand(2, -1, -1)
    down = F.relu(F.linear(x, state[f"{name}.down.0.weight"], state[f"{name}.down.0.bias"]))
    joined = torch.cat([tokens, down], 2)
    mid = F.relu(F.linear(joined, state[f"{name}.mid.0.weight"], state[f"{name}.mid.0.bias"]))
    expected = x + 0.7 * F.linear(mid, state[f"{name}.up.0.weight"], state[f"{name}.up.0.bias"])
    torch.testing.assert_close(controlled, expected, atol=1e-5, rtol=1e-5)


def _added() -> dict[str, torch.Tensor]:
    return {"text_embeds": torch.zeros(2, 128), "time_ids": torch.zeros(2, 6)}


def test_bad_lllite_units_and_files(services: Any, root: Path, sdxl_unet: Any) -> None:
    generation = services.generation
    with pytest.raises(ControlNetInputError, match="ControlNet for SDXL"):
        generation.submit_txt2img(
            Txt2ImgRequest(**{**JOB, "checkpoint": "tiny-sd15"}, controlnet_units=[_unit(services)])
        )
    state = lllite_state(sdxl_unet)
    with pytest.raises(LLLiteError, match="not a ControlNet-LLLite weight"):
        build_lllite({**state, "stray": torch.zeros(1)}, "broken.safetensors")
    first = next(iter(state)).split(".")[0]
    damaged = {k: v for k, v in state.items() if not k.startswith(f"{first}.mid.")}
    with pytest.raises(LLLiteError, match=f"the module {first} does not load"):
        build_lllite(damaged, "damaged.safetensors")
    # a file for another UNet: its module names are not this UNet's projections
    from safetensors.torch import save_file

    foreign = {k.replace("input_blocks_4_1", "input_blocks_7_1"): v.contiguous() for k, v in state.items()}
    save_file(foreign, str(root / "models" / "ControlNet" / "controllllite_foreign.safetensors"))
    services.controlnet.refresh()
    with pytest.raises(Exception, match="controls layers this checkpoint's UNet does not have"):
        _image(services, _unit(services, model=_title(services, "controllllite_foreign")))
    assert _image(services).shape == (64, 64, 3)  # and the app keeps working


def test_an_lllite_unit_over_the_api(root: Path) -> None:
    from tests.api.test_api_core import _client

    for client in _client(root):
        model = next(n for n in client.get("/controlnet/model_list").json()["model_list"] if "canny" in n)
        unit = {"enabled": True, "module": "canny", "model": model, "image": b64(edge_map())}
        body = {**JOB, "override_settings": {"sd_model_checkpoint": BASE}}
        response = client.post(
            "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        )
        assert response.status_code == 200, response.text
        infotext = json.loads(response.json()["info"])["infotexts"][0]
        assert "Module: canny, Model: controllllite_tiny_sdxl_canny [" in infotext
