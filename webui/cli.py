"""Command line: A1111's flag names and meanings, turned into a ``Settings`` object.

Imports nothing heavy, so ``python app.py --help`` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from webui.settings import Settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage()
        self.exit(2, f"{self.prog}: error: {message}\nRun `python app.py --help` for the list of options.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="app.py",
        description="Easel: a self-hosted Stable Diffusion studio (A1111-compatible flags and API).",
        allow_abbrev=False,
    )
    server = parser.add_argument_group("server")
    server.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 instead of 127.0.0.1")
    server.add_argument("--port", type=int, help="port (default 7860; 7861 with --nowebui)")
    server.add_argument("--api", action="store_true", help="serve the /sdapi/v1 API next to the UI")
    server.add_argument("--nowebui", action="store_true", help="serve the API only")
    server.add_argument(
        "--mcp",
        action="store_true",
        help="serve an MCP server for agents at /mcp/gradio_api/mcp/ (txt2img, img2img, models, PNG info)",
    )
    server.add_argument("--gradio-auth", metavar="USER:PASS[,U2:P2]", help="password-protect the UI")
    server.add_argument(
        "--gradio-auth-path", type=Path, metavar="FILE", help="UI credentials, one user:pass a line"
    )
    server.add_argument("--api-auth", metavar="USER:PASS[,U2:P2]", help="HTTP basic auth on every API route")
    server.add_argument(
        "--auth-split",
        action="store_true",
        help="A1111's behaviour: --gradio-auth guards only the UI, --api-auth only the API (by default "
        "either flag's credentials guard both)",
    )
    server.add_argument(
        "--api-server-stop", action="store_true", help="enable /sdapi/v1/server-stop, -restart and -kill"
    )
    server.add_argument(
        "--cors-allow-origins", metavar="ORIGINS", help="comma-separated origins that may call the API (CORS)"
    )
    server.add_argument(
        "--cors-allow-origins-regex", metavar="REGEX", help="origins matching REGEX may call the API (CORS)"
    )

    paths = parser.add_argument_group("paths")
    paths.add_argument("--data-dir", type=Path, help="root for models/, outputs/, config.json, cache.json")
    paths.add_argument("--ckpt", type=Path, help="checkpoint to load at start")
    paths.add_argument("--ckpt-dir", type=Path, help="checkpoint folder (default models/Stable-diffusion)")
    paths.add_argument("--lora-dir", type=Path, help="LoRA folder (default models/Lora)")
    paths.add_argument("--controlnet-dir", type=Path, help="ControlNet folder (default models/ControlNet)")
    paths.add_argument(
        "--controlnet-annotator-models-path",
        dest="annotators_dir",
        type=Path,
        help="ControlNet preprocessor weights (default models/annotators)",
    )
    paths.add_argument("--vae-dir", type=Path, help="VAE folder (default models/VAE)")
    paths.add_argument("--embeddings-dir", type=Path, help="embeddings folder (default models/embeddings)")

    device = parser.add_argument_group("device and memory")
    device.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    device.add_argument("--use-cpu", nargs="+", metavar="MODULE", help="`all` runs everything on the CPU")
    device.add_argument("--no-half", action="store_true", help="keep weights in float32")
    device.add_argument("--bf16", action="store_true", help="use bfloat16 instead of float16 on CUDA")
    device.add_argument(
        "--precision", choices=["full", "autocast"], default="autocast", help="full implies --no-half"
    )
    device.add_argument(
        "--xformers", action="store_true", help="use xformers attention when installed (CUDA)"
    )
    device.add_argument("--opt-sdp-attention", action="store_true", help="use torch SDPA attention (default)")
    device.add_argument(
        "--memory-mode", choices=["auto", "normal", "medvram", "lowvram"], default="auto",
        help="GPU memory use: auto (default) chooses per job from its estimated need and the free memory",
    )  # fmt: skip
    device.add_argument("--medvram", action="store_true", help="keep only the active model part on the GPU")
    device.add_argument(
        "--lowvram", action="store_true", help="stream weights layer by layer (slow, smallest)"
    )
    device.add_argument("--models-in-ram", type=int, default=2, help="checkpoints kept loaded (default 2)")
    device.add_argument(
        "--no-pinned-ram",
        action="store_true",
        help="keep models that wait in RAM in ordinary (pageable) memory; switching back to them is slower",
    )
    device.add_argument("--no-preload", action="store_true", help="do not load the checkpoint at start")
    device.add_argument(
        "--lora-cache-mb", type=int, default=1024, help="RAM for parsed LoRA files (default 1024)"
    )
    cluster = parser.add_argument_group("many GPU workers (Ray; pip install -r requirements-ray.txt)")
    cluster.add_argument(
        "--ray-address", metavar="ADDRESS",
        help="run jobs on Ray workers: local (a private Ray on this machine), auto or HOST:PORT",
    )  # fmt: skip
    cluster.add_argument("--workers", type=int, help="workers to start (default: one per GPU, else one)")
    cluster.add_argument("--worker-gpus", type=float, help="GPUs per worker (default 1 when there are GPUs)")
    extensions = parser.add_argument_group("extensions")
    extensions.add_argument(
        "--disable-all-extensions", action="store_true", help="load no extension (bundled ones included)"
    )
    extensions.add_argument(
        "--disable-extra-extensions", action="store_true", help="load only the extensions bundled with Easel"
    )
    limits = parser.add_argument_group("limits (per request; see README, Limits)")
    limits.add_argument("--max-image-side", type=int, help="largest width or height asked (default 4096)")
    limits.add_argument(
        "--max-pixels",
        type=int,
        help="largest image made, width x height, hires and upscales included (default 67108864, 8192x8192)",
    )
    limits.add_argument("--max-steps", type=int, help="most sampling steps a pass (default 150)")
    limits.add_argument("--max-batch-size", type=int, help="largest batch size (default 16)")
    limits.add_argument("--max-batch-count", type=int, help="largest batch count (default 100)")
    limits.add_argument("--max-upscale", type=float, help="largest hires / upscale factor (default 8)")
    limits.add_argument("--max-upload-bytes", type=int, help="largest upload file (default 64 MiB)")
    limits.add_argument(
        "--max-upload-pixels",
        type=int,
        help="largest uploaded image, width x height (default 67108864, 8192x8192)",
    )
    return parser


LIMIT_FLAGS = (
    "max_image_side", "max_pixels", "max_steps", "max_batch_size", "max_batch_count", "max_upscale",
    "max_upload_bytes", "max_upload_pixels",
)  # fmt: skip


def namespace_dict(args: argparse.Namespace) -> dict[str, object]:
    """``vars(args)`` with paths as strings, so it serialises to JSON as A1111's cmd-flags does."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def default_cmd_flags() -> dict[str, object]:
    """The flags of a plain ``python app.py`` (for settings not built from a command line)."""
    return namespace_dict(build_parser().parse_args([]))


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, object] = {}
    for name in (
        "ckpt",
        "ckpt_dir",
        "lora_dir",
        "controlnet_dir",
        "annotators_dir",
        "vae_dir",
        "embeddings_dir",
        "port",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.data_dir is not None:
        values["data_dir"] = args.data_dir.resolve()
    device = args.device
    if args.use_cpu and ("all" in args.use_cpu or "sd" in args.use_cpu):
        device = "cpu"
    values["device"] = device
    if args.no_half or args.precision == "full":
        values["precision"] = "full"
    elif args.bf16:
        values["precision"] = "bf16"
    values["attention"] = "xformers" if args.xformers else "sdpa"
    values["memory_mode"] = "lowvram" if args.lowvram else "medvram" if args.medvram else args.memory_mode
    values["models_in_ram"] = args.models_in_ram
    values["pinned_ram"] = not args.no_pinned_ram
    values["lora_cache_mb"] = args.lora_cache_mb
    values["preload_model"] = not args.no_preload
    values["ray_address"] = args.ray_address
    values["workers"] = args.workers
    values["worker_gpus"] = args.worker_gpus
    if args.disable_all_extensions or args.disable_extra_extensions:
        values["disable_extensions"] = "all" if args.disable_all_extensions else "extra"
    for flag in (
        "listen", "api", "nowebui", "gradio_auth", "api_auth", "api_server_stop", "cors_allow_origins",
        "cors_allow_origins_regex", "mcp", "gradio_auth_path", "auth_split",
    ):  # fmt: skip
        values[flag] = getattr(args, flag)
    for limit in LIMIT_FLAGS:  # unset: the EASEL_* variable, else the default
        if getattr(args, limit) is not None:
            values[limit] = getattr(args, limit)
    values["cmd_flags"] = namespace_dict(args)
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:  # a flag out of range: a one-line usage error, not a traceback
        problems = [
            f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}" if error["loc"] else error["msg"]
            for error in exc.errors()
        ]
        parser.error("; ".join(problems))
        raise  # not reached: parser.error exits
