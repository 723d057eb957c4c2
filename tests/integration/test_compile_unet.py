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
