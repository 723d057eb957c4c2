"""Option ``easel_channels_last``: the UNet's and VAE's conv weights in channels-last or NCHW, over the API
with the tiny SD 1.5. Other kernels run in the other layout, so images compare within a tolerance; going
back to NCHW gives the first bytes again."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 9, "sampler_name": "Euler", "prompt": "a red ball"}


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        test_client.services = services  # type: ignore[attr-defined]
        yield test_client
    services.generation.shutdown()


def _run(client: TestClient, layout: str | None = None) -> np.ndarray:
    fields: dict[str, Any] = dict(SMALL)
    if layout is not None:
        fields["override_settings"] = {"easel_channels_last": layout}
    response = client.post("/sdapi/v1/txt2img", json=fields)
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _layouts(client: TestClient) -> set[str]:
    model = client.services.generation.engine().cache.active  # type: ignore[attr-defined]
    found = set()
    for module in (model.unet, model.vae):
        for param in module.parameters():
            if param.dim() == 4 and param.shape[2:] != (1, 1):  # 1×1 kernels are both layouts at once
                found.add("nhwc" if not param.is_contiguous() else "nchw")
    return found


def test_channels_last_weights_on_request_and_back(client: TestClient) -> None:
    automatic = _run(client)
    assert _layouts(client) == {"nchw"}  # Automatic on the CPU: NCHW, the faster layout here
    on = _run(client, "On")
    assert _layouts(client) == {"nhwc"}
    model = client.services.generation.engine().cache.active  # type: ignore[attr-defined]
    assert all(
        p.is_contiguous(memory_format=torch.channels_last) for p in model.unet.parameters() if p.dim() == 4
    )
    assert np.abs(on - automatic).mean() < 1.0 and np.abs(on - automatic).max() <= 8  # other kernels
    assert np.array_equal(_run(client, "On"), on)  # the same request twice: the same bytes
    off = _run(client, "Off")
    assert _layouts(client) == {"nchw"}
    assert np.array_equal(off, automatic)


def test_an_unknown_layout_is_refused_and_the_app_goes_on(client: TestClient) -> None:
    fields = {**SMALL, "override_settings": {"easel_channels_last": "sideways"}}
    response = client.post("/sdapi/v1/txt2img", json=fields)
    assert response.status_code == 422
    assert "easel_channels_last" in response.text and "Automatic" in response.text
    _run(client)
