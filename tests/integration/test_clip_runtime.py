"""CLIP models loaded and used: torchmetrics parity, the OpenAI-layout round trip, preprocessing, the
service (scores, phrases, model choice, errors, threads) and interrogation from the phrase lists."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.clip_files import save_openai_file, save_transformers_folder, tiny_clip_model
from webui.runtime.clip import ClipLoader, pil_to_pixels
from webui.services.clip import ClipModelError, ClipService, NoClipModelError
from webui.services.options import OptionsStore

PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "size": {"shortest_edge": 32},
    "crop_size": {"height": 32, "width": 32},
    "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.3],
    "resample": 3,
}


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip-data") / "models" / "clip"
    model = tiny_clip_model(seed=1)
    save_transformers_folder(model, root / "tiny-clip", preprocessor=PREPROCESSOR)
    save_openai_file(model, root / "tiny-openai.safetensors")
    save_transformers_folder(tiny_clip_model(seed=2), root / "easel-reference-clip")
    return root


@pytest.fixture
def service(clip_root: Path, tmp_path: Path) -> ClipService:
    return ClipService(
        clip_root, OptionsStore(tmp_path / "config.json"), clip_root.parent.parent / "tokenizer"
    )


def _images(count: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


def test_scores_match_torchmetrics_clip_score(service: ClipService, clip_root: Path) -> None:
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = clip_root / "tiny-clip"
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True),
        tokenizer=service.embedder("tiny-clip").tokenizer,
    )

    class Features(torch.nn.Module):  # transformers 5 returns outputs; torchmetrics expects tensors
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config = model.config

        def get_image_features(self, *args: Any) -> torch.Tensor:
            out = model.get_image_features(*args)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def get_text_features(self, *args: Any) -> torch.Tensor:
            out = model.get_text_features(*args)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    images = _images(4)
    prompts = ["a red circle on a blue background", "a photo of a cat", "(green:1.2) square", "x"]
    compared = 0
    for prompt in prompts:
        ours = service.score(images, prompt, model="tiny-clip").scores
        for image, score in zip(images, ours, strict=True):
            pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
            text = prompt.replace("(green:1.2)", "green")  # the words CLIP reads (clip_text)
            theirs = float(clip_score(pixels, text, model_name_or_path=lambda: (Features(), processor)))
            assert score == pytest.approx(theirs, abs=1e-4)
            compared += score > 0
    assert compared >= 4  # not only clamped zeros


def test_openai_layout_round_trip_gives_the_same_embeddings(service: ClipService) -> None:
    images, texts = _images(2), ["a red circle", "a blue square on a white background"]
    folder = service.embedder("tiny-clip")
    folder_out = (folder.pil_images(images), folder.text(texts))
    single = service.embedder("tiny-openai")  # converted from OpenAI's layout at load
    assert single.name == "tiny-openai" and single.resize == 32
    single_out = (single.pil_images(images), single.text(texts))
    # The folder has its own mean/std; the file uses OpenAI's, so compare images preprocessed alike.
    single._mean, single._std = folder._mean, folder._std
    assert torch.allclose(single.pil_images(images), folder_out[0], atol=1e-5)
    assert torch.allclose(single_out[1], folder_out[1], atol=1e-5)
    assert not torch.allclose(single_out[0], folder_out[0], atol=1e-3)  # and the preprocessing matters


def test_open_clip_files_use_gelu(tmp_path: Path) -> None:
    model = tiny_clip_model(seed=3, hidden_act="gelu")
    root = tmp_path / "clip"
    save_openai_file(model, root / "laion-mini.safetensors", openai_scalars=False)
    save_transformers_folder(model, root / "same-in-folder")
    service = ClipService(root, OptionsStore(tmp_path / "c.json"), tmp_path / "tok")
    assert [info.kind for info in service.models()] == ["open_clip", "transformers"]
    file_embedder = service.embedder("laion-mini")
    assert file_embedder.model.config.text_config.hidden_act == "gelu"
    texts = ["a cat"]
    assert torch.allclose(
        file_embedder.text(texts), service.embedder("same-in-folder").text(texts), atol=1e-5
    )


def test_image_preprocessing_follows_the_models_processor(service: ClipService, clip_root: Path) -> None:
    from transformers import CLIPImageProcessor

    embedder = service.embedder("tiny-clip")
    processor = CLIPImageProcessor.from_pretrained(str(clip_root / "tiny-clip"), local_files_only=True)
    for size in ((32, 32), (48, 32), (96, 128)):
        blocks = np.random.default_rng(1).integers(0, 256, (size[1] // 16, size[0] // 16, 3))
        image = Image.fromarray(np.kron(blocks, np.ones((16, 16, 1))).astype(np.uint8))
        theirs = processor(images=image, return_tensors="pt")["pixel_values"]
        seen: list[torch.Tensor] = []
        original = embedder.model.get_image_features

        def capture(pixel_values: torch.Tensor, _original: Any = original, _seen: list[Any] = seen) -> Any:
            _seen.append(pixel_values)
            return _original(pixel_values=pixel_values)

        embedder.model.get_image_features = capture  # an instance attribute, removed below
        try:
            embedder.pil_images([image])
        finally:
            del embedder.model.get_image_features
        assert seen[0].shape == theirs.shape == (1, 3, 32, 32)
        # Same resize, crop and normalisation; bicubic kernels differ slightly between PIL and torch.
        assert float((seen[0] - theirs).abs().mean()) < 0.05, size


def test_image_embeddings_are_differentiable_and_normalised(service: ClipService) -> None:
    embedder = service.embedder("tiny-clip")
    assert embedder.image_size == 32 and embedder.dtype == torch.float32 and embedder.device.type == "cpu"
    pixels = torch.rand(2, 3, 40, 56, requires_grad=True)
    embeddings = embedder.images(pixels)
    assert embeddings.shape == (2, 32)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    (embeddings @ embedder.text(["a red circle"]).T).sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0
    texts = embedder.text(["a", "a very long prompt " * 40])  # truncated at 77 tokens, not an error
    assert texts.shape == (2, 32) and not texts.requires_grad


def test_score_phrases_and_clip_text(service: ClipService) -> None:
    images = _images(3)
    result = service.score(
        images, "a red circle BREAK <lora:x:0.5> blue background, (shiny:1.3)", phrases=True
    )
    assert result.model == "tiny-clip"  # Automatic: the first that is not the reference
    assert len(result.scores) == 3 and all(score >= 0 for score in result.scores)
    assert [p.text for p in result.phrases] == ["a red circle", "blue background", "shiny"]
    embedder = service.embedder()
    cos = embedder.text(["a red circle, blue background, shiny"]) @ embedder.pil_images(images).T
    assert list(result.scores) == pytest.approx([max(100 * float(c), 0) for c in cos[0]], abs=1e-4)
    single = service.score(images[:1], "a red circle", phrases=True)
    assert single.phrases[0].scores == pytest.approx(single.scores)
    assert service.score(images, "a red circle").phrases == ()


def test_model_choice_and_errors(service: ClipService, clip_root: Path, tmp_path: Path) -> None:
    assert service.available()
    assert service.model_name() == service.model_name("Automatic") == "tiny-clip"
    assert service.choices() == ["Automatic", "easel-reference-clip", "tiny-clip", "tiny-openai"]
    service.options.update({"easel_clip_model": "tiny-openai"})
    assert service.model_name() == "tiny-openai"
    assert service.model_name("easel-reference-clip") == "easel-reference-clip"
    # A model chosen in Settings and deleted since: the automatic choice scores (the infotext names it).
    service.options.update({"easel_clip_model": "deleted-since"})
    assert service.model_name() == "tiny-clip"
    assert service.score(_images(1), "a cat").model == "tiny-clip"
    service.options.update({"easel_clip_model": "tiny-openai"})
    with pytest.raises(LookupError, match="unknown CLIP model 'nope'"):
        service.score(_images(1), "a cat", model="nope")
    with pytest.raises(ValueError, match="prompt is empty"):
        service.score(_images(1), "  <lora:x:1> ")
    with pytest.raises(ValueError, match="no images"):
        service.score([], "a cat")
    only_reference = tmp_path / "ref-only"
    only_reference.mkdir()
    (only_reference / "easel-reference-clip").symlink_to(
        clip_root / "easel-reference-clip", target_is_directory=True
    )
    alone = ClipService(only_reference, OptionsStore(tmp_path / "o.json"), tmp_path / "tok")
    assert alone.model_name() == "easel-reference-clip"
    empty = ClipService(tmp_path / "none", OptionsStore(tmp_path / "e.json"), tmp_path / "tok")
    assert not empty.available() and empty.choices() == ["Automatic"]
    with pytest.raises(NoClipModelError, match="Put a CLIP model into"):
        empty.score(_images(1), "a cat")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.safetensors").write_bytes((clip_root / "tiny-openai.safetensors").read_bytes()[:100_000])
    with_broken = ClipService(broken, OptionsStore(tmp_path / "b.json"), tmp_path / "tok")
    with pytest.raises(ClipModelError, match=r"cut\.safetensors.*truncated"):
        with_broken.score(_images(1), "a cat", model="cut")
    assert not with_broken.available()


def test_device_option_falls_back_to_the_cpu(service: ClipService, caplog: pytest.LogCaptureFixture) -> None:
    service.options.update({"easel_clip_device": "cuda"})
    embedder = service.embedder("tiny-clip")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert embedder.device.type == expected
    if expected == "cpu":
        assert "CUDA is not available" in caplog.text
    with pytest.raises(ValueError):
        service.options.update({"easel_clip_device": "tpu"})


def test_the_last_model_stays_loaded(clip_root: Path, tmp_path: Path) -> None:
    service = ClipService(clip_root, OptionsStore(tmp_path / "c.json"), tmp_path / "tok")
    first = service.embedder("tiny-clip")
    assert service.embedder("tiny-clip") is first
    other = service.embedder("tiny-openai")
    assert other is not first and service.embedder("tiny-openai") is other


def test_concurrent_scores_agree(service: ClipService) -> None:
    images = _images(2)
    expected = service.score(images, "a red circle", phrases=True)
    results: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(service.score(images, "a red circle", phrases=True))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [expected] * 4


def test_interrogate_builds_a_prompt_from_the_lists(service: ClipService, clip_root: Path) -> None:
    from webui.runtime.clip_interrogate import PhraseLists

    lists = PhraseLists.load(None)
    caption = service.interrogate(_images(1)[0])
    parts = caption.split(", ")
    assert parts[0] in lists.subjects
    extras = {line for lines, _ in lists.extras for line in lines}
    assert 1 < len(parts) <= 1 + 1 + 2 + 3 and set(parts[1:]) <= extras
    assert "{colour}" not in caption
    assert service.interrogate(_images(1)[0]) == caption  # deterministic, lists cached

    user = clip_root / "interrogate"
    user.mkdir(exist_ok=True)
    try:
        (user / "subjects.txt").write_text("# mine\na {colour} teapot\n", encoding="utf-8")
        (user / "colours.txt").write_text("teal\n", encoding="utf-8")
        (user / "styles.txt").write_text("my style\n", encoding="utf-8")
        replaced = service.interrogate(_images(1)[0]).split(", ")
        assert replaced[0] == "a teal teapot" and "my style" in replaced
        assert "interrogate" not in service.choices()  # the lists folder is not a model
    finally:
        for path in user.iterdir():
            path.unlink()
        user.rmdir()


def test_a_model_folder_with_its_own_lists_is_interrogated_with_those_only(
    service: ClipService, clip_root: Path
) -> None:
    """A small model names what it knows; the shared lists (and a user's) are not read for it."""
    own = clip_root / "tiny-clip" / "interrogate"
    user = clip_root / "interrogate"
    own.mkdir()
    user.mkdir(exist_ok=True)
    try:
        (own / "subjects.txt").write_text("a {colour} circle\na {colour} square\n", encoding="utf-8")
        (own / "colours.txt").write_text("red\nblue\n", encoding="utf-8")
        (user / "subjects.txt").write_text("a {colour} teapot\n", encoding="utf-8")
        (user / "styles.txt").write_text("my style\n", encoding="utf-8")
        caption = service.interrogate(_images(1)[0], model="tiny-clip")
        assert caption in {"a red circle", "a blue circle", "a red square", "a blue square"}  # no extras
        other = service.interrogate(_images(1)[0], model="tiny-openai")  # a file: the user's lists
        assert other.startswith("a ") and " teapot" in other.split(", ")[0]
        assert "tiny-clip" in service.choices()  # its lists folder does not hide the model
        (own / "subjects.txt").write_text("a {colour} heart\n", encoding="utf-8")  # edited: read again
        assert service.interrogate(_images(1)[0], model="tiny-clip").endswith(" heart")
        (own / "subjects.txt").unlink()
        with pytest.raises(ValueError, match="missing or empty"):
            service.interrogate(_images(1)[0], model="tiny-clip")
    finally:
        for folder in (own, user):
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()


def test_expand_fills_two_slots_with_different_colours() -> None:
    from webui.runtime.clip_interrogate import expand

    lines = expand(["a {colour} circle on a {colour} background", "a cat"], ["red", "blue", "green"])
    assert len(lines) == 3 * 2 + 1
    assert "a red circle on a blue background" in lines and "a red circle on a red background" not in lines


def test_alpha_is_composited_on_white() -> None:
    pixels = pil_to_pixels(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert pixels.shape == (1, 3, 4, 4) and torch.allclose(pixels, torch.ones_like(pixels))
    assert ClipLoader  # the loader is importable without loading anything


def test_interrogation_list_embeddings_are_cached_on_disk(clip_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ClipService(clip_root, OptionsStore(tmp_path / "a.json"), tmp_path / "tok", cache)
    image = _images(1, seed=5)[0]
    caption = first.interrogate(image, model="tiny-clip")
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o644"

    second = ClipService(clip_root, OptionsStore(tmp_path / "b.json"), tmp_path / "tok", cache)
    embedder = second.embedder("tiny-clip")
    calls: list[int] = []
    original = embedder.text
    embedder.text = lambda texts: calls.append(len(texts)) or original(texts)  # type: ignore[method-assign]
    try:
        assert second.interrogate(image, model="tiny-clip") == caption
    finally:
        del embedder.text
    assert calls == []  # read from the cache, not embedded again
    files[0].write_bytes(b"damaged")
    third = ClipService(clip_root, OptionsStore(tmp_path / "c.json"), tmp_path / "tok", cache)
    assert third.interrogate(image, model="tiny-clip") == caption  # rebuilt
    assert len(list(cache.glob("*.safetensors"))) == 1 and files[0].stat().st_size > 1000


def test_a_config_that_does_not_fit_its_weights_is_a_clear_error(clip_root: Path, tmp_path: Path) -> None:
    import json
    import shutil

    root = tmp_path / "clip"
    shutil.copytree(clip_root / "tiny-clip", root / "mismatch")
    config = json.loads((root / "mismatch" / "config.json").read_text())
    config["projection_dim"] = 48
    (root / "mismatch" / "config.json").write_text(json.dumps(config))
    service = ClipService(root, OptionsStore(tmp_path / "c.json"), tmp_path / "tok")
    with pytest.raises(ClipModelError, match="mismatch: its weights do not fit its configuration"):
        service.score(_images(1), "a cat")
    (root / "mismatch" / "config.json").write_text(json.dumps({**config, "projection_dim": 32}))
    assert len(service.score(_images(1), "a cat").scores) == 1  # fixed file: loads (nothing stuck)


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_openclip_state_dicts_give_openclips_own_embeddings(tmp_path: Path, quick_gelu: bool) -> None:
    """An independent check of the OpenAI-layout conversion: OpenCLIP's own model is the reference."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from safetensors.torch import save_file

    torch.manual_seed(11)
    reference = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=quick_gelu,
    ).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "ln" in name:
                param.add_(torch.randn_like(param) * 0.1)
    state = {key: value.contiguous() for key, value in reference.state_dict().items()}
    if quick_gelu:  # as OpenAI's own files: quick-GELU, marked by these scalars
        state.update({key: torch.tensor(v) for key, v in (("input_resolution", 32), ("context_length", 77))})
        state["vocab_size"] = torch.tensor(49408)
    root = tmp_path / "clip"
    root.mkdir()
    save_file(state, str(root / "oc.safetensors"))
    service = ClipService(root, OptionsStore(tmp_path / "c.json"), tmp_path / "tok")
    assert service.models()[0].kind == ("openai" if quick_gelu else "open_clip")
    embedder = service.embedder("oc")

    texts = ["a red circle on a blue background", "a cat"]
    with torch.no_grad():
        theirs_text = reference.encode_text(open_clip.tokenize(texts), normalize=True)
        pixels = torch.rand(2, 3, 32, 32)
        mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
        theirs_image = reference.encode_image((pixels - mean) / std, normalize=True)
        ours_image = embedder.images(pixels)
    assert torch.allclose(embedder.text(texts), theirs_text, atol=1e-5)
    assert torch.allclose(ours_image, theirs_image, atol=1e-5)


def test_a_folder_with_pytorch_model_bin_loads_tensors_only(clip_root: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    root = tmp_path / "clip"
    folder = root / "bin-clip"
    folder.mkdir(parents=True)
    shutil.copy(clip_root / "tiny-clip" / "config.json", folder / "config.json")
    torch.save(load_file(str(clip_root / "tiny-clip" / "model.safetensors")), folder / "pytorch_model.bin")
    service = ClipService(root, OptionsStore(tmp_path / "c.json"), tmp_path / "tok")
    assert service.models()[0].weights == folder / "pytorch_model.bin"
    reference = ClipService(clip_root, OptionsStore(tmp_path / "r.json"), tmp_path / "tok")
    texts = ["a green square"]
    assert torch.allclose(
        service.embedder().text(texts), reference.embedder("tiny-clip").text(texts), atol=1e-6
    )

    class Payload:  # a pickle that would run code: refused
        def __reduce__(self) -> tuple[object, ...]:
            return (print, ("unsafe",))

    torch.save({"model": Payload()}, folder / "pytorch_model.bin")
    fresh = ClipService(root, OptionsStore(tmp_path / "d.json"), tmp_path / "tok")
    with pytest.raises(ClipModelError, match="refuses to load it"):
        fresh.embedder()
