"""LoRA switching cost on an SD1.5-shaped model (random weights, CPU, one process).

Measures, for two rank-32 kohya LoRAs covering every attention projection, feed-forward layer and
``proj_in``/``proj_out`` of the UNet plus the CLIP attention and MLP layers:

1. reading a LoRA file's tensors (``safetensors.safe_open``) vs Easel's first load of it
   (read + parse into the file cache + merge into the model);
2. switching between the two LoRAs once both are cached (restore from backups + merge);
3. one UNet step (CFG batch of 2) with no LoRA vs with a LoRA merged (median of alternated runs), in
   steady state: after each change of the set one untimed step runs first, as a generation's later steps
   follow its first (that first step is reported on its own: it pays the OS for memory just handed out);
4. a second generation with an unchanged LoRA set: the time ``apply`` spends (no patching).

    python bench/lora_switch.py [--size 512] [--rounds 5]
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

from sd15_random import sd15_components  # noqa: E402

from tests.fixtures.lora_files import kohya_lora, write_lora  # noqa: E402
from webui.domain.lora import ActiveLora  # noqa: E402
from webui.domain.models import ModelFamily  # noqa: E402
from webui.registry.hashes import addnet_hash_safetensors  # noqa: E402
from webui.runtime.lora import LoraFileCache, LoraPatcher  # noqa: E402


def _timed(func: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value


def _median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=512, help="image size for the UNet step (latent = size/8)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    threads = torch.get_num_threads()

    components = sd15_components()
    unet, te = components["unet"], components["text_encoder"]
    model = SimpleNamespace(
        unet=unet, text_encoder=te, text_encoder_2=None, family=ModelFamily.SD1,
        record=SimpleNamespace(name="sd15-random.safetensors"),
    )  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="easel-lora-bench-"))
    loras = []
    for index, name in enumerate(("style-a", "style-b")):
        path = write_lora(
            folder / f"{name}.safetensors", kohya_lora(unet, [te], rank=32, alpha=16, seed=index, scale=0.02)
        )
        key = addnet_hash_safetensors(path)
        loras.append(ActiveLora(name, str(path), key, 1.0, 1.0))
    size_mb = Path(loras[0].path).stat().st_size / 2**20

    from safetensors import safe_open

    def read_only(path: str) -> int:
        with safe_open(path, framework="pt", device="cpu") as handle:
            return len([handle.get_tensor(k) for k in handle.keys()])  # noqa: SIM118

    read_s, layers = _timed(lambda: read_only(loras[0].path))
    files = LoraFileCache(2048 * 2**20)
    patcher = LoraPatcher(model)
    _ = patcher.index  # built once per loaded model
    parse_s, parsed_a = _timed(lambda: files.get(loras[0]))
    first_apply_s, report = _timed(lambda: patcher.apply([(loras[0], parsed_a)]))
    parsed_b = files.get(loras[1])
    switches = []
    for round_ in range(args.rounds):
        target = loras[(round_ + 1) % 2]
        parsed = parsed_b if target is loras[1] else parsed_a
        seconds, _ = _timed(lambda t=target, p=parsed: patcher.apply([(t, p)]))  # type: ignore[misc]
        switches.append(seconds)
    unchanged_s, unchanged = _timed(
        lambda: patcher.apply(
            [(loras[1] if args.rounds % 2 else loras[0], parsed_b if args.rounds % 2 else parsed_a)]
        )
    )

    latent = args.size // 8
    sample = torch.randn(2, 4, latent, latent)
    context = torch.randn(2, 77, 768)
    timestep = torch.tensor([500, 500])

    def step() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            unet(sample, timestep, encoder_hidden_states=context)
            return time.perf_counter() - start

    patcher.apply([])
    step()  # warm-up
    plain, with_lora = [], []
    first_plain, first_lora = [], []  # the first step after the set changed
    for round_ in range(args.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for active in order:
            changed = patcher.apply([(loras[0], parsed_a)] if active else []).patched
            first = step()
            if changed:
                (first_lora if active else first_plain).append(first)
            (with_lora if active else plain).append(step())
    backup_mb = patcher.backup_bytes / 2**20 if patcher.applied else 0.0
    patcher.apply([])

    plain_med, lora_med = statistics.median(plain), statistics.median(with_lora)
    lines = [
        f"SD1.5-shaped random UNet + CLIP-L, fp32, CPU ({threads} threads); two rank-32 kohya LoRAs, "
        f"{report.touched} weights each ({size_mb:.0f} MiB fp16 files, {layers} tensors).",
        "",
        "| measure | time |",
        "| --- | --- |",
        f"| read the file's tensors only (safetensors) | {read_s * 1000:.0f} ms |",
        f"| first load: read + parse into the cache | {parse_s * 1000:.0f} ms |",
        f"| first merge into the model | {first_apply_s * 1000:.0f} ms |",
        f"| switch between two cached LoRAs (restore + merge, median of {args.rounds}) | "
        f"{statistics.median(switches) * 1000:.0f} ms |",
        f"| same set again (no patching; patched={unchanged.patched}) | {unchanged_s * 1e6:.0f} µs |",
        f"| UNet step {args.size}×{args.size}, CFG batch 2, no LoRA (median of {args.rounds}) | "
        f"{plain_med * 1000:.0f} ms |",
        f"| UNet step with a LoRA merged | {lora_med * 1000:.0f} ms ({lora_med / plain_med:.3f}×) |",
        f"| first step after adding the LoRA / after removing it (median) | "
        f"{_median_ms(first_lora)} / {_median_ms(first_plain)} |",
        f"| backups held while a LoRA is active | {backup_mb:.0f} MiB (CPU) |",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
