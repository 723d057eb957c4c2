"""``/easel/v1/train``: a client trains a LoRA from base64 images, follows it to the end, fetches a sample,
uses the LoRA in txt2img; bad requests get 404/422 with the reason."""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import _link_or_copy


def _b64(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture
def client(tmp_path: Path, tiny_model_files: dict[str, Path]) -> Iterator[tuple[TestClient, Any]]:
    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    checkpoint = tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors"
    _link_or_copy(tiny_model_files["sd15_single"], checkpoint)
    services = build_services(Settings(data_dir=tmp_path, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        yield test_client, services
    services.generation.shutdown()


def _follow(client: TestClient, run_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/easel/v1/train/{run_id}").json()
        if body["state"] not in ("queued", "running"):
            return body
        assert time.monotonic() < deadline, body["status"]
        time.sleep(0.2)


def test_train_follow_fetch_a_sample_and_use_the_lora(client: tuple[TestClient, Any]) -> None:
    http, services = client
    response = http.post(
        "/easel/v1/train",
        json={
            "method": "lora", "model": "tiny", "name": "api-ball", "trigger": "zwx", "class_word": "ball",
            "images": [
                {"image": _b64((220, 20, 20)), "caption": "zwx ball, red"},
                {"image": "data:image/png;base64," + _b64((20, 20, 220))},
            ],
            "steps": 3, "rank": 4, "alpha": 4, "learning_rate": 1e-2, "resolution": 64, "seed": 1,
            "sample_every": 3, "sample_steps": 2, "unknown_field": "ignored as A1111 does",
        },
    )  # fmt: skip
    assert response.status_code == 200, response.text
    started = response.json()
    assert started["state"] in ("queued", "running") and started["dataset"]["images"] == 2
    body = _follow(http, started["id"])
    assert body["state"] == "done", body["error"]
    assert body["step"] == body["total"] == 3 and len(body["loss"]) == 3
    # the eval loss on the fixed set (2 images at 3 noise levels): before the first step and after the last;
    # between them only as often as costs about a tenth of the training, here not at all
    assert [step for step, _ in body["eval_loss"]] == [0, 3]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in body["eval_loss"])
    assert body["result"] == "api-ball.safetensors" and body["family"] == "SD 1.x"
    assert [sample["step"] for sample in body["samples"]] == [0, 3]
    image = http.get(f"/easel/v1/train/{started['id']}/samples/{body['samples'][-1]['images'][0]}")
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert any(run["id"] == started["id"] for run in http.get("/easel/v1/train").json()["runs"])

    loras = {lora["name"] for lora in http.get("/sdapi/v1/loras").json()}
    assert "api-ball" in loras  # listed without a refresh
    made = http.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "zwx ball <lora:api-ball:1>", "steps": 2, "width": 64, "height": 64, "seed": 1},
    )
    assert made.status_code == 200, made.text
    assert "Lora hashes" in made.json()["info"]

    # deleting the run frees its folder (dataset copy, samples); the LoRA it saved stays
    run_dir = services.training.root / started["id"]
    assert run_dir.is_dir()
    deleted = http.delete(f"/easel/v1/train/{started['id']}")
    assert deleted.status_code == 200 and deleted.json()["freed_bytes"] > 0, deleted.text
    assert not run_dir.exists() and http.get(f"/easel/v1/train/{started['id']}").status_code == 404
    assert "api-ball" in {lora["name"] for lora in http.get("/sdapi/v1/loras").json()}
    assert http.delete(f"/easel/v1/train/{started['id']}").status_code == 404


def test_bad_requests_say_what_is_wrong(client: tuple[TestClient, Any]) -> None:
    http, services = client
    base = {"model": "tiny", "name": "bad", "steps": 2, "resolution": 64}
    cases = [
        ({**base}, 422, "no images"),
        ({**base, "images": [{"image": "bm90IGFuIGltYWdl"}]}, 422, "not a readable image"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "name": "a/b"}, 422, "cannot be a LoRA file name"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "model": "nope"}, 422, "not found"),
        ({**base, "folder": "/no/such/folder"}, 422, "does not exist"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "schedule": "zigzag"}, 422, "unknown schedule"),
        ({**base, "images": [{"image": _b64((1, 1, 1))}], "steps": 0}, 422, "steps"),
    ]
    for body, status, message in cases:
        response = http.post("/easel/v1/train", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.text, response.text
    assert http.get("/easel/v1/train/000000000000").status_code == 404
    assert http.post("/easel/v1/train/nope/stop").status_code == 404
    assert http.get("/easel/v1/train").json() == {"runs": []}
    assert not list(services.settings.lora_path.glob("*.safetensors"))
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/easel/v1/train", "/easel/v1/train/{run_id}", "/easel/v1/train/{run_id}/cancel"} <= set(paths)


def test_an_embedding_run_lands_in_the_embedding_list(client: tuple[TestClient, Any]) -> None:
    http, services = client
    response = http.post(
        "/easel/v1/train",
        json={
            "method": "embedding", "model": "tiny", "name": "api-word", "vectors": 2, "init_text": "ball",
            "images": [{"image": _b64((220, 20, 20)), "caption": "a photo of api-word"}],
            "steps": 2, "resolution": 64, "sample_every": 0,
        },
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body = _follow(http, response.json()["id"])
    assert body["state"] == "done", body["error"]
    assert body["result"] == "api-word.safetensors" and body["settings"]["learning_rate"] == 5e-3
    assert (services.settings.embeddings_path / "api-word.safetensors").is_file()
    assert not list(services.settings.lora_path.glob("*.safetensors"))
    loaded = http.get("/sdapi/v1/embeddings").json()
    listed = {**loaded.get("loaded", {}), **loaded.get("skipped", {})}
    assert "api-word" in listed, loaded


def test_a1111_create_and_train_embedding(client: tuple[TestClient, Any], tmp_path: Path) -> None:
    """A1111 clients create an embedding, train it on a server folder (the call answers when the run ends)
    and use it; the previous versions are kept; mistakes come back in A1111's ``info`` text."""
    from safetensors import safe_open

    http, services = client
    made = http.post(
        "/sdapi/v1/create/embedding",
        json={"name": "api-ball", "num_vectors_per_token": 2, "init_text": "ball"},
    )
    assert made.status_code == 200, made.text
    path = Path(made.json()["info"].removeprefix("create embedding filename: "))
    assert path == services.training.embeddings_dir / "api-ball.safetensors" and path.is_file()
    created = path.read_bytes()
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("emb_params").shape[0] == 2 and handle.metadata()["step"] == "0"
    listed = http.get("/sdapi/v1/embeddings").json()["loaded"]
    assert listed["api-ball"]["vectors"] == 2  # usable at once
    again = http.post("/sdapi/v1/create/embedding", json={"name": "api-ball"}).json()["info"]
    assert again.startswith("create embedding error: ") and "already exists" in again

    folder = tmp_path / "balls"
    folder.mkdir()
    for index, colour in enumerate([(220, 20, 20), (20, 20, 220)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"ball-{index}.png")
    body = {
        "embedding_name": "api-ball", "learn_rate": "0.05", "batch_size": 1, "gradient_step": 2,
        "data_root": str(folder), "log_directory": "textual_inversion", "training_width": 64,
        "training_height": 64, "varsize": True, "steps": 3, "clip_grad_mode": "disabled",
        "clip_grad_value": "0.1", "shuffle_tags": False, "tag_drop_out": 0, "latent_sampling_method": "once",
        "use_weight": False, "create_image_every": 0, "save_embedding_every": 500,
        "template_filename": "style_filewords.txt", "preview_from_txt2img": False,
    }  # fmt: skip
    trained = http.post("/sdapi/v1/train/embedding", json=body)
    assert trained.json() == {"info": f"train embedding complete: filename: {path} error: None"}
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["step"] == "3" and handle.get_tensor("emb_params").shape[0] == 2
    (run,) = [r for r in http.get("/easel/v1/train").json()["runs"] if r["name"] == "api-ball"]
    assert run["state"] == "done" and run["settings"]["gradient_accumulation"] == 2
    assert (services.training.root / run["id"] / "previous" / "api-ball.safetensors").read_bytes() == created

    schedule = http.post("/sdapi/v1/train/embedding", json={**body, "learn_rate": "0.005:100, 0.001"})
    assert (
        schedule.json()["info"].startswith("train embedding error: ")
        and "one learning rate" in (schedule.json()["info"])
    )
    missing = http.post("/sdapi/v1/train/embedding", json={**body, "embedding_name": "nobody"}).json()
    assert "there is no embedding 'nobody'" in missing["info"]
    replaced = http.post(
        "/sdapi/v1/create/embedding", json={"name": "api-ball", "overwrite_old": True, "init_text": "red"}
    ).json()["info"]
    assert replaced == f"create embedding filename: {path}"
    kept = list((services.training.root / "replaced").glob("*/api-ball.safetensors"))
    assert len(kept) == 1  # the trained one, moved aside rather than overwritten
    with safe_open(str(kept[0]), framework="pt") as handle:
        assert handle.metadata()["step"] == "3"


def test_dreambooth_makes_a_checkpoint_that_is_listed_and_generates(
    client: tuple[TestClient, Any], tiny_model_files: dict[str, Path]
) -> None:
    """A DreamBooth run with prior preservation: the class images are drawn into the run's folder, the new
    single-file checkpoint is in the model list at once and generates; a diffusers-folder base gives a
    folder, listed too; a taken name is refused."""
    http, services = client
    response = http.post(
        "/easel/v1/train",
        json={
            "method": "dreambooth", "model": "tiny", "name": "api-db", "trigger": "zwx", "class_word": "ball",
            "images": [{"image": _b64((220, 20, 20))}, {"image": _b64((20, 20, 220))}],
            "steps": 2, "resolution": 64, "sample_every": 0, "sample_steps": 2, "seed": 1,
            "prior_preservation": True, "class_images": 2,
        },
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body = _follow(http, response.json()["id"])
    assert body["state"] == "done", body["error"]
    assert body["result"] == "api-db.safetensors" and body["settings"]["learning_rate"] == 2e-6
    assert body["settings"]["class_prompt"] == "a photo of ball"
    assert len(list((services.training.root / body["id"] / "class_images").glob("*.png"))) == 2
    titles = [model["title"] for model in http.get("/sdapi/v1/sd-models").json()]
    assert any(title.startswith("api-db.safetensors") for title in titles), titles
    made = http.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "zwx ball", "steps": 2, "width": 64, "height": 64, "seed": 1,
              "override_settings": {"sd_model_checkpoint": "api-db"}},
    )  # fmt: skip
    assert made.status_code == 200, made.text
    assert "Model: api-db" in made.json()["info"]

    folder = services.settings.checkpoint_dir / "tiny-folder"
    _link_or_copy(tiny_model_files["sd15_folder"], folder)
    services.models.refresh()
    folder_base = http.post(
        "/easel/v1/train",
        json={"method": "dreambooth", "model": "tiny-folder", "name": "db-2", "steps": 1,
              "resolution": 64, "sample_every": 0, "images": [{"image": _b64((20, 200, 20))}]},
    )  # fmt: skip
    assert folder_base.status_code == 200, folder_base.text
    body = _follow(http, folder_base.json()["id"])
    assert body["state"] == "done" and body["result"] == "db-2" and not body["resumable"], body["error"]
    assert (services.settings.checkpoint_dir / "db-2" / "unet" / "config.json").is_file()
    titles = [model["title"] for model in http.get("/sdapi/v1/sd-models").json()]
    assert any(title.startswith("db-2") for title in titles), titles
    taken = http.post(
        "/easel/v1/train",
        json={"method": "dreambooth", "model": "tiny", "name": "api-db", "steps": 1,
              "images": [{"image": _b64((20, 200, 20))}]},
    )  # fmt: skip
    assert taken.status_code == 422 and "already exists" in taken.json()["detail"]
