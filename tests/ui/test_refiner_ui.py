"""The Refiner accordion: its widgets are the requests' refiner fields, "None" means no refiner, and a
pasted infotext sets them (or turns the refiner off when the image was made without one)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.ui.pnginfo import fields_to_send
from webui.ui.refiner import build_refiner_controls

OPTIONS = SimpleNamespace(send_seed=True, send_size=True)
WIDGETS = {"prompt", "seed", "refiner_checkpoint", "refiner_switch_at"}


def _services(*titles: str) -> SimpleNamespace:
    records = [SimpleNamespace(title=title) for title in titles]
    return SimpleNamespace(models=SimpleNamespace(checkpoints=lambda: records))


def test_the_accordion_lists_none_and_the_checkpoints() -> None:
    with gr.Blocks():
        fields = build_refiner_controls(
            _services("base.safetensors [aa]", "refiner.safetensors [bb]"), "txt2img"
        )
    checkpoint, switch_at = fields["refiner_checkpoint"], fields["refiner_switch_at"]
    assert [choice[0] for choice in checkpoint.choices] == [
        "None",
        "base.safetensors [aa]",
        "refiner.safetensors [bb]",
    ]
    assert checkpoint.value == "None" and switch_at.value == 0.8
    assert checkpoint.elem_id == "txt2img_refiner_checkpoint"
    # The widgets' values make a request as they are: "None" is no refiner.
    assert Txt2ImgRequest(refiner_checkpoint="None", refiner_switch_at=0.8).refiner_checkpoint is None
    chosen = Img2ImgRequest(init_images=["x"], refiner_checkpoint=" refiner.safetensors [bb] ")
    assert chosen.refiner_checkpoint == "refiner.safetensors [bb]"


def test_paste_sets_the_refiner_and_an_image_without_one_turns_it_off() -> None:
    text = (
        "a cat\nSteps: 20, Sampler: Euler, Seed: 5, Refiner: sd_xl_refiner_1.0 [7440042bbd], "
        "Refiner switch at: 0.7"
    )
    fields = fields_to_send(text, OPTIONS, WIDGETS)
    assert fields["refiner_checkpoint"] == "sd_xl_refiner_1.0 [7440042bbd]"
    assert fields["refiner_switch_at"] == 0.7
    plain = fields_to_send("a cat\nSteps: 20, Sampler: Euler, Seed: 5", OPTIONS, WIDGETS)
    assert plain["refiner_checkpoint"] == "None" and "refiner_switch_at" not in plain
    assert "refiner_checkpoint" not in fields_to_send("a cat\nSteps: 20", OPTIONS, {"prompt"})
