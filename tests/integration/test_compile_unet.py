"""Option ``easel_compile_unet``: the UNet compiled with torch.compile (inductor, gcc on the CPU) over the
API with the tiny SD 1.5. Compiled kernels differ from eager ones, so images compare within a tolerance;
a LoRA switch compiles nothing again, and a failed compile falls back to the same bytes as eager."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fixtures.lora_files import kohya_lora, tiny_sd15_modules, write_lora
from webui.container import build_services
from webui.settings import Settings

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 5, "sampler_name": "Euler", "prompt": "a red ball"}
COMPILED = {"override_settings": {"easel_compile_unet": True}}


@pytest.fixture
def client(data_dir: Path, tiny_model_files: dict[str, Path]) -> Iterator[TestClient]:
    from webui.server import build_app

    unet, te = tiny_sd15_modules(tiny_model_files["sd15_folder"])
    write_lora(data_dir / "models" / "Lora" / "ink.safetensors", kohya_lora(unet, [te]))
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        test_client.services = services  # type: ignore[attr-defined]
        yield test_client
    services.generation.shutdown()


def _run(client: TestClient, **fields: object) -> tuple[np.ndarray, list[str]]:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    payload = response.json()
    with Image.open(io.BytesIO(base64.b64decode(payload["images"][0]))) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return pixels, json.loads(payload["info"])["warnings"]


def _unet(client: TestClient) -> object:
    return client.services.generation.engine().cache.active.unet  # type: ignore[attr-defined]


def _decoder(client: TestClient) -> object:
    return client.services.generation.engine().cache.active.vae.decoder  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_compiled_unet_gives_the_same_images_and_a_lora_switch_compiles_nothing(
    client: TestClient,
) -> None:
    from torch._dynamo.utils import counters

    eager, _ = _run(client)
    eager_lora, _ = _run(client, prompt="a red ball <lora:ink:1>")
    assert np.abs(eager_lora - eager).max() > 10  # the LoRA changes the image

    graphs = counters["stats"]["unique_graphs"]
    compiled, warnings = _run(client, **COMPILED)
    assert warnings == []
    assert np.abs(compiled - eager).max() <= 2  # other kernels, the same image
    compiled_graphs = counters["stats"]["unique_graphs"]
    assert compiled_graphs > graphs  # it did compile
    assert "forward" not in vars(_unet(client))  # eager again after the job
    assert "forward" not in vars(_decoder(client))
    # the VAE decoder decodes through its compiled forward too
    compiled_decoder = _decoder(client)._easel_compiled  # type: ignore[attr-defined]
    inner, calls = compiled_decoder.forward, []
    compiled_decoder.forward = lambda *args, **kwargs: (calls.append(1), inner(*args, **kwargs))[1]
    assert np.array_equal(_run(client, **COMPILED)[0], compiled) and calls
    compiled_decoder.forward = inner

    with_lora, _ = _run(client, prompt="a red ball <lora:ink:1>", **COMPILED)
    assert np.abs(with_lora - eager_lora).max() <= 2  # the merged LoRA is in the compiled graph's weights
    again, _ = _run(client, **COMPILED)
    assert np.abs(again - compiled).max() <= 1  # and out again
    assert counters["stats"]["unique_graphs"] == compiled_graphs  # no compile for the LoRA switch

    _run(client, width=96, **COMPILED)
    assert counters["stats"]["unique_graphs"] > compiled_graphs  # a new size compiles once


def test_a_failed_decoder_compile_falls_back_to_the_eager_decoder_and_says_so(client: TestClient) -> None:
    import torch._dynamo.exc

    from webui.runtime.compile import CompiledUnet

    eager, _ = _run(client)
    unet = _unet(client)

    def broken(*args: object, **kwargs: object) -> object:
        raise torch._dynamo.exc.TorchDynamoException("inductor: no working C++ compiler")

    # the UNet's "compiled" forward is its eager one here (the same kernels, no compile wait)
    unet._easel_compiled = CompiledUnet(type(unet).forward.__get__(unet))  # type: ignore[attr-defined]
    _decoder(client)._easel_compiled = CompiledUnet(broken)  # type: ignore[attr-defined]
    pixels, warnings = _run(client, **COMPILED)
    assert np.array_equal(pixels, eager)
    (warning,) = warnings
    assert warning.startswith("Compiling the VAE decoder failed (TorchDynamoException: inductor: no")
    assert _run(client, **COMPILED)[1] == []  # said once
    assert "forward" not in vars(_decoder(client))


def test_a_failed_compile_falls_back_to_the_eager_unet_and_says_so(client: TestClient) -> None:
    import torch._dynamo.exc

    from webui.runtime.compile import CompiledUnet

    eager, _ = _run(client)

    def broken(*args: object, **kwargs: object) -> object:
        raise torch._dynamo.exc.TorchDynamoException("inductor: no working C++ compiler")

    _unet(client)._easel_compiled = CompiledUnet(broken)  # type: ignore[attr-defined]
    decoder = _decoder(client)  # its "compiled" forward is its eager one here: the same kernels
    decoder._easel_compiled = CompiledUnet(type(decoder).forward.__get__(decoder))  # type: ignore[attr-defined]
    pixels, warnings = _run(client, **COMPILED)
    assert np.array_equal(pixels, eager)  # the same eager kernels
    (warning,) = warnings
    assert (
        warning.startswith("Compiling the UNet failed (TorchDynamoException: inductor: no")
        and "without compiling" in warning
    )
    assert _run(client, **COMPILED)[1] == []  # said once; the model stays eager
    off, _ = _run(client)
    assert np.array_equal(off, eager)


def test_cuda_graphs_are_asked_for_on_a_cuda_card_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import torch

    from webui.runtime.compile import compile_mode, compiled_unet

    assert compile_mode(torch.device("cuda", 0), True) == "reduce-overhead"
    assert (
        compile_mode(torch.device("cuda", 0), False) == compile_mode(torch.device("cpu"), True) == "default"
    )
    modes: list[str] = []

    def fake_compile(fn: object, *, dynamic: bool, mode: str) -> object:
        modes.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = SimpleNamespace(unet=torch.nn.Linear(2, 2), vae=None)
    x = torch.ones(1, 2)
    with compiled_unet(model, True, (1,), cuda_graphs=True) as state, torch.no_grad():
        assert state.active
        assert torch.equal(model.unet(x), torch.nn.functional.linear(x, model.unet.weight, model.unet.bias))
    assert modes == ["default"]  # a UNet on the CPU: no CUDA graphs whatever the option says


def test_a_cuda_graph_output_is_copied_out_before_the_next_replay_writes_over_it() -> None:
    """A captured graph returns the same memory on every replay; the UNet's caller gets its own copy, so an
    output kept across calls (the sampler's, the previous step's) keeps its values."""
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    from webui.runtime.compile import CompiledUnet, _install, _uninstall

    static = torch.zeros(2)

    def replay(x: torch.Tensor) -> UNet2DConditionOutput:
        static.copy_(x)  # what a CUDA graph replay does: the same output buffer every time
        return UNet2DConditionOutput(sample=static)

    module = torch.nn.Identity()
    with torch.no_grad():
        _install(module, CompiledUnet(replay, mode="reduce-overhead"), "UNet", lambda: False)
        first = module(torch.tensor([1.0, 2.0]))
        second = module(torch.tensor([3.0, 4.0]))
        assert first.sample.tolist() == [1.0, 2.0] and second.sample.tolist() == [3.0, 4.0]
        assert first.sample.data_ptr() != static.data_ptr()
        _uninstall(module)
        _install(module, CompiledUnet(replay, mode="default"), "UNet", lambda: False)
        assert module(torch.tensor([5.0, 6.0])).sample is static  # without graphs nothing is copied
