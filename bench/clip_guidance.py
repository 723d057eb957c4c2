"""Cost of CLIP guidance: seconds one guided step adds, next to one plain sampling step (CFG batch of 2).

Two setups, each in one process, the plain step and the guided step alternating round by round (medians):

- ``reference``: Easel's reference model (64×64) with the reference CLIP
  (``models/clip/easel-reference-clip``)
  when it is there, else a random CLIP of the same kind of size;
- ``sd15``: SD1.5-shaped random UNet and VAE (``bench/sd15_random.py``) with a ViT-B/32-shaped random CLIP,
  at ``--size`` (256 on a CPU by default; 512 is the real case and takes minutes per round on 2 cores).

    HF_HUB_OFFLINE=1 python bench/clip_guidance.py [--setup reference|sd15|both] [--size 256]
        [--cutouts 4] [--rounds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from webui.domain.clip_guidance import ClipGuidance  # noqa: E402
from webui.runtime.clip_guidance import ClipGuidancePlan, ClipGuide  # noqa: E402

REFERENCE_CLIP = REPO / "models" / "clip" / "easel-reference-clip"
PROMPT = "a red circle on a blue background"


def random_embedder(sizes: dict[str, Any], device: torch.device) -> Any:
    from tests.fixtures.clip_files import tiny_clip_model
    from webui.runtime.clip import ClipEmbedder
    from webui.runtime.tokenizer import clip_tokenizer

    model = tiny_clip_model(seed=1, sizes=sizes).requires_grad_(False).to(device)
    tokenizer = clip_tokenizer(Path(tempfile.mkdtemp(prefix="easel-bench-tok-")) / "clip")
    size = int(model.config.vision_config.image_size)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    return ClipEmbedder(
        f"random-{size}", model, device=device, tokenizer=tokenizer, resize=size, mean=mean, std=std
    )


def reference_embedder(device: torch.device) -> Any:
    if REFERENCE_CLIP.is_dir():
        from webui.services.clip import ClipService
        from webui.services.options import OptionsStore

        cache = Path(tempfile.mkdtemp(prefix="easel-bench-clip-"))
        options = OptionsStore(cache / "config.json")
        options.update({"easel_clip_device": device.type})
        return ClipService(REFERENCE_CLIP.parent, options, cache / "tok").embedder()
    from tests.fixtures.clip_files import TINY_SIZES

    print("(no reference CLIP in models/clip: a random tiny CLIP instead)")
    return random_embedder(TINY_SIZES, device)


def reference_model(device: torch.device) -> Any:
    from webui.registry.scanner import scan_checkpoints
    from webui.runtime.loader import load_checkpoint

    record = next(
        r for r in scan_checkpoints(REPO / "models" / "Stable-diffusion") if r.name == "easel-reference"
    )
    model = load_checkpoint(record, dtype=torch.float32, tokenizer_cache=Path(tempfile.mkdtemp()) / "tok")
    model.to(device)
    return model


def sd15_model(device: torch.device, dtype: torch.dtype) -> Any:
    from sd15_random import sd15_components

    parts = sd15_components()
    return SimpleNamespace(
        unet=parts["unet"].to(device, dtype),
        vae=parts["vae"].to(device, dtype),
        record=SimpleNamespace(model_name="sd15-random"),
    )


def run(label: str, model: Any, embedder: Any, latent: int, cutouts: int, rounds: int) -> dict[str, float]:
    from diffusers import DPMSolverMultistepScheduler

    unet = model.unet
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True
    )
    scheduler.set_timesteps(20)
    scheduler._step_index = 10
    pipeline = SimpleNamespace(scheduler=scheduler, _num_timesteps=20)
    channels = unet.config.in_channels
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, channels, latent, latent, generator=generator).to(device, dtype)
    width = unet.config.cross_attention_dim
    cond = torch.randn(1, 77, width, generator=generator).to(device, dtype)
    guide = ClipGuide(
        model, ClipGuidancePlan(ClipGuidance(scale=200, cutouts=cutouts), embedder), PROMPT, [1], 20
    )
    timestep = scheduler.timesteps[10]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain() -> None:
        with torch.inference_mode():
            unet(torch.cat([latents] * 2), timestep, encoder_hidden_states=torch.cat([cond] * 2))
        sync()

    def guided() -> None:
        with torch.inference_mode():
            guide(pipeline, 9, latents, cond)
        sync()

    plain(), guided()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "guided": []}
    for _ in range(rounds):
        for name, call in (("plain", plain), ("guided", guided)):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{label}: plain step {result['plain']:.3f} s, guided step adds {result['guided']:.3f} s "
        f"({result['guided'] / result['plain']:.1f}x a plain step), {cutouts} cutouts, "
        f"CLIP {embedder.name} on "
        f"{embedder.device}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=["reference", "sd15", "both"], default="both")
    parser.add_argument(
        "--size", type=int, default=0, help="sd15 image size (default 256 on cpu, 512 on cuda)"
    )
    parser.add_argument("--cutouts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if args.setup in ("reference", "both"):
        run(
            "reference 64x64",
            reference_model(device),
            reference_embedder(device),
            16,
            args.cutouts,
            args.rounds,
        )
    if args.setup in ("sd15", "both"):
        from tests.fixtures.clip_files import B32_SIZES

        size = args.size or (512 if device.type == "cuda" else 256)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        run(
            f"sd15 {size}x{size}", sd15_model(device, dtype), random_embedder(B32_SIZES, device), size // 8,
            args.cutouts, args.rounds,
        )  # fmt: skip


if __name__ == "__main__":
    main()
