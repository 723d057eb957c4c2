"""/sdapi/v1 img2img, Extras and upscaler lists over HTTP, A1111 shapes and defaults."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.test_api_core import _client
from tests.fixtures.upscaler_models import write_esrgan
from tests.integration.test_img2img_service import b64, picture, square_mask

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler"}


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    write_esrgan(data_dir / "models" / "ESRGAN", "2x-tiny.pth", scale=2)
    yield from _client(data_dir)


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_img2img_response_and_nulled_init_images(client: TestClient) -> None:
    body = {**SMALL, "prompt": "a cat", "init_images": ["data:image/png;base64," + b64(picture())]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["parameters"]["init_images"] is None and payload["parameters"]["mask"] is None
    info = json.loads(payload["info"])
    assert info["denoising_strength"] == 0.75
    assert "Denoising strength: 0.75" in info["infotexts"][0]
    assert _decode(payload["images"][0]).size == (64, 64)
    kept = client.post("/sdapi/v1/img2img", json={**body, "include_init_images": True}).json()
    assert kept["parameters"]["init_images"] == body["init_images"]


def test_img2img_inpaint_fields_and_a1111_api_defaults(client: TestClient) -> None:
    mask = b64(square_mask((64, 64), (20, 20, 40, 40)))
    body = {**SMALL, "init_images": [b64(picture())], "mask": mask, "inpainting_mask_invert": True}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    # A1111's API defaults: mask blur 4, only masked with padding 0, masked content fill.
    assert (
        "Mask mode: Inpaint not masked, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 0"
        in (infotext)
    )
    assert "Masked content: fill" in infotext


def test_img2img_errors(client: TestClient) -> None:
    missing = client.post("/sdapi/v1/img2img", json={**SMALL})
    assert missing.status_code == 404 and missing.json()["detail"] == "Init image not found"
    bad = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": ["bm90IGFuIGltYWdl"]})
    assert bad.status_code == 422 and "not a readable image" in bad.json()["detail"]
    wrong_mask = client.post(
        "/sdapi/v1/img2img",
        json={**SMALL, "init_images": [b64(picture())], "mask": b64(square_mask((32, 32), (0, 0, 4, 4)))},
    )
    assert wrong_mask.status_code == 422 and "must have the image's size" in wrong_mask.json()["detail"]
    # a mask that leaves nothing to repaint: refused before a generation that would change nothing
    black, white = Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 255)
    refused = ((black, False, "marks nothing to repaint"), (white, True, "Inpaint not masked"))
    for mask, invert, said in refused:
        body = {**SMALL, "init_images": [b64(picture())], "mask": b64(mask), "inpainting_mask_invert": invert}
        empty = client.post("/sdapi/v1/img2img", json=body)
        assert empty.status_code == 422 and said in empty.json()["detail"], empty.text
    for mask, invert in ((white, False), (black, True)):  # the whole picture repainted is a real job
        body = {**SMALL, "init_images": [b64(picture())], "mask": b64(mask), "inpainting_mask_invert": invert}
        assert client.post("/sdapi/v1/img2img", json=body).status_code == 200
    script = client.post(
        "/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(picture())], "script_name": "Loopbak"}
    )
    assert script.status_code == 422
    assert "'Loopbak' is not available" in script.json()["detail"]
    assert (
        "img2img scripts: sd upscale, " in script.json()["detail"] and "loopback" in script.json()["detail"]
    )


def test_txt2img_enable_hr(client: TestClient) -> None:
    body = {
        **SMALL,
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_upscaler": "Latent (bicubic)",
        "denoising_strength": 0.5,
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert _decode(payload["images"][0]).size == (96, 96)
    infotext = json.loads(payload["info"])["infotexts"][0]
    assert (
        "Denoising strength: 0.5" in infotext
        and "Hires upscale: 1.5, Hires upscaler: Latent (bicubic)" in infotext
    )


def test_upscaler_lists(client: TestClient) -> None:
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [item["name"] for item in upscalers] == ["None", "Lanczos", "Nearest", "2x-tiny"]
    assert set(upscalers[3]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert upscalers[3]["scale"] == 2
    modes = client.get("/sdapi/v1/latent-upscale-modes").json()
    assert [m["name"] for m in modes][:2] == ["Latent", "Latent (antialiased)"] and len(modes) == 6


def test_extras_single_defaults_and_upscaling(client: TestClient) -> None:
    source = b64(picture(40, 30))
    # A1111: only `image` given -> upscaler_1 is "None", which leaves the image unscaled.
    plain = client.post("/sdapi/v1/extra-single-image", json={"image": source})
    assert plain.status_code == 200, plain.text
    assert set(plain.json()) == {"html_info", "image"}
    assert _decode(plain.json()["image"]).size == (40, 30)
    doubled = client.post("/sdapi/v1/extra-single-image", json={"image": source, "upscaler_1": "2x-tiny"})
    result = _decode(doubled.json()["image"])
    assert result.size == (80, 60)
    assert result.info["parameters"] == "Postprocess upscale by: 2.0, Postprocess upscaler: 2x-tiny"
    sized = client.post(
        "/sdapi/v1/extra-single-image",
        json={"image": source, "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64,
              "upscaler_1": "Lanczos", "upscaler_2": "2x-tiny", "extras_upscaler_2_visibility": 0.5},
    )  # fmt: skip
    assert _decode(sized.json()["image"]).size == (64, 64)
    unknown = client.post("/sdapi/v1/extra-single-image", json={"image": source, "upscaler_1": "Nope"})
    assert unknown.status_code == 422 and "Unknown upscaler" in unknown.json()["detail"]
    assert client.post("/sdapi/v1/extra-single-image", json={}).status_code == 404
    assert not list(client.services.settings.outputs_path.rglob("*.png"))  # type: ignore[attr-defined]


def test_extras_batch(client: TestClient) -> None:
    body = {
        "imageList": [
            {"data": b64(picture(32, 32)), "name": "a.png"},
            {"data": b64(picture(16, 24)), "name": "b"},
        ],
        "upscaler_1": "Nearest",
        "upscaling_resize": 3,
    }
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 200, response.text
    sizes = [_decode(image).size for image in response.json()["images"]]
    assert sizes == [(96, 96), (48, 72)]
