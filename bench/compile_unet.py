"""The compiled UNet (option ``easel_compile_unet``) against the eager one, through Easel's txt2img service.

Easel's reference model (``models/Stable-diffusion/easel-reference``), DPM++ 2M, 20 steps, CFG 7, the
same seed: the first compiled job (it compiles), then eager and compiled jobs alternating round by round
(medians), and the largest pixel difference between the two images; then the VAE decode alone (the
option compiles the decoder too), eager and compiled, median of ``--rounds`` + 2. On a CUDA machine add
``--device cuda``; ``bench/gpu.py`` has the SD1.5 and SDXL rows.

    HF_HUB_OFFLINE=1 python bench/compile_unet.py [--size 256] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from webui.container import build_services  # noqa: E402
from webui.domain.generation import Txt2ImgRequest  # noqa: E402
from webui.settings import Settings  # noqa: E402

REFERENCE = REPO / "models" / "Stable-diffusion" / "easel-reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="easel-bench-compile-"))
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (data / "models" / "Stable-diffusion" / REFERENCE.name).symlink_to(REFERENCE)
    services = build_services(Settings(data_dir=data, device=args.device, preload_model=False, nowebui=True))

    def run(compiled: bool) -> tuple[float, np.ndarray]:
        request = Txt2ImgRequest(
            prompt="a red ball on green grass", steps=20, width=args.size, height=args.size, seed=3,
            sampler_name="DPM++ 2M", cfg_scale=7, save_images=False,
            override_settings={"easel_compile_unet": compiled, "samples_save": False},
        )  # fmt: skip
        start = time.perf_counter()
        result = services.generation.txt2img(request)
        seconds = time.perf_counter() - start
        with Image.open(io.BytesIO(result.images[0].png_bytes or b"")) as image:
            return seconds, np.asarray(image.convert("RGB"), dtype=np.int16)

    try:
        run(False)  # loads the model, warms the kernels
        first, _ = run(True)
        eager, compiled = [], []
        for index in range(args.rounds):
            for on in (False, True) if index % 2 == 0 else (True, False):
                seconds, pixels = run(on)
                (compiled if on else eager).append((seconds, pixels))
        e = statistics.median(s for s, _ in eager)
        c = statistics.median(s for s, _ in compiled)
        diff = int(np.abs(eager[0][1] - compiled[0][1]).max())
        print(
            f"reference model {args.size}², 20 steps, {args.device}: first compiled job {first:.1f} s | "
            f"eager {e:.2f} s | compiled {c:.2f} s | time ratio {c / e:.3f} | largest pixel difference {diff}"
        )
        decode_rows(services, args)
    finally:
        services.generation.shutdown()


def decode_rows(services: object, args: argparse.Namespace) -> None:
    """The VAE decode of one latent at the job's size, eager and through the compiled decoder."""
    import torch

    from webui.runtime.compile import compiled_unet
    from webui.runtime.generate import decode_latents

    model = services.generation.engine().cache.active  # type: ignore[attr-defined]
    latent = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(1))
    latent = latent.to(model.vae.device, model.vae.dtype) * model.vae.config.scaling_factor

    def timed() -> float:
        start = time.perf_counter()
        decode_latents(model, latent)
        return time.perf_counter() - start

    eager = [timed() for _ in range(args.rounds + 2)]
    with compiled_unet(model, True, ("decode", args.size)):
        timed()  # compiled already by the jobs above; warms it
        compiled = [timed() for _ in range(args.rounds + 2)]
    e, c = statistics.median(eager), statistics.median(compiled)
    print(
        f"VAE decode {args.size}², {args.device}: eager {e * 1000:.0f} ms | compiled {c * 1000:.0f} ms | "
        f"ratio {c / e:.3f}"
    )


if __name__ == "__main__":
    main()
