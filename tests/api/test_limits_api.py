"""Server limits over HTTP: a request over one is a 4xx naming the limit, its value and the flag; the
server keeps serving; the limits cannot be changed through /sdapi/v1/options."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.test_api_core import _client
from tests.unit.test_limits import bomb_png, png_bytes
from webui.services import limits

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler"}
LIMITS = {
    "max_image_side": 512,
    "max_pixels": 256 * 256,
    "max_steps": 8,
    "max_batch_size": 2,
    "max_batch_count": 3,
    "max_upscale": 2.0,
    "max_upload_bytes": 200_000,
    "max_upload_pixels": 128 * 128,
}


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    yield from _client(data_dir, **LIMITS)
    limits.install(limits.Limits())  # the process-wide limits back to the defaults for later tests


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _refused(response: object, status: int, *named: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    detail = response.json()["detail"]  # type: ignore[attr-defined]
    for part in named:
        assert part in detail, detail


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"width": 576}, ("width is 576", "max image side is 512", "--max-image-side")),
        ({"width": 512, "height": 512}, ("max pixels per image", "--max-pixels")),
        ({"steps": 9}, ("Sampling steps is 9", "max steps is 8", "--max-steps")),
        ({"batch_size": 3}, ("batch size is 3", "max batch size is 2", "--max-batch-size")),
        ({"n_iter": 4}, ("batch count is 4", "--max-batch-count")),
        ({"enable_hr": True, "hr_scale": 3}, ("hires upscale factor is 3.0", "--max-upscale")),
        ({"width": 192, "height": 192, "enable_hr": True, "hr_scale": 2}, ("hires image", "--max-pixels")),
    ],
)
def test_txt2img_over_a_limit_is_422(client: TestClient, fields: dict, named: tuple[str, ...]) -> None:
    _refused(client.post("/sdapi/v1/txt2img", json={**SMALL, **fields}), 422, *named)
    assert client.services.generation.pending() == 0  # type: ignore[attr-defined]  # nothing queued


def test_a_job_within_the_limits_runs_after_refusals(client: TestClient) -> None:
    _refused(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 50}), 422, "--max-steps")
    ok = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 8, "batch_size": 2})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["images"]) == 2


def test_limits_are_not_api_options(client: TestClient) -> None:
    client.post("/sdapi/v1/options", json={"max_steps": 100, "max_image_side": 4096})
    _refused(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 9}), 422, "max steps is 8")


def test_img2img_uploads_over_a_limit(client: TestClient) -> None:
    body = {**SMALL, "prompt": "x"}
    big = b64(png_bytes(64, 64) + b"\0" * 300_000)
    _refused(client.post("/sdapi/v1/img2img", json={**body, "init_images": [big]}), 413, "--max-upload-bytes")
    wide = b64(png_bytes(256, 128))
    _refused(
        client.post("/sdapi/v1/img2img", json={**body, "init_images": [wide]}),
        422, "256x128", "max upload pixels", "--max-upload-pixels",
    )  # fmt: skip
    bomb = b64(bomb_png(50_000, 50_000))
    _refused(
        client.post("/sdapi/v1/img2img", json={**body, "init_images": [bomb]}), 422, "--max-upload-pixels"
    )
    mask_bomb = {**body, "init_images": [b64(png_bytes(64, 64))], "mask": bomb}
    _refused(client.post("/sdapi/v1/img2img", json=mask_bomb), 422, "mask", "--max-upload-pixels")
    ok = client.post("/sdapi/v1/img2img", json={**body, "init_images": [b64(png_bytes(64, 64))]})
    assert ok.status_code == 200, ok.text


def test_sd_upscale_result_over_max_pixels(data_dir: Path) -> None:
    clients = _client(data_dir, max_pixels=200 * 200)
    client = next(clients)
    body = {
        **SMALL, "init_images": [b64(png_bytes(128, 128))], "script_name": "SD upscale",
        "script_args": ["", 8, "Lanczos", 2.0],
    }  # fmt: skip
    try:
        _refused(client.post("/sdapi/v1/img2img", json=body), 422, "SD upscale result", "--max-pixels")
    finally:
        clients.close()
        limits.install(limits.Limits())


def test_extras_over_a_limit(client: TestClient) -> None:
    image = b64(png_bytes(64, 64))
    over = {"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 3}
    _refused(
        client.post("/sdapi/v1/extra-single-image", json=over), 422, "upscale factor is 3.0", "--max-upscale"
    )
    to_size = {"image": image, "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 1024,
               "upscaling_resize_h": 1024}  # fmt: skip
    _refused(client.post("/sdapi/v1/extra-single-image", json=to_size), 422, "--max-pixels")
    batch = {"imageList": [{"data": b64(bomb_png(40_000, 40_000)), "name": "b.png"}], "upscaler_1": "Lanczos"}
    _refused(client.post("/sdapi/v1/extra-batch-images", json=batch), 422, "--max-upload-pixels")
    ok = client.post("/sdapi/v1/extra-single-image", json={**over, "upscaling_resize": 2})
    assert ok.status_code == 200, ok.text


def test_png_info_upload_limits(client: TestClient) -> None:
    _refused(
        client.post("/sdapi/v1/png-info", json={"image": b64(bomb_png(70_000, 70_000))}),
        422,
        "--max-upload-pixels",
    )
    _refused(
        client.post("/sdapi/v1/png-info", json={"image": b64(b"\0" * 300_000)}), 413, "--max-upload-bytes"
    )
    assert client.post("/sdapi/v1/png-info", json={"image": b64(png_bytes(32, 32))}).status_code == 200


def test_gradio_upload_over_the_byte_limit_is_413(data_dir: Path) -> None:
    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    services = build_services(
        Settings(data_dir=data_dir, preload_model=False, api=True, max_upload_bytes=4096)
    )
    try:
        with TestClient(build_app(services)) as client:
            big = client.post("/gradio_api/upload", files={"files": ("big.png", b"\0" * 8192, "image/png")})
            assert big.status_code == 413, big.text[:300]
            small = client.post(
                "/gradio_api/upload", files={"files": ("s.png", png_bytes(8, 8), "image/png")}
            )
            assert small.status_code == 200, small.text[:300]
    finally:
        services.generation.shutdown()
        limits.install(limits.Limits())
