"""IP-Adapter FaceID: InsightFace's detector and recogniser (stand-ins with the published interfaces), the
FaceID / FaceID Plus (v2) / portrait projections in the published key layout, units, preview and errors.

The stand-in detector reports faces fixed when its file is made (``tests/fixtures/face_id_files.py``) and
the stand-in recogniser is a small random network, so these tests check the mechanics — decoding, picking,
alignment, which pixels the identity comes from, that it reaches the UNet — not face recognition itself.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.fixtures.face_id_files import face_spec, write_face_models
from tests.fixtures.ip_adapter_files import ip_adapter_state, write_image_encoder, write_ip_adapter
from tests.fixtures.tiny_models import tiny_sd15_components
from tests.integration.test_controlnet_service import SMALL, _pixels, _title, enabled_unit
from tests.integration.test_img2img_service import b64
from webui.domain.controlnet import ControlNetUnit
from webui.domain.generation import Txt2ImgRequest
from webui.runtime.controlnet.face_embedding import (
    ARCFACE_TEMPLATE,
    FaceAnalyzer,
    FaceEmbeddingError,
    align_face,
    decode_faces,
    find_face_files,
    similarity_transform,
)
from webui.runtime.controlnet.ip_adapter import build_ip_adapter, cross_attention_layers, split_state
from webui.services.controlnet import ControlNetInputError

BIG = face_spec(220, 160, 200)  # in a 640x480 picture the detector's input is the picture itself
SMALL_FACE = face_spec(40, 40, 80, score=0.95)


@pytest.fixture(scope="module")
def tiny_unet() -> Any:
    return tiny_sd15_components()["unet"]


def portrait(
    colour: tuple[int, int, int] = (230, 180, 150), size: tuple[int, int] = (640, 480)
) -> Image.Image:
    """A grey picture with a "face" (an ellipse with eyes) where the stand-in detector reports one."""
    image = Image.new("RGB", size, (90, 90, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((230, 165, 410, 355), fill=colour)
    draw.ellipse((280, 240, 300, 260), fill=(20, 20, 20))
    draw.ellipse((340, 240, 360, 260), fill=(20, 20, 20))
    return image


def _analyzer(folder: Path) -> FaceAnalyzer:
    found = find_face_files([folder])
    assert found["det_10g.onnx"] is not None and found["w600k_r50.onnx"] is not None
    return FaceAnalyzer(found["det_10g.onnx"], found["w600k_r50.onnx"])


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    write_face_models(root, (BIG, SMALL_FACE))
    return root / "insightface"


@pytest.mark.parametrize("runtime", ["onnxruntime", "opencv"])
def test_detector_outputs_decode_to_the_faces_in_picture_pixels(
    two_faces: Path, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    if runtime == "opencv":  # the path users without onnxruntime get
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    analyzer = _analyzer(two_faces)
    # half the detector's size: the picture is scaled up by 2 to fill it, so faces come back halved
    faces = analyzer.faces(portrait(size=(320, 240)))
    assert [round(face.score, 2) for face in faces] == [0.95, 0.9]  # best score first
    small, big = faces
    np.testing.assert_allclose(big.box, np.array(BIG[0]) / 2, atol=1e-3)
    np.testing.assert_allclose(big.keypoints, np.array(BIG[1]) / 2, atol=1e-3)
    np.testing.assert_allclose(small.box, np.array(SMALL_FACE[0]) / 2, atol=1e-3)
    assert analyzer.largest(portrait(size=(320, 240))) is big  # the largest, not the best scored
    for face in faces:
        assert face.embedding is not None and face.embedding.shape == (512,)
        assert abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-5


def test_overlapping_detections_are_thinned_and_low_scores_dropped() -> None:
    from tests.fixtures.face_id_files import scrfd_outputs

    # the same face in two cells (IoU well above 0.4) and a weak one: one face is left
    outputs = [t.numpy() for t in scrfd_outputs([face_spec(100, 100, 200), face_spec(130, 100, 200, 0.7)])]
    weak = [t.numpy() for t in scrfd_outputs([face_spec(400, 400, 100, 0.3)])]
    faces = decode_faces(outputs)
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.9)
    assert decode_faces(weak) == []
    with pytest.raises(FaceEmbeddingError, match="N x 1, N x 4, N x 10"):
        decode_faces([np.zeros((10, 7), np.float32)])


def test_alignment_maps_the_keypoints_onto_arcfaces_template() -> None:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (ARCFACE_TEMPLATE @ rotation.T) * 1.7 + np.array([40.0, -12.0])
    matrix = similarity_transform(moved, ARCFACE_TEMPLATE)
    back = moved @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(back, ARCFACE_TEMPLATE, atol=1e-3)
    # keypoints already on the template: the crop is the picture's top-left 112x112, unchanged
    rgb = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(rgb, ARCFACE_TEMPLATE), rgb[:112, :112])


def test_the_identity_comes_from_the_face_and_nothing_else(two_faces: Path) -> None:
    analyzer = _analyzer(two_faces)
    base = portrait()
    identity = analyzer.largest(base).embedding
    background = base.copy()
    ImageDraw.Draw(background).rectangle((480, 0, 640, 480), fill=(10, 200, 30))  # far right of the face
    assert np.array_equal(analyzer.largest(background).embedding, identity)
    other = portrait(colour=(120, 80, 60))
    assert not np.allclose(analyzer.largest(other).embedding, identity, atol=1e-3)


def test_no_face_is_a_clear_error(tmp_path: Path) -> None:
    write_face_models(tmp_path, faces=())
    with pytest.raises(FaceEmbeddingError, match="No face found in the picture"):
        _analyzer(tmp_path / "insightface").largest(portrait())


def test_faceid_files_load_in_the_published_layouts(tiny_unet: Any) -> None:
    layers = len(cross_attention_layers(tiny_unet))
    face = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    for variant, tokens in (("faceid", 4), ("faceid_portrait", 16)):
        state = split_state(ip_adapter_state(tiny_unet, variant=variant))
        assert any("to_q_lora" in key for key in state["ip_adapter"])  # carried, and left to the LoRA file
        model = build_ip_adapter(state, f"ip-adapter-{variant}_sd15.bin")
        assert model.variant == "faceid" and model.uses_face and not model.uses_clip
        assert len(model.to_k) == layers
        assert model.project(face).shape == (1, tokens, model.cross_attention_dim)
    state = split_state(ip_adapter_state(tiny_unet, variant="faceid_plus", embed_dim=32))
    plus = build_ip_adapter(state, "ip-adapter-faceid-plus_sd15.bin")
    v2 = build_ip_adapter(state, "ip-adapter-faceid-plusv2_sd15.bin")
    assert plus.variant == v2.variant == "faceid_plus" and plus.image_embed_dim == 32
    assert not plus.shortcut and v2.shortcut
    hidden = torch.randn(1, 17, 32)
    out, out_v2 = plus.project((face, hidden)), v2.project((face, hidden))
    assert out.shape == (1, 4, plus.cross_attention_dim)
    # v2 adds the identity's own tokens (the MLP and norm alone) to the resampler's output
    proj = plus.image_proj
    identity = proj.norm(proj.proj(face).reshape(1, 4, -1))
    torch.testing.assert_close(out_v2, out + identity)
    # diffusers' own forward (state set on the module) gives the same tokens
    proj.clip_embeds, proj.shortcut = hidden[:, None], True
    torch.testing.assert_close(proj(face), out_v2)


# -- units ------------------------------------------------------------------------------------------------


@pytest.fixture
def face_services(cn_services: Any, data_dir: Path, tiny_unet: Any) -> Any:
    models = data_dir / "models"
    write_ip_adapter(models / "ControlNet" / "ip-adapter-faceid_sd15.bin", tiny_unet, variant="faceid")
    write_ip_adapter(  # ComfyUI's folder for IP-Adapters
        models / "ipadapter" / "ip-adapter-faceid-plusv2_sd15.bin",
        tiny_unet,
        variant="faceid_plus",
        embed_dim=32,
    )
    write_ip_adapter(models / "ControlNet" / "ip-adapter_tiny_sd15.safetensors", tiny_unet)
    write_image_encoder(models / "clip_vision" / "clip_h.safetensors")
    write_face_models(models)
    cn_services.controlnet.refresh()
    return cn_services


def _face_unit(services: Any, **change: Any) -> ControlNetUnit:
    fields = {"module": "ip-adapter_face_id", **change}
    return enabled_unit(services, "ip-adapter-faceid_sd15", portrait(), **fields)


def test_a_face_id_unit_steers_the_image_and_weight_zero_is_no_unit(face_services: Any) -> None:
    generation = face_services.generation
    plain = _pixels(generation.txt2img(Txt2ImgRequest(**SMALL)))[0]
    result = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_face_unit(face_services)]))
    face = _pixels(result)[0]
    assert np.abs(face.astype(int) - plain).mean() > 1
    assert (
        'ControlNet 0: "Module: ip-adapter_face_id, Model: ip-adapter-faceid_sd15 ['
        in result.images[0].infotext
    )
    # another face gives another image; the same face on another background gives the same image
    other = _face_unit(face_services, image=b64(portrait(colour=(120, 80, 60))))
    assert not np.array_equal(
        _pixels(generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[other])))[0], face
    )
    moved = portrait()
    ImageDraw.Draw(moved).rectangle((500, 0, 640, 480), fill=(0, 0, 255))
    same = _face_unit(face_services, image=b64(moved))
    assert np.array_equal(
        _pixels(generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[same])))[0], face
    )
    zero = _face_unit(face_services, weight=0.0)
    assert np.array_equal(
        _pixels(generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[zero])))[0], plain
    )
    # the preview shows the face the unit uses, boxed in green
    preview = np.asarray(Image.open(io.BytesIO(result.detected_maps[0].png_bytes)).convert("RGB"))
    assert tuple(preview[161, 300]) == (0, 220, 0) and tuple(preview[100, 100]) == (90, 90, 90)


def test_face_id_plus_reads_the_face_and_the_clip_encoding(face_services: Any) -> None:
    generation = face_services.generation
    plus = _face_unit(
        face_services,
        module="ip-adapter_face_id_plus",
        model=_title(face_services, "ip-adapter-faceid-plusv2_sd15"),
    )
    first = _pixels(generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[plus])))[0]
    assert not np.array_equal(first, _pixels(generation.txt2img(Txt2ImgRequest(**SMALL)))[0])
    # the picture's background reaches the CLIP half (not the face embedding): the image changes
    moved = portrait()
    ImageDraw.Draw(moved).rectangle((500, 0, 640, 480), fill=(0, 0, 255))
    changed = plus.model_copy(update={"image": b64(moved)})
    assert not np.array_equal(
        _pixels(generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[changed])))[0], first
    )


def test_face_id_errors_say_what_to_do_and_the_app_keeps_working(face_services: Any, data_dir: Path) -> None:
    generation = face_services.generation
    plain_title = _title(face_services, "ip-adapter_tiny_sd15")
    cases = [
        ({"module": "ip-adapter_clip_sd15"}, "choose the ip-adapter_face_id preprocessor"),
        ({"module": "ip-adapter_face_id_plus"}, "choose the ip-adapter_face_id preprocessor"),
        ({"model": plain_title}, "only IP-Adapter FaceID models read"),
        ({"image": b64(Image.new("RGB", (64, 64)))}, None),  # the stand-in always "sees" a face: runs
    ]
    for change, message in cases:
        request = Txt2ImgRequest(**SMALL, controlnet_units=[_face_unit(face_services, **change)])
        if message is None:
            assert generation.txt2img(request).images
            continue
        with pytest.raises(ControlNetInputError, match=message):
            generation.txt2img(request)
    folder = data_dir / "models" / "insightface" / "models" / "buffalo_l"
    (folder / "w600k_r50.onnx").unlink()
    with pytest.raises(ControlNetInputError, match=r"w600k_r50\.onnx is missing: put det_10g\.onnx and "):
        generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_face_unit(face_services)]))
    (folder / "w600k_r50.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ControlNetInputError, match=r"could not be loaded .*replace det_10g\.onnx"):
        generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_face_unit(face_services)]))
    write_face_models(data_dir / "models", faces=())
    with pytest.raises(ControlNetInputError, match="No face found in the reference picture"):
        generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_face_unit(face_services)]))
    assert generation.txt2img(Txt2ImgRequest(**SMALL)).images


def test_face_id_over_the_api(face_services: Any, data_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.api.test_api_core import _client

    client: TestClient
    for client in _client(data_dir):
        model = next(
            n for n in client.get("/controlnet/model_list").json()["model_list"] if "faceid_sd15" in n
        )
        unit = {"enabled": True, "module": "ip-adapter_face_id", "model": model, "image": b64(portrait())}
        body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        assert "Module: ip-adapter_face_id," in json.loads(response.json()["info"])["infotexts"][0]
        detect = client.post(
            "/controlnet/detect",
            json={"controlnet_module": "ip-adapter_face_id", "controlnet_input_images": [b64(portrait())]},
        )
        assert detect.status_code == 200, detect.text
        assert {"ip-adapter_face_id", "ip-adapter_face_id_plus"} <= set(
            client.get("/controlnet/module_list").json()["module_list"]
        )
