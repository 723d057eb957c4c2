"""Textual inversion on tiny SD 1.5 and SDXL checkpoints: the file is an A1111 embedding (``emb_params``, or
``clip_l``/``clip_g`` for SDXL) that Easel lists and uses by name in a prompt; the checkpoint is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.fixtures.training import load_tiny
from webui.domain.generation import Txt2ImgRequest
from webui.training.dataset import load_dataset
from webui.training.embedding import EmbeddingTrainingConfig, train_embedding
from webui.training.lora import TrainingError


def _dataset(root: Path) -> Path:
    folder = root / "dataset"
    folder.mkdir(parents=True)
    for index, colour in enumerate([(220, 20, 20), (20, 20, 220), (20, 200, 20)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"ball-{index}.png")
    (folder / "ball-0.txt").write_text("a photo of zwx-ball")
    return folder


@pytest.mark.parametrize(
    ("key", "keys"), [("sd15_single", {"emb_params"}), ("sdxl_single", {"clip_l", "clip_g"})]
)
def test_an_embedding_trains_saves_in_a1111_layout_and_is_used_by_name(
    tmp_path: Path, tiny_model_files: dict[str, Path], key: str, keys: set[str]
) -> None:
    from webui.container import build_services
    from webui.settings import Settings

    model = load_tiny(tmp_path, tiny_model_files, key)
    before = {name: t.clone() for name, t in model.text_encoder.state_dict().items()}
    samples: list[tuple[int, list[dict[str, torch.Tensor]]]] = []
    config = EmbeddingTrainingConfig(
        name="zwx-ball", resolution=64, total_steps=4, batch_size=2, vectors=3, init_text="ball",
        learning_rate=5e-2, seed=2, sample_every=2,
    )  # fmt: skip
    out = tmp_path / "models" / "embeddings"
    result = train_embedding(
        model, load_dataset(_dataset(tmp_path)), config, out,
        on_sample=lambda step, tables: samples.append((step, tables)),
    )  # fmt: skip
    assert result.path == out / "zwx-ball.safetensors" and result.steps == 4 and len(result.losses) == 4
    assert [step for step, _ in samples] == [0, 2, 4]
    first, last = samples[0][1][0]["zwx-ball"], samples[-1][1][0]["zwx-ball"]
    assert first.shape[0] == 3 and not torch.equal(first, last)  # the vectors moved
    with safe_open(str(result.path), framework="pt") as handle:
        assert set(handle.keys()) == keys
        assert handle.get_tensor(sorted(keys)[0]).shape[0] == 3
        assert handle.metadata()["step"] == "4"
    after = model.text_encoder.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before)  # only the new vectors learnt
    with pytest.raises(TrainingError, match="already exists"):
        train_embedding(model, load_dataset(tmp_path / "dataset"), config, out)

    services = build_services(Settings(data_dir=tmp_path, preload_model=False))
    try:
        services.generation.load_model(Path(tiny_model_files[key]).name)
        request = Txt2ImgRequest(
            prompt="a photo of zwx-ball", steps=3, width=64, height=64, seed=5, save_images=False
        )
        named = services.generation.txt2img(request)
        assert "TI hashes" in named.images[0].infotext and "zwx-ball" in named.images[0].infotext
        # the same request once the embedding is gone: the name is plain text again, and the image changes
        result.path.rename(tmp_path / "away.safetensors")
        services.networks.refresh_embeddings()
        plain = services.generation.txt2img(request)
        assert "TI hashes" not in plain.images[0].infotext
        assert plain.images[0].png_bytes != named.images[0].png_bytes
    finally:
        services.generation.shutdown()


def test_training_goes_on_from_an_embedding_file_and_keeps_the_previous_one(
    tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    """A1111's "train this embedding": the vectors start from the file (not from an initialization text),
    the step count goes on, the file is replaced and its previous version moved aside; a file made for
    another text encoder is refused by name."""
    from safetensors.torch import save_file

    model = load_tiny(tmp_path, tiny_model_files, "sd15_single")
    dataset = load_dataset(_dataset(tmp_path))
    out = tmp_path / "models" / "embeddings"
    first = train_embedding(
        model, dataset,
        EmbeddingTrainingConfig(name="zwx-ball", resolution=64, total_steps=2, vectors=2, init_text="ball",
                                learning_rate=5e-2, seed=1),
        out,
    )  # fmt: skip
    assert first.path is not None
    original = first.path.read_bytes()
    with safe_open(str(first.path), framework="pt") as handle:
        start = handle.get_tensor("emb_params")
    on_from_file = EmbeddingTrainingConfig(
        name="zwx-ball", resolution=64, total_steps=3, vectors=7, init_text="something else",
        learning_rate=1e-9, seed=2, init_file=str(first.path),
    )  # fmt: skip
    with pytest.raises(TrainingError, match="previous version"):
        train_embedding(model, dataset, on_from_file, out)  # replacing needs somewhere to keep the old one
    keep = tmp_path / "run" / "previous"
    second = train_embedding(model, dataset, on_from_file, out, keep_previous=keep)
    assert second.path == first.path and second.steps == 3
    assert (keep / "zwx-ball.safetensors").read_bytes() == original  # nothing lost
    with safe_open(str(second.path), framework="pt") as handle:
        went_on = handle.get_tensor("emb_params")
        assert handle.metadata()["step"] == "5"  # 2 before + 3 now
    assert went_on.shape == start.shape  # the file's 2 vectors, not the config's 7
    assert torch.allclose(went_on, start, atol=1e-5)  # a tiny rate: still the file's vectors, not new ones

    foreign = out / "wide.safetensors"
    save_file({"emb_params": torch.zeros(2, start.shape[1] + 8)}, str(foreign))
    with pytest.raises(TrainingError, match="does not fit"):
        train_embedding(
            model, dataset,
            EmbeddingTrainingConfig(name="wide-2", resolution=64, total_steps=1, init_file=str(foreign)),
            out,
        )  # fmt: skip
