"""One Easel front over Ray workers (``--ray-address local``, two CPU workers, the tiny SD 1.5): the same
bytes as the single-machine path for txt2img and for img2img with a mask, files written by the front
only, the cluster page, and a worker killed in the middle of a job (the job completes on the other worker
with the same bytes; the worker comes back). Workers take the front's CPU thread count, so a CPU job
computes exactly as on the front and the bytes can be compared."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from webui.container import build_services
from webui.settings import Settings

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

JOB = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 6, "seed": 11, "sampler_name": "Euler"}


def _picture(colour: tuple[int, int, int], box: tuple[int, int, int, int] | None = None) -> str:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), colour)
    if box is not None:
        ImageDraw.Draw(image).rectangle(box, fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# img2img with an inpainting mask: the request carries its pictures, so a worker runs it as it is
INPAINT = {
    **JOB, "init_images": [_picture((30, 60, 200))], "mask": _picture((0, 0, 0), (16, 16, 48, 48)),
    "denoising_strength": 0.75, "save_images": True,
}  # fmt: skip


EXTRAS = {"image": _picture((200, 40, 40), (8, 8, 24, 40)), "upscaler_1": "Lanczos", "upscaling_resize": 2}


def _bytes(payload: dict) -> bytes:
    return base64.b64decode(payload["images"][0])


# SDXL with its refiner taking over at 40 % of the steps
REFINED = {
    **JOB, "override_settings": {"sd_model_checkpoint": "tiny-sdxl"},
    "refiner_checkpoint": "tiny-sdxl-refiner", "refiner_switch_at": 0.4,
}  # fmt: skip
# hires fix, a LoRA in the prompt and a ControlNet unit in one job
FULL = {
    **JOB, "prompt": "a red circle <lora:ink:0.8>", "enable_hr": True, "hr_scale": 1.5,
    "hr_upscaler": "Latent", "hr_second_pass_steps": 3, "denoising_strength": 0.6,
    "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": True, "module": "none", "model": "control_tiny_sd15_edges", "weight": 0.8,
         "image": _picture((0, 0, 0), (16, 16, 48, 48))},
    ]}},
}  # fmt: skip


@pytest.fixture(scope="module")
def install(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_files: dict[str, Path],
    controlnet_files: dict[str, Path],
) -> Callable[[Path], None]:
    """Puts the tiny SD 1.5, a LoRA for it and the tiny ControlNet into a data dir."""
    from tests.conftest import _link_or_copy
    from tests.fixtures.lora_files import kohya_lora, tiny_sd15_modules, write_lora

    unet, te = tiny_sd15_modules(tiny_model_files["sd15_folder"])
    lora = write_lora(tmp_path_factory.mktemp("lora") / "ink.safetensors", kohya_lora(unet, [te]))

    def put(data: Path) -> None:
        models = data / "models"
        _link_or_copy(tiny_model_files["sd15_single"], models / "Stable-diffusion" / "tiny.safetensors")
        _link_or_copy(lora, models / "Lora" / "ink.safetensors")
        _link_or_copy(controlnet_files["ldm"], models / "ControlNet" / controlnet_files["ldm"].name)
        for name in ("sdxl_single", "sdxl_refiner"):  # an SDXL job handing over to its refiner
            _link_or_copy(tiny_model_files[name], models / "Stable-diffusion" / tiny_model_files[name].name)

    return put


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, install: Callable[[Path], None]) -> dict[object, bytes]:
    """What the single-machine path makes for the jobs below."""
    from webui.server import build_app

    data = tmp_path_factory.mktemp("single")
    install(data)
    services = build_services(Settings(data_dir=data, preload_model=False, nowebui=True))
    services.options.update({"sd_model_checkpoint": "tiny.safetensors"})  # the SDXL files sort first
    with TestClient(build_app(services)) as client:
        made: dict[object, bytes] = {
            steps: _bytes(client.post("/sdapi/v1/txt2img", json={**JOB, "steps": steps}).json())
            for steps in (6, 40)
        }
        made["inpaint"] = _bytes(client.post("/sdapi/v1/img2img", json=INPAINT).json())
        full = client.post("/sdapi/v1/txt2img", json=FULL)
        assert full.status_code == 200, full.text
        made["full"], made["full map"] = (base64.b64decode(image) for image in full.json()["images"])
        made["refined"] = _bytes(client.post("/sdapi/v1/txt2img", json=REFINED).json())
        made["extras"] = base64.b64decode(
            client.post("/sdapi/v1/extra-single-image", json=EXTRAS).json()["image"]
        )
    services.generation.shutdown()
    return made


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, install: Callable[[Path], None]
) -> Iterator[TestClient]:
    import ray

    from webui.server import build_app

    data = tmp_path_factory.mktemp("front")
    install(data)
    settings = Settings(data_dir=data, preload_model=False, nowebui=True, ray_address="local", workers=2)
    services = build_services(settings)
    services.options.update({"sd_model_checkpoint": "tiny.safetensors"})  # the SDXL files sort first
    with TestClient(build_app(services)) as client:
        client.services = services  # type: ignore[attr-defined]
        yield client
    services.generation.shutdown()
    ray.shutdown()


def test_a_job_on_a_worker_gives_the_single_machine_bytes_and_the_front_saves_it(
    cluster: TestClient, single: dict[object, bytes]
) -> None:
    response = cluster.post("/sdapi/v1/txt2img", json={**JOB, "save_images": True})
    assert response.status_code == 200, response.text
    assert _bytes(response.json()) == single[6]
    outputs = cluster.services.settings.outputs_path  # type: ignore[attr-defined]
    saved = sorted(outputs.rglob("*.png"))
    assert len(saved) == 1 and saved[0].read_bytes() == single[6]  # written by the front, numbered there
    page = cluster.get("/easel/v1/cluster").json()
    assert [w["id"] for w in page["workers"]] == ["worker-1", "worker-2"]
    assert all(w["alive"] for w in page["workers"])
    assert sum(w["models"] == ["tiny.safetensors"] for w in page["workers"]) == 1
    assert all("cpu" in w["device"] or w["device"] == "not started" for w in page["workers"])
    assert {"user": "api:testclient", "queued": 0, "started": 1} in page["users"]  # the API caller's share
    wrong = cluster.post("/sdapi/v1/txt2img", json={**JOB, "enable_hr": True, "hr_upscaler": "Nope"})
    assert wrong.status_code == 422 and "Nope" in wrong.json()["detail"]  # the worker's own message
    assert "ray::" not in wrong.json()["detail"]
    inpainted = cluster.post("/sdapi/v1/img2img", json=INPAINT)
    assert inpainted.status_code == 200, inpainted.text
    assert _bytes(inpainted.json()) == single["inpaint"]  # img2img with a mask runs on a worker too
    assert len(list((outputs / "img2img-images").rglob("*.png"))) == 1  # and the front saved it
    again = cluster.post("/sdapi/v1/txt2img", json=JOB).json()  # the warm worker takes it
    assert _bytes(again) == single[6]
    assert cluster.get("/easel/v1/cluster").json()["warm_hits"] >= 1


def test_a_worker_killed_mid_job_hands_the_job_to_another_with_the_same_bytes(
    cluster: TestClient, single: dict[object, bytes]
) -> None:
    import ray

    dispatcher = cluster.services.generation.cluster()  # type: ignore[attr-defined]
    answer: dict[str, object] = {}

    def post() -> None:
        answer["response"] = cluster.post("/sdapi/v1/txt2img", json={**JOB, "steps": 40})

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = cluster.get("/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] >= 2 and dispatcher._running:
            break
        time.sleep(0.05)
    (worker_id,) = dispatcher._running.values()
    killed = time.monotonic()
    ray.kill(dispatcher.handles[worker_id].actor, no_restart=False)
    thread.join(timeout=120)
    assert dispatcher.retried == 1 and dispatcher.losses[-1] - killed < 3.0  # noticed within 3 s
    response = answer["response"]
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    assert _bytes(response.json()) == single[40]  # type: ignore[attr-defined]
    info = json.loads(response.json()["info"])  # type: ignore[attr-defined]
    assert info["seed"] == 11
    deadline = time.monotonic() + 60
    while not all(w["alive"] for w in cluster.get("/easel/v1/cluster").json()["workers"]):
        assert time.monotonic() < deadline, "the killed worker did not come back"
        time.sleep(0.5)


def test_hires_lora_and_controlnet_on_a_worker_give_the_single_machine_bytes(
    cluster: TestClient, single: dict[object, bytes]
) -> None:
    response = cluster.post("/sdapi/v1/txt2img", json=FULL)
    assert response.status_code == 200, response.text
    image, detected = (base64.b64decode(data) for data in response.json()["images"])
    assert (image, detected) == (single["full"], single["full map"])  # the ControlNet map comes back too
    info = json.loads(response.json()["info"])["infotexts"][0]
    assert "Hires upscale: 1.5" in info and "Lora hashes" in info and "ControlNet 0" in info


def test_sdxl_with_its_refiner_on_a_worker(cluster: TestClient, single: dict[object, bytes]) -> None:
    from webui.domain.generation import Txt2ImgRequest

    generation = cluster.services.generation  # type: ignore[attr-defined]
    fields = {k: v for k, v in REFINED.items() if k in Txt2ImgRequest.model_fields}
    assert generation.checkpoint_name(Txt2ImgRequest(**fields)) == "tiny-sdxl.safetensors"  # affinity key
    response = cluster.post("/sdapi/v1/txt2img", json=REFINED)
    assert response.status_code == 200, response.text
    assert _bytes(response.json()) == single["refined"]
    info = json.loads(response.json()["info"])["infotexts"][0]
    assert "Refiner: tiny-sdxl-refiner [" in info and "Refiner switch at: 0.4" in info
    loaded = [w["models"] for w in cluster.get("/easel/v1/cluster").json()["workers"]]
    assert any("tiny-sdxl.safetensors" in models for models in loaded)


def test_an_xyz_plot_runs_its_cells_on_the_workers(cluster: TestClient, single: dict[object, bytes]) -> None:
    from tests.api.test_grid_scripts_api import XYZ_ARGS

    dispatcher = cluster.services.generation.cluster()  # type: ignore[attr-defined]
    assigned = dispatcher.scheduler.assigned
    args = [4, "6, 40", *XYZ_ARGS[2:4], "7", *XYZ_ARGS[5:]]  # Steps 6 and 40, CFG 7: the jobs above
    response = cluster.post(
        "/sdapi/v1/txt2img", json={**JOB, "script_name": "x/y/z plot", "script_args": args}
    )
    assert response.status_code == 200, response.text
    images = [base64.b64decode(image) for image in response.json()["images"]]
    assert len(images) == 3  # the grid, then the cells (Include Sub Images)
    assert dispatcher.scheduler.assigned == assigned + 2  # each cell a job on a worker
    assert images[1:] == [single[6], single[40]]


def test_extras_upscale_on_a_worker(cluster: TestClient, single: dict[object, bytes]) -> None:
    dispatcher = cluster.services.generation.cluster()  # type: ignore[attr-defined]
    assigned = dispatcher.scheduler.assigned
    response = cluster.post("/sdapi/v1/extra-single-image", json=EXTRAS)
    assert response.status_code == 200, response.text
    assert dispatcher.scheduler.assigned == assigned + 1  # a worker upscaled it
    assert base64.b64decode(response.json()["image"]) == single["extras"]  # encoded on the front as before
    wrong = cluster.post("/sdapi/v1/extra-single-image", json={**EXTRAS, "upscaler_1": "Nope"})
    assert wrong.status_code == 422 and "Unknown upscaler" in wrong.json()["detail"]  # before any work
    assert dispatcher.scheduler.assigned == assigned + 1


def test_without_the_flag_ray_is_never_imported(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from webui.container import build_services; from webui.settings import Settings; "
        f"s = build_services(Settings(data_dir={str(tmp_path)!r}, preload_model=False, nowebui=True)); "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
