"""LoRA training speed and memory.

``--setup reference`` (default, CPU): Easel's reference model (models/Stable-diffusion/easel-reference,
64×64), trained by ``webui.training.lora.train_lora`` exactly as a run does (latents cached, min-SNR γ 5,
AdamW), batch 4, rank 8, on 16 synthetic shape images: seconds per step with the UNet only and with the
text encoder too, against one inference forward of the UNet at the same batch in the same process (the
baseline: the ratio says what a training step costs next to a generation step), and peak RSS.

``--setup gpu`` (CUDA, about 3 minutes): the core of a LoRA step on random-weight UNets built from the
bundled configs, on random latents and text embeddings (the text encoders are frozen and their outputs
cached in these settings): SD1.5-shaped at 512² (64² latents), rank 16, bf16, gradient checkpointing,
batch 1; SDXL-shaped at 1024² (128² latents), UNet only, rank 16, bf16, gradient checkpointing, batch 1.
Seconds per step and peak VRAM (``torch.cuda.max_memory_allocated``); the baseline is one inference
forward of the same UNet.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--steps 40]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py --setup gpu [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _dataset(root: Path) -> Path:
    from PIL import Image

    from tools.reference.shapes import random_spec, render

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for index in range(16):
        spec = random_spec(rng)
        Image.fromarray(render(spec)).save(root / f"s{index}.png")
        (root / f"s{index}.txt").write_text(spec.full_caption())
    return root


def reference(steps: int) -> dict[str, Any]:
    from webui.registry.scanner import scan_checkpoints
    from webui.runtime.loader import load_checkpoint
    from webui.training.dataset import load_dataset
    from webui.training.lora import LoraTrainingConfig, train_lora

    work = Path(tempfile.mkdtemp(prefix="easel-bench-train-"))
    (record,) = [r for r in scan_checkpoints(REPO / "models" / "Stable-diffusion") if "reference" in r.name]
    model = load_checkpoint(record, dtype=torch.float32, tokenizer_cache=work / "tokenizers")
    loaded_rss = _rss_gib()
    dataset = load_dataset(_dataset(work / "dataset"))

    latents = torch.randn(4, 4, 8, 8)
    context = torch.randn(4, 77, model.unet.config.cross_attention_dim)
    timesteps = torch.full((4,), 500)
    with torch.no_grad():
        model.unet(latents, timesteps, context)  # warm-up
        started = time.perf_counter()
        for _ in range(20):
            model.unet(latents, timesteps, context)
        forward = (time.perf_counter() - started) / 20

    results: dict[str, Any] = {"setup": "reference", "threads": torch.get_num_threads(), "forward_s": forward}
    for label, text_encoder in (("unet", False), ("unet+te", True)):
        stamps: list[float] = []

        def stamp(_step: int, _total: int, _loss: float, stamps: list[float] = stamps) -> bool:
            stamps.append(time.perf_counter())
            return True

        config = LoraTrainingConfig(
            name=f"bench-{label.replace('+', '-')}", resolution=64, rank=8, alpha=8, total_steps=steps + 5,
            batch_size=4, learning_rate=1e-4, train_text_encoder=text_encoder, seed=1,
        )  # fmt: skip
        train_lora(model, dataset, config, work / "out", on_step=stamp)
        per_step = (stamps[-1] - stamps[4]) / (len(stamps) - 5)  # the first 5 steps are warm-up
        results[label] = {"s_per_step": per_step, "ratio_to_forward": per_step / forward}
    results["peak_rss_gib"] = _rss_gib()
    results["rss_after_load_gib"] = loaded_rss
    return results


def _gpu_case(name: str, family: str, latent: int, steps: int) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model

    from webui.training.lora import UNET_TARGETS

    config_path = REPO / "webui" / "runtime" / "configs" / family / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    unet = UNet2DConditionModel.from_config(config).to("cuda", torch.bfloat16)
    unet.requires_grad_(False)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, device="cuda", dtype=torch.bfloat16)
    sample = torch.randn(1, 4, latent, latent, device="cuda", dtype=torch.bfloat16)
    timesteps = torch.tensor([500], device="cuda")
    extra: dict[str, Any] = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 1280, device="cuda", dtype=torch.bfloat16),
            "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]], device="cuda", dtype=torch.bfloat16),
        }
    with torch.no_grad():
        unet(sample, timesteps, context, **extra)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(5):
            unet(sample, timesteps, context, **extra)
        torch.cuda.synchronize()
        forward = (time.perf_counter() - started) / 5
    unet.enable_gradient_checkpointing()
    unet = get_peft_model(unet, LoraConfig(r=16, lora_alpha=16, target_modules=UNET_TARGETS))
    unet.train()
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    torch.cuda.reset_peak_memory_stats()
    for index in range(steps + 3):
        if index == 3:
            torch.cuda.synchronize()
            started = time.perf_counter()
        noise = torch.randn_like(sample)
        prediction = unet(sample + noise, timesteps, context, **extra).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30
    del unet, optimizer
    return {
        "case": name,
        "s_per_step": per_step,
        "forward_s": forward,
        "ratio_to_forward": per_step / forward,
        "peak_vram_gib": peak,
    }


def gpu(steps: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise SystemExit("--setup gpu needs a CUDA device")
    return {
        "setup": "gpu",
        "device": torch.cuda.get_device_name(0),
        "cases": [
            _gpu_case("SD1.5-shaped 512², rank 16, bf16, checkpointing", "sd1", 64, steps),
            _gpu_case("SDXL-shaped 1024² UNet only, rank 16, bf16, checkpointing", "sdxl", 128, steps),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=["reference", "gpu"], default="reference")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    result = reference(args.steps or 40) if args.setup == "reference" else gpu(args.steps or 20)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
