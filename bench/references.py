"""Cost of the reference features on this machine: an IP-Adapter unit per UNet step, the CLIP image encoding
it needs once per job, and the Depth Anything preprocessors at 512².

1. IP-Adapter: an SD1.5-shaped UNet (random weights from the bundled config) runs CFG steps (batch 2) at
   ``--size`` with no unit and with one IP-Adapter unit of the published SD 1.5 shape (4 image tokens,
   key/value projections for the 16 cross-attention layers), applied through Easel's own hooks
   (``ControlPlan.session``); the two cases alternate round by round and the medians are compared.
2. The CLIP ViT-H/14 image encoder (the published ``clip_h`` shape, random weights): load from a file and
   one encoding of a picture.
3. Depth Anything (v1 file layout, random weights at the published ViT-S/B/L sizes): first load from a file
   and the median of ``--runs`` runs at processing resolution 512.
4. ControlNet-LLLite (``--lllite``): an SDXL-shaped UNet (bundled config, random weights) runs CFG steps at
   ``--size`` with no unit and with one LLLite unit of the published ``v01032064e`` shape (image embedding
   32 wide, modules 64 wide, on the attention projections of the input and middle blocks).

    python bench/references.py [--size 256] [--rounds 5] [--runs 3] [--depth s,b,l] [--skip-encoder]
                               [--lllite]
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
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from sd15_random import sd15_components  # noqa: E402

from bench.preprocessors import bench_picture  # noqa: E402
from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput  # noqa: E402


def _ip_unit(unet: torch.nn.Module) -> ControlUnitInput:
    from tests.fixtures.ip_adapter_files import ip_adapter_state
    from webui.runtime.controlnet.ip_adapter import IPAdapterTokens, build_ip_adapter, split_state

    adapter = build_ip_adapter(split_state(ip_adapter_state(unet, embed_dim=1024)), "ip-adapter_sd15")
    embeds = torch.randn(1, 1024)
    control = SimpleNamespace(model=adapter, kind="ip_adapter", record=SimpleNamespace(title="bench"))
    return ControlUnitInput(
        control=control,
        image=Image.new("RGB", (8, 8)),
        ip_tokens=IPAdapterTokens(adapter, embeds, torch.zeros_like(embeds)),
    )


def _step_medians(
    unet: torch.nn.Module, plans: dict[str, ControlPlan], inputs: dict[str, Any], rounds: int
) -> dict[str, float]:
    """Median seconds of one UNet call per plan; the plans alternate round by round, the first round warms
    up."""
    times: dict[str, list[float]] = {name: [] for name in plans}
    with torch.inference_mode():
        for round_index in range(rounds + 1):
            for name, plan in plans.items():
                with plan.session(unet, batch=1, total_steps=20) as session:
                    session.advance(0)
                    start = time.perf_counter()
                    unet(**inputs, return_dict=False)
                    elapsed = time.perf_counter() - start
                if round_index:
                    times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def _print_steps(title: str, unit: str, medians: dict[str, float]) -> None:
    base, with_unit = medians["none"], medians[unit]
    print(f"\n{title}:")
    print("| case | step | ratio |")
    print("| --- | ---: | ---: |")
    print(f"| no unit | {base * 1000:.0f} ms | 1.00 |")
    print(f"| one {unit} unit | {with_unit * 1000:.0f} ms | {with_unit / base:.3f} |")


def _cfg_inputs(size: int, context_width: int) -> dict[str, Any]:
    """A CFG batch (2 rows) of UNet inputs at ``size``², seeded."""
    latent = size // 8
    generator = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(2, 4, latent, latent, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(2, 77, context_width, generator=generator),
    }


def ip_adapter_steps(size: int, rounds: int) -> None:
    unet = sd15_components()["unet"].eval()
    inputs = _cfg_inputs(size, 768)
    plans = {"none": ControlPlan([]), "IP-Adapter": ControlPlan([_ip_unit(unet)])}
    medians = _step_medians(unet, plans, inputs, rounds)
    _print_steps(
        f"IP-Adapter, SD1.5-shaped UNet, CFG batch 2 at {size}² ({rounds} rounds, medians)",
        "IP-Adapter",
        medians,
    )


def lllite_steps(size: int, rounds: int) -> None:
    import json

    from diffusers import UNet2DConditionModel
    from sd15_random import materialise

    from tests.fixtures.lllite_files import lllite_state
    from webui.runtime.controlnet.lllite import build_lllite

    config = json.loads(
        (REPO / "webui" / "runtime" / "configs" / "sdxl" / "unet" / "config.json").read_text()
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = materialise(unet, 0).eval()
    state = lllite_state(unet, embed_dim=32, mlp_dim=64, blocks=("down_blocks", "mid_block"), scale=0.05)
    model = build_lllite(state, "controllllite_v01032064e_sdxl")
    control = SimpleNamespace(model=model, kind="lllite", record=SimpleNamespace(title="bench"))
    unit = ControlUnitInput(control=control, image=bench_picture(size))
    inputs = _cfg_inputs(size, 2048)
    inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.zeros(2, 6)}
    medians = _step_medians(unet, {"none": ControlPlan([]), "LLLite": ControlPlan([unit])}, inputs, rounds)
    modules = len(model.blocks)
    _print_steps(
        f"ControlNet-LLLite ({modules} modules), SDXL-shaped UNet, CFG batch 2 at {size}² ({rounds} rounds, "
        "medians)",
        "LLLite",
        medians,
    )


def clip_h_encoder(folder: Path) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from webui.runtime.controlnet.ip_adapter import load_image_encoder

    config = CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    model = CLIPVisionModelWithProjection(config)
    path = folder / "clip_h.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    del model
    start = time.perf_counter()
    encoder = load_image_encoder(path, torch.float32, "cpu")
    loaded = time.perf_counter() - start
    picture = bench_picture(512)
    encoder.encode([picture], hidden_states=False)  # warm-up
    start = time.perf_counter()
    encoder.encode([picture], hidden_states=False)
    encoded = time.perf_counter() - start
    print(
        f"\nCLIP ViT-H/14 image encoder (632M parameters, fp32): load {loaded:.1f} s, "
        f"one picture {encoded:.2f} s"
    )


def depth_anything(folder: Path, sizes: list[str], runs: int) -> None:
    from tests.fixtures import depth_anything_files as files
    from webui.runtime.controlnet.preprocessors import AnnotatorStore, Preprocessors

    picture = bench_picture(512)
    print("\nDepth Anything (v1 layout, random weights), processing resolution 512:")
    print("| size | file | first load | run (median) |")
    print("| --- | ---: | ---: | ---: |")
    for size in sizes:
        shapes = {"s": files.VITS, "b": files.VITB, "l": files.VITL}[size]
        target = folder / size
        target.mkdir()
        path = files.write_depth_anything_file(target / "depth_anything_vitl14.pth", seed=0, sizes=shapes)
        runner = Preprocessors(AnnotatorStore(target, allow_download=False))
        start = time.perf_counter()
        runner.load("depth_anything")
        load = time.perf_counter() - start
        runner.run("depth_anything", picture, resolution=512)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.run("depth_anything", picture, resolution=512)
            times.append(time.perf_counter() - start)
        mib = path.stat().st_size / 2**20
        print(
            f"| ViT-{size.upper()} | {mib:.0f} MiB | {load:.1f} s | {statistics.median(times):.2f} s |",
            flush=True,
        )
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--depth", default="s,b,l", help="Depth Anything sizes to time (s, b, l; '' for none)"
    )
    parser.add_argument("--skip-encoder", action="store_true")
    parser.add_argument("--lllite", action="store_true", help="only the ControlNet-LLLite step cost")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if args.lllite:
        lllite_steps(args.size, args.rounds)
        return
    ip_adapter_steps(args.size, args.rounds)
    with tempfile.TemporaryDirectory(prefix="easel-bench-") as folder:
        if not args.skip_encoder:
            clip_h_encoder(Path(folder))
        sizes = [s.strip() for s in args.depth.split(",") if s.strip()]
        if sizes:
            depth_anything(Path(folder), sizes, args.runs)


if __name__ == "__main__":
    main()
