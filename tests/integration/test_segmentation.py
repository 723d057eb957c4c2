"""The segmentation preprocessors (seg_ofade20k, seg_ofcoco, seg_ufade20k) on CPU with tiny random models.

Models come from ``tests/fixtures/segmentation_models.py``: transformers-format folders saved with
``save_pretrained`` and OneFormer checkpoints in the extension's detectron2 layout; the store never
downloads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.fixtures.segmentation_models import (
    oneformer_detectron2_state,
    write_mask2former,
    write_oneformer,
    write_oneformer_file,
    write_segformer,
    write_upernet,
)
from webui.runtime.controlnet.oneformer_file import rename
from webui.runtime.controlnet.preprocessors import (
    AnnotatorLoadError,
    AnnotatorStore,
    AnnotatorWeightsMissing,
    Preprocessors,
)
from webui.runtime.controlnet.seg_palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    COCO_PANOPTIC_CLASSES,
    COCO_PANOPTIC_PALETTE,
)
from webui.runtime.controlnet.segmentation import ONEFORMER_SEMANTIC_TASK, paint

SIZE = (64, 48)  # width, height of the test picture
RES = 64  # processing resolution: short side 48 -> 64, so maps are 85x64
MAP_SIZE = (85, 64)
ADE_FILE = "250_16_swin_l_oneformer_ade20k_160k.pth"
COCO_FILE = "150_16_swin_l_oneformer_coco_100ep.pth"
ANNOTATORS = "https://huggingface.co/lllyasviel/Annotators/resolve/main"

Writer = Callable[..., Path]


def picture() -> Image.Image:
    image = Image.new("RGB", SIZE, (90, 160, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 30, 63, 47), fill=(70, 120, 40))
    draw.ellipse((20, 6, 44, 30), fill=(220, 40, 30))
    return image


def colours(result_image: Image.Image) -> set[tuple[int, int, int]]:
    assert result_image.mode == "RGB"
    pixels = np.asarray(result_image).reshape(-1, 3)
    return {(int(r), int(g), int(b)) for r, g, b in np.unique(pixels, axis=0)}


def runner(root: Path) -> Preprocessors:
    return Preprocessors(AnnotatorStore(root, allow_download=False))


# -- the palettes -------------------------------------------------------------------------------------------


def test_ade20k_palette_is_the_standard_150_colour_table() -> None:
    assert len(ADE20K_PALETTE) == len(ADE20K_CLASSES) == 150
    assert ADE20K_CLASSES[:5] == (
        ("wall", (120, 120, 120)),
        ("building", (180, 120, 120)),
        ("sky", (6, 230, 230)),
        ("floor", (80, 50, 50)),
        ("tree", (4, 200, 3)),
    )
    assert ADE20K_CLASSES[12] == ("person", (150, 5, 61))
    assert ADE20K_CLASSES[-1] == ("flag", (92, 0, 255))
    # the table itself gives road and skyscraper the same grey; every other colour is unique
    assert len(set(ADE20K_PALETTE)) == 149
    assert ADE20K_CLASSES[6] == ("road", (140, 140, 140))
    assert ADE20K_CLASSES[48] == ("skyscraper", (140, 140, 140))
    assert all(0 <= value <= 255 for colour in ADE20K_PALETTE for value in colour)


def test_coco_palette_is_the_133_panoptic_classes() -> None:
    assert len(COCO_PANOPTIC_PALETTE) == 133 and len(set(COCO_PANOPTIC_PALETTE)) == 133
    assert COCO_PANOPTIC_CLASSES[0] == ("person", (220, 20, 60))
    assert COCO_PANOPTIC_CLASSES[79] == ("toothbrush", (191, 162, 208))  # the last of the 80 things
    assert COCO_PANOPTIC_CLASSES[80] == ("banner", (255, 255, 128))  # the first of the 53 stuff classes
    assert COCO_PANOPTIC_CLASSES[-1] == ("rug-merged", (250, 141, 255))


def test_paint_maps_class_ids_to_palette_colours() -> None:
    palette = np.array(ADE20K_PALETTE, dtype=np.uint8)
    ids = np.array([[0, 1], [2, 149]])
    assert paint(ids, palette).tolist() == [[[120, 120, 120], [180, 120, 120]], [[6, 230, 230], [92, 0, 255]]]
    with pytest.raises(ValueError):
        paint(np.array([[150]]), palette)


# -- transformers-format folders ----------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_upernet, write_segformer, write_oneformer, write_mask2former])
def test_any_supported_architecture_paints_ade_colours(tmp_path: Path, writer: Writer) -> None:
    writer(tmp_path / "oneformer_ade20k")
    segment = runner(tmp_path)
    result = segment.run("seg_ofade20k", picture(), resolution=RES)
    assert result.module == "seg_ofade20k" and result.poses is None
    assert result.image.size == MAP_SIZE
    assert colours(result.image) <= set(ADE20K_PALETTE)
    again = segment.run("seg_ofade20k", picture(), resolution=RES)
    assert np.array_equal(np.asarray(result.image), np.asarray(again.image))  # deterministic
    assert segment.loaded() == ["oneformer_ade20k"]


def test_seg_ufade20k_runs_an_upernet_folder_and_follows_the_resolution(tmp_path: Path) -> None:
    write_upernet(tmp_path / "upernet_ade20k")
    segment = runner(tmp_path)
    result = segment.run("seg_ufade20k", picture(), resolution=RES)
    assert result.image.size == MAP_SIZE
    found = colours(result.image)
    assert found <= set(ADE20K_PALETTE) and len(found) > 1  # random UperNet weights give several classes
    assert segment.run("segmentation", picture(), resolution=128).image.size == (171, 128)  # legacy name
    assert segment.run("seg_ufade20k", picture()).image.size == (683, 512)  # default resolution


def test_seg_ofcoco_paints_coco_colours(tmp_path: Path) -> None:
    write_mask2former(tmp_path / "oneformer_coco", num_labels=133)
    result = runner(tmp_path).run("seg_ofcoco", picture(), resolution=RES)
    assert result.image.size == MAP_SIZE
    assert colours(result.image) <= set(COCO_PANOPTIC_PALETTE)


def test_the_folder_is_found_in_a_subfolder_of_annotators(tmp_path: Path) -> None:
    write_segformer(tmp_path / "segmentation" / "upernet_ade20k")
    assert runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES).image.size == MAP_SIZE


def test_processor_config_mean_and_std_are_used(tmp_path: Path) -> None:
    folder = write_upernet(tmp_path / "upernet_ade20k")
    plain = np.asarray(runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES).image)
    (folder / "preprocessor_config.json").write_text(
        '{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.1, 1, 1]}'
    )
    shifted = np.asarray(runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES).image)
    assert not np.array_equal(plain, shifted)
    (folder / "preprocessor_config.json").write_text('{"image_mean": [0.5], "image_std": [1, 1, 1]}')
    with pytest.raises(AnnotatorLoadError, match="image_mean must be three numbers"):
        runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES)


def test_a_model_with_the_wrong_number_of_labels_is_a_clear_error(tmp_path: Path) -> None:
    write_segformer(tmp_path / "upernet_ade20k", num_labels=19)
    segment = runner(tmp_path)
    with pytest.raises(AnnotatorLoadError) as caught:
        segment.run("seg_ufade20k", picture(), resolution=RES)
    message = str(caught.value)
    assert "predicts 19 classes" in message and "ADE20k's 150" in message
    assert str(tmp_path / "upernet_ade20k") in message
    assert segment.loaded() == []
    write_oneformer(tmp_path / "oneformer_coco", num_labels=150)  # an ADE20k model where COCO's belongs
    with pytest.raises(AnnotatorLoadError, match="predicts 150 classes, but this preprocessor paints COCO"):
        segment.run("seg_ofcoco", picture(), resolution=RES)


def test_a_missing_model_names_what_to_put_where(tmp_path: Path) -> None:
    segment = runner(tmp_path)
    with pytest.raises(AnnotatorWeightsMissing) as caught:
        segment.run("seg_ufade20k", picture(), resolution=RES)
    message = str(caught.value)
    assert str(tmp_path / "upernet_ade20k") in message
    assert "config.json with model.safetensors or pytorch_model.bin" in message
    assert "ADE20k (150 classes)" in message
    assert "https://huggingface.co/openmmlab/upernet-convnext-small" in message
    assert "upernet_global_small.pth cannot be loaded" in message  # the extension's UniFormer file
    assert caught.value.filename == "upernet_ade20k"

    with pytest.raises(AnnotatorWeightsMissing) as caught:
        segment.run("seg_ofade20k", picture(), resolution=RES)
    message = str(caught.value)
    assert caught.value.filename == ADE_FILE
    assert f"Put {ADE_FILE} into {tmp_path}" in message
    assert f"{ANNOTATORS}/{ADE_FILE}" in message
    assert str(tmp_path / "oneformer_ade20k") in message  # ... or a transformers folder
    assert "downloads are off" in message
    assert segment.loaded() == []


def test_a_folder_without_weights_counts_as_missing(tmp_path: Path) -> None:
    folder = write_upernet(tmp_path / "upernet_ade20k")
    (folder / "model.safetensors").unlink()
    with pytest.raises(AnnotatorWeightsMissing, match="upernet_ade20k has none"):
        runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES)


def test_a_corrupt_weight_file_is_a_load_error(tmp_path: Path) -> None:
    folder = write_upernet(tmp_path / "upernet_ade20k")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    segment = runner(tmp_path)
    with pytest.raises(AnnotatorLoadError) as caught:
        segment.run("seg_ufade20k", picture(), resolution=RES)
    message = str(caught.value)
    assert "cannot be loaded" in message and str(folder) in message and "seg_ufade20k" in message
    assert segment.loaded() == []


def test_weights_of_another_shape_are_a_load_error(tmp_path: Path) -> None:
    folder = write_upernet(tmp_path / "upernet_ade20k")
    config = (folder / "config.json").read_text()
    assert '"hidden_size": 16' in config
    (folder / "config.json").write_text(config.replace('"hidden_size": 16', '"hidden_size": 24'))
    with pytest.raises(AnnotatorLoadError, match="seg_ufade20k"):
        runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES)


def test_a_model_that_does_not_segment_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "upernet_ade20k"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "num_labels": 150}')
    (folder / "model.safetensors").write_bytes(b"x")
    with pytest.raises(AnnotatorLoadError, match="'bert' model, which is not a semantic segmentation model"):
        runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(AnnotatorLoadError, match=r"config\.json cannot be read"):
        runner(tmp_path).run("seg_ufade20k", picture(), resolution=RES)


# -- the extension's OneFormer files ------------------------------------------------------------------------


def test_the_extensions_oneformer_file_runs_seg_ofade20k(tmp_path: Path) -> None:
    write_oneformer_file(tmp_path / "oneformer" / ADE_FILE)  # the extension's folder layout
    segment = runner(tmp_path)
    result = segment.run("oneformer_ade20k", picture(), resolution=RES)
    assert result.module == "seg_ofade20k"
    assert result.image.size == MAP_SIZE
    assert colours(result.image) <= set(ADE20K_PALETTE)
    assert segment.loaded() == ["oneformer_ade20k"]


def test_the_coco_oneformer_file_runs_seg_ofcoco(tmp_path: Path) -> None:
    write_oneformer_file(tmp_path / COCO_FILE, num_classes=133)
    result = runner(tmp_path).run("seg_ofcoco", picture(), resolution=RES)
    assert colours(result.image) <= set(COCO_PANOPTIC_PALETTE)


def test_the_oneformer_file_is_downloaded_when_allowed(
    tmp_path: Path, file_server: tuple[str, Path, list[str]]
) -> None:
    base_url, folder, seen = file_server
    served = write_oneformer_file(folder / ADE_FILE)
    root = tmp_path / "annotators"
    segment = Preprocessors(AnnotatorStore(root, base_url=base_url))
    assert segment.run("seg_ofade20k", picture(), resolution=RES).image.size == MAP_SIZE
    assert seen == [f"/{ADE_FILE}"]
    assert (root / ADE_FILE).read_bytes() == served.read_bytes()


def test_a_model_folder_is_preferred_to_the_file(tmp_path: Path) -> None:
    (tmp_path / ADE_FILE).write_bytes(b"would fail to load")
    write_upernet(tmp_path / "oneformer_ade20k")
    assert runner(tmp_path).run("seg_ofade20k", picture(), resolution=RES).image.size == MAP_SIZE


def test_oneformer_file_weights_land_in_the_right_places(tmp_path: Path) -> None:
    from webui.runtime.controlnet.segmentation import ADE20K, load_segmenter_file

    state = oneformer_detectron2_state(150, seed=3)
    path = tmp_path / ADE_FILE
    torch.save({"model": state}, path)
    model = load_segmenter_file(path, ADE20K).model
    weights = model.state_dict()
    block = "model.pixel_level_module.encoder.swin.encoder.layers.2.blocks.1.attention."
    qkv = state["backbone.layers.2.blocks.1.attn.qkv.weight"]
    dim = qkv.shape[1]
    for index, part in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(weights[block + part + ".weight"], qkv[index * dim : (index + 1) * dim])
    fused = state["sem_seg_head.predictor.transformer_self_attention_layers.1.self_attn.in_proj_bias"]
    layer = "model.transformer_module.decoder.layers.1.self_attn.self_attn."
    assert torch.equal(weights[layer + "v_proj.bias"], fused[2 * fused.shape[0] // 3 :])
    assert torch.equal(
        weights["model.pixel_level_module.encoder.hidden_states_norms.stage3.weight"],
        state["backbone.norm2.weight"],
    )
    assert torch.equal(
        weights["model.transformer_module.decoder.class_embed.weight"],
        state["sem_seg_head.predictor.class_embed.weight"],
    )
    config = model.config
    assert config.backbone_config.depths == [2, 1, 3, 1] and config.backbone_config.window_size == 4
    assert (config.num_queries, config.hidden_dim, config.num_attention_heads) == (6, 32, 4)
    assert (config.decoder_layers, config.query_dec_layers, config.encoder_layers) == (3, 2, 2)
    renamed = rename({"text_encoder.x": torch.zeros(1), "backbone.norm0.bias": torch.zeros(1)})
    assert list(renamed) == ["model.pixel_level_module.encoder.hidden_states_norms.stage1.bias"]


def test_oneformer_is_told_the_semantic_task(tmp_path: Path) -> None:
    from webui.runtime.controlnet.segmentation import ADE20K, load_segmenter, load_segmenter_file

    task = load_segmenter_file(write_oneformer_file(tmp_path / ADE_FILE), ADE20K).task_inputs
    assert task is not None and task.shape == (1, 77)
    assert task[0, :7].tolist() == list(ONEFORMER_SEMANTIC_TASK) and task[0, 7:].max() == 0
    folder = load_segmenter(write_oneformer(tmp_path / "folder"), ADE20K).task_inputs
    assert folder is not None and torch.equal(folder, task)
    assert load_segmenter(write_upernet(tmp_path / "upernet"), ADE20K).task_inputs is None


def test_oneformer_task_ids_are_the_clip_tokens_of_the_semantic_task() -> None:
    from transformers import CLIPTokenizer

    from tests.fixtures.tiny_models import clip_tokenizer

    tokenizer = clip_tokenizer()
    assert isinstance(tokenizer, CLIPTokenizer)
    assert tuple(tokenizer("the task is semantic")["input_ids"]) == ONEFORMER_SEMANTIC_TASK


def test_oneformer_file_errors(tmp_path: Path) -> None:
    segment = runner(tmp_path)
    (tmp_path / ADE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(AnnotatorLoadError) as caught:
        segment.run("seg_ofade20k", picture(), resolution=RES)
    message = str(caught.value)
    assert ADE_FILE in message and "cannot be read" in message
    assert f"download it again from {ANNOTATORS}/{ADE_FILE}" in message

    torch.save({"model": {"backbone.res2.0.conv1.weight": torch.zeros(1)}}, tmp_path / ADE_FILE)
    with pytest.raises(AnnotatorLoadError, match="not a OneFormer checkpoint with a Swin backbone"):
        segment.run("seg_ofade20k", picture(), resolution=RES)

    write_oneformer_file(tmp_path / COCO_FILE, num_classes=150)  # the ADE20k file under COCO's name
    with pytest.raises(AnnotatorLoadError, match="predicts 150 classes, not 133"):
        segment.run("seg_ofcoco", picture(), resolution=RES)

    state = oneformer_detectron2_state(150)
    del state["sem_seg_head.predictor.transformer_ffn_layers.1.linear2.weight"]
    torch.save({"model": state}, tmp_path / ADE_FILE)
    with pytest.raises(AnnotatorLoadError, match="1 weights missing"):
        segment.run("seg_ofade20k", picture(), resolution=RES)
    assert segment.loaded() == []
