"""IP-Adapter units: published file layouts, the decoupled cross-attention, the unit's schedule, errors.

The adapters and encoders have random weights (tiny, sized for the tiny SD 1.x UNet), so these tests check
the mechanics — what is loaded, that the image reaches the UNet, that weight 0 is no unit, that the hooks
compute what diffusers' own IP-Adapter attention computes — not that a trained adapter transfers a style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.fixtures.ip_adapter_files import (
    ip_adapter_state,
    tiny_image_encoder,
    write_image_encoder,
    write_ip_adapter,
)
from tests.fixtures.tiny_models import tiny_sd15_components
from tests.integration.test_controlnet_service import SMALL, _pixels, _title, enabled_unit
from tests.integration.test_img2img_service import b64, picture
from webui.domain.controlnet import ControlNetUnit
from webui.domain.controlnet_models import ControlNetKind
from webui.domain.generation import Txt2ImgRequest
from webui.runtime.controlnet.ip_adapter import (
    ImageEncoder,
    IPAdapterError,
    IPAdapterTokens,
    build_ip_adapter,
    ip_adapter_hooks,
    load_image_encoder,
    split_state,
    vision_config_from_shapes,
)
from webui.services.controlnet import ControlNetInputError


@pytest.fixture(scope="module")
def tiny_unet() -> Any:
    return tiny_sd15_components()["unet"]


@pytest.fixture
def ip_services(cn_services: Any, data_dir: Path, tiny_unet: Any) -> Any:
    models = data_dir / "models"
    write_ip_adapter(models / "ControlNet" / "ip-adapter_tiny_sd15.safetensors", tiny_unet)
    write_ip_adapter(
        models / "ControlNet" / "ip-adapter-plus_tiny_sd15.bin", tiny_unet, variant="plus", embed_dim=32
    )
    write_image_encoder(models / "clip_vision" / "clip_h.safetensors")
    cn_services.controlnet.refresh()
    return cn_services


def reference(colour: tuple[int, int, int] = (240, 200, 20)) -> Image.Image:
    image = Image.new("RGB", (48, 48), (20, 20, 20))
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill=colour)
    return image


def _unit(services: Any, **change: Any) -> ControlNetUnit:
    fields = {"module": "ip-adapter_clip_sd15", **change}
    return enabled_unit(services, "ip-adapter_tiny_sd15", reference(), **fields)


def test_ip_adapters_are_listed_as_such(ip_services: Any) -> None:
    records = {r.model_name: r for r in ip_services.controlnet.records()}
    plain, plus = records["ip-adapter_tiny_sd15"], records["ip-adapter-plus_tiny_sd15"]
    assert plain.kind is ControlNetKind.IP_ADAPTER and plain.error is None and plain.context_dim == 64
    assert plus.kind is ControlNetKind.IP_ADAPTER and plus.error is None  # a .bin, identified when loaded
    assert records["control_tiny_sd15_edges"].kind is ControlNetKind.CONTROLNET


def test_image_prompt_changes_the_image_and_weight_zero_is_no_unit(ip_services: Any) -> None:
    generation = ip_services.generation
    plain = _pixels(generation.txt2img(Txt2ImgRequest(**SMALL)))[0]
    prompted = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services)]))
    first = _pixels(prompted)[0]
    assert np.abs(first.astype(int) - plain).mean() > 1
    assert (
        'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny_sd15 ['
        in prompted.images[0].infotext
    )
    other = generation.txt2img(
        Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services, image=b64(reference((20, 60, 240))))])
    )
    assert not np.array_equal(first, _pixels(other)[0])  # the picture itself reaches the UNet
    zero = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services, weight=0.0)]))
    assert np.array_equal(_pixels(zero)[0], plain)
    late = generation.txt2img(
        Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services, guidance_start=0.5)])
    )
    assert len({first.tobytes(), _pixels(late)[0].tobytes(), plain.tobytes()}) == 3
    # hooks are gone after the job: the plain request gives the plain image again
    assert np.array_equal(_pixels(generation.txt2img(Txt2ImgRequest(**SMALL)))[0], plain)


def test_plus_adapter_with_an_ip_adapter_and_a_controlnet_together(ip_services: Any) -> None:
    generation = ip_services.generation
    plus = _unit(ip_services, model=_title(ip_services, "ip-adapter-plus_tiny_sd15"))
    edges = ControlNetUnit(
        enabled=True,
        module="none",
        model=_title(ip_services, "control_tiny_sd15_edges"),
        image=b64(picture()),
    )
    both = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[plus, edges]))
    only_edges = generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[edges]))
    assert not np.array_equal(_pixels(both)[0], _pixels(only_edges)[0])
    assert "ControlNet 1: " in both.images[0].infotext


def test_hooks_compute_what_diffusers_ip_adapter_attention_computes(tiny_unet: Any) -> None:
    import copy

    state = ip_adapter_state(tiny_unet)
    parts = split_state(state)
    adapter = build_ip_adapter(parts, "tiny")
    embeds = torch.randn(1, 16)
    sample, timestep, context = torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 7, 64)
    reference_unet = copy.deepcopy(tiny_unet)
    reference_unet._load_ip_adapter_weights([parts])
    with torch.no_grad():
        expected = reference_unet(
            sample,
            timestep,
            encoder_hidden_states=context,
            added_cond_kwargs={"image_embeds": [embeds[:, None]]},
        ).sample

    class Unit:
        weight = 1.0
        control = type("Loaded", (), {"model": adapter, "record": None})()
        ip_tokens = IPAdapterTokens(adapter, embeds, torch.zeros_like(embeds))

        @staticmethod
        def active_at(step: int, total: int) -> bool:
            return True

    session = type("Session", (), {"step": 0, "total": 1, "batch": 1})()
    with torch.no_grad(), ip_adapter_hooks(tiny_unet, [Unit()], session):
        ours = tiny_unet(sample, timestep, encoder_hidden_states=context).sample
    with torch.no_grad():
        without = tiny_unet(sample, timestep, encoder_hidden_states=context).sample
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    assert (ours - without).abs().max() > 1e-3  # and the adapter did something


def test_encoder_single_file_and_folder_load_alike(tmp_path: Path) -> None:
    single = load_image_encoder(write_image_encoder(tmp_path / "clip_h.safetensors"), torch.float32, "cpu")
    folder = load_image_encoder(write_image_encoder(tmp_path / "image_encoder"), torch.float32, "cpu")
    image = reference()
    a, _ = single.encode([image], hidden_states=False)
    b, _ = folder.encode([image], hidden_states=False)
    assert a.shape == (1, 16) and torch.allclose(a, b, atol=1e-5)
    # the embedding is CLIP's: the vision tower's pooled output through its projection
    model = tiny_image_encoder()
    with torch.no_grad():
        direct = model(pixel_values=single.pixels(image)).image_embeds
    assert torch.allclose(a, direct, atol=1e-5)
    hidden, zero = single.encode([image, image], hidden_states=True)
    assert hidden.shape == (1, 17, 32) and zero.shape == (1, 17, 32)  # 16 patches + class token


def test_encoder_config_from_published_shapes() -> None:
    shapes = {
        "vision_model.embeddings.class_embedding": (1280,),
        "vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14),
        "vision_model.embeddings.position_embedding.weight": (257, 1280),
        "vision_model.encoder.layers.0.mlp.fc1.weight": (5120, 1280),
        "vision_model.encoder.layers.31.mlp.fc1.weight": (5120, 1280),
        "visual_projection.weight": (1024, 1280),
    }
    config = vision_config_from_shapes(shapes, "clip_h.pth")
    assert config["image_size"] == 224 and config["num_hidden_layers"] == 32
    assert config["num_attention_heads"] == 16 and config["hidden_act"] == "gelu"
    assert config["projection_dim"] == 1024


def test_bad_ip_adapter_units_and_files(ip_services: Any, data_dir: Path, tiny_unet: Any) -> None:
    generation = ip_services.generation
    with pytest.raises(ControlNetInputError, match="choose an ip-adapter preprocessor"):
        generation.submit_txt2img(
            Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services, module="none")])
        )
    edges = _title(ip_services, "control_tiny_sd15_edges")
    with pytest.raises(ControlNetInputError, match="is a ControlNet"):
        generation.submit_txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services, model=edges)]))
    # the adapter reads 16-wide embeddings; an encoder giving 24 is the wrong one
    encoder = data_dir / "models" / "clip_vision" / "clip_h.safetensors"
    write_image_encoder(encoder, projection_dim=24)
    with pytest.raises(ControlNetInputError, match="16-wide CLIP embeddings"):
        generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services)]))
    encoder.unlink()
    with pytest.raises(ControlNetInputError, match=r"put clip_h\.pth"):
        generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services)]))
    folder = data_dir / "models" / "ControlNet"
    write_ip_adapter(folder / "ip-adapter-faceid_tiny.safetensors", tiny_unet, variant="faceid")
    truncated = folder / "ip-adapter_truncated.bin"
    truncated.write_bytes((folder / "ip-adapter-plus_tiny_sd15.bin").read_bytes()[:500])
    ip_services.controlnet.refresh()
    write_image_encoder(encoder)
    faceid = _unit(ip_services, model=_title(ip_services, "ip-adapter-faceid_tiny"))
    with pytest.raises(ControlNetInputError, match="choose the ip-adapter_face_id preprocessor"):
        generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[faceid]))
    broken = _unit(ip_services, model=_title(ip_services, "ip-adapter_truncated"))
    with pytest.raises(Exception, match="cannot be read"):
        generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[broken]))
    # and the app keeps working
    assert generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services)])).images


def test_a_file_that_is_no_encoder_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "clip_h.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(IPAdapterError, match="not a CLIP image encoder"):
        load_image_encoder(path, torch.float32, "cpu")
    assert isinstance(load_image_encoder(write_image_encoder(path), torch.float32, "cpu"), ImageEncoder)


def test_an_adapter_names_its_own_encoder_inside_the_models_folder(tmp_path: Path) -> None:
    from webui.runtime.controlnet.ip_adapter import ImageEncoders

    models = tmp_path / "models"
    write_image_encoder(tmp_path / "elsewhere" / "encoder")
    (models / "clip").mkdir(parents=True)
    (models / "clip" / "linked").symlink_to(tmp_path / "elsewhere" / "encoder")  # shared model folders
    encoders = ImageEncoders([models / "clip_vision"], models)
    assert encoders.named("clip/linked") == models / "clip" / "linked"
    assert encoders.get(("clip_h.pth",), torch.float32, "cpu", own="clip/linked").embed_dim == 16
    assert encoders.named("../elsewhere/encoder") is None  # never outside the models folder
    assert encoders.named("clip/missing") is None


def test_several_reference_pictures_are_averaged(ip_services: Any) -> None:
    generation = ip_services.generation
    red, blue = b64(reference((240, 30, 30))), b64(reference((30, 30, 240)))

    def made(**change: Any) -> np.ndarray:
        return _pixels(
            generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services, **change)]))
        )[0]

    only_red = made(image=red)
    twice_red = made(image=None, input_mode="merge", batch_input_gallery=[red, {"image": red}])
    assert np.array_equal(only_red, twice_red)  # the mean of one embedding twice is that embedding
    both = made(image=None, input_mode="merge", batch_input_gallery=[red, blue])
    assert not np.array_equal(both, only_red) and not np.array_equal(both, made(image=blue))
    for change, message in (
        (
            {"input_mode": "merge", "module": "none", "batch_input_gallery": [red]},
            "IP-Adapter preprocessors only",
        ),
        ({"input_mode": "batch"}, "not supported"),
        ({"input_mode": "merge"}, "needs pictures"),
        ({"input_mode": "merge", "batch_input_gallery": [red, "bm90IGFuIGltYWdl"]}, "reference picture 2"),
    ):
        with pytest.raises(ValueError, match=message):
            generation.submit_txt2img(
                Txt2ImgRequest(**SMALL, controlnet_units=[_unit(ip_services, **change)])
            )
