"""Process settings: paths, device and precision, attention, memory modes, server flags.

One pydantic-settings class, built once from the command line (A1111 flag names, see ``webui.cli``) and
``EASEL_*`` environment variables, then injected. User-changeable options that persist between runs
(selected checkpoint, Clip skip, image format...) live in ``<data-dir>/config.json`` instead; see
``webui.services.options``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="forbid")

    data_dir: Path = REPO_ROOT
    ckpt_dir: Path | None = None
    lora_dir: Path | None = None
    controlnet_dir: Path | None = None
    annotators_dir: Path | None = None  # ControlNet preprocessor weights
    vae_dir: Path | None = None
    embeddings_dir: Path | None = None
    outputs_dir: Path | None = None
    ckpt: Path | None = None  # checkpoint to load at start (A1111 --ckpt)

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["half", "bf16", "full"] = "half"  # half: fp16 on CUDA; always fp32 on CPU
    attention: Literal["sdpa", "xformers"] = "sdpa"
    memory_mode: Literal["auto", "normal", "medvram", "lowvram"] = "auto"
    models_in_ram: int = Field(2, ge=1, le=16)
    pinned_ram: bool = True  # models waiting in RAM are page-locked (CUDA), for a fast switch back
    lora_cache_mb: int = Field(1024, ge=16)  # RAM for parsed LoRA files (least recently used dropped)

    listen: bool = False
    port: int | None = None
    api: bool = False
    nowebui: bool = False
    gradio_auth: str | None = None
    gradio_auth_path: Path | None = None  # a file of user:pass entries (one a line, or comma-separated)
    api_auth: str | None = None
    # A1111's split: --gradio-auth guards only the UI and --api-auth only the REST API. By default the
    # credentials given for either surface guard both (``guard``).
    auth_split: bool = False
    api_server_stop: bool = False
    mcp: bool = False  # serve the MCP server for agents (Gradio's, at /mcp/gradio_api/mcp/)
    cors_allow_origins: str | None = None  # comma-separated origins (A1111 --cors-allow-origins)
    cors_allow_origins_regex: str | None = None
    preload_model: bool = True
    # Many GPU workers on Ray (webui.services.cluster): None (the default) never imports Ray
    ray_address: str | None = None  # "local", "auto" or HOST:PORT
    workers: int | None = Field(None, ge=1, le=256)  # default: one per GPU in the Ray cluster, else one
    worker_gpus: float | None = Field(None, ge=0, le=8)  # GPUs per worker; default 1 when there are GPUs
    # Extensions: "all" loads none (--disable-all-extensions), "extra" only the bundled ones
    # (--disable-extra-extensions)
    disable_extensions: Literal["none", "extra", "all"] = "none"
    # Limits on what one request may ask for (``webui.services.limits``): set here, at start, by the admin;
    # no API client can change them.
    max_image_side: int = Field(4096, ge=64, le=4096)
    max_pixels: int = Field(8192 * 8192, ge=64 * 64)
    max_steps: int = Field(150, ge=1, le=150)
    max_batch_size: int = Field(16, ge=1, le=16)
    max_batch_count: int = Field(100, ge=1, le=100)
    max_upscale: float = Field(8.0, ge=1.0, le=8.0)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(8192 * 8192, ge=64 * 64)
    # The parsed command line as ``vars(argparse.Namespace)``, for /sdapi/v1/cmd-flags; None when the
    # settings were not built from a command line.
    cmd_flags: dict[str, Any] | None = None

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def server_port(self) -> int:
        if self.port is not None:
            return self.port
        return 7861 if self.nowebui else 7860

    @property
    def models_root(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoint_dir(self) -> Path:
        return self.ckpt_dir or self.models_root / "Stable-diffusion"

    @property
    def lora_path(self) -> Path:
        return self.lora_dir or self.models_root / "Lora"

    @property
    def controlnet_path(self) -> Path:
        return self.controlnet_dir or self.models_root / "ControlNet"

    @property
    def annotators_path(self) -> Path:
        return self.annotators_dir or self.models_root / "annotators"

    @property
    def vae_path(self) -> Path:
        return self.vae_dir or self.models_root / "VAE"

    @property
    def embeddings_path(self) -> Path:
        return self.embeddings_dir or self.models_root / "embeddings"

    @property
    def clip_path(self) -> Path:
        return self.models_root / "clip"

    @property
    def clip_vision_path(self) -> Path:
        """CLIP image encoders for IP-Adapters (``clip_h.pth``, ``clip_g.pth`` ...)."""
        return self.models_root / "clip_vision"

    @property
    def outputs_path(self) -> Path:
        return self.outputs_dir or self.data_dir / "outputs"

    @property
    def extensions_path(self) -> Path:
        """Where installed extensions live (the bundled ones' folder when the data dir is the repository)."""
        return self.data_dir / "extensions"

    @property
    def bundled_extensions_path(self) -> Path:
        return REPO_ROOT / "extensions"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def cache_file(self) -> Path:
        return self.data_dir / "cache.json"

    @property
    def styles_file(self) -> Path:
        return self.data_dir / "styles.csv"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def cluster_journal_path(self) -> Path:
        """``--ray-address``: the queue's jobs on disk, taken up again when the front starts (not a cache:
        nothing else holds them)."""
        return self.data_dir / "cluster-queue.sqlite3"

    def credentials(self, which: Literal["gradio", "api"]) -> list[tuple[str, str]]:
        """The flag's own ``user:pass[,user2:pass2]`` entries, as A1111 parses them (``--gradio-auth-path``
        adds its file's entries to the UI's)."""
        raw = self.gradio_auth if which == "gradio" else self.api_auth
        items = (raw or "").split(",")
        if which == "gradio" and self.gradio_auth_path is not None:
            try:
                text = Path(self.gradio_auth_path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"--gradio-auth-path: cannot read {self.gradio_auth_path}: {exc}") from exc
            items += text.replace("\n", ",").split(",")
        pairs: list[tuple[str, str]] = []
        for item in items:
            item = item.strip()
            if not item:
                continue
            user, sep, password = item.partition(":")
            if not sep:
                raise ValueError(f"--{which}-auth expects user:password, got {item!r}")
            pairs.append((user, password))
        return pairs

    def guard(self, surface: Literal["gradio", "api"]) -> list[tuple[str, str]]:
        """The credentials that guard ``surface`` (the UI and its Gradio API, or the REST API, docs and MCP):
        its own flag's, else (unless ``auth_split``) the other flag's, so one flag never leaves the other
        surface open."""
        own = self.credentials(surface)
        if own or self.auth_split:
            return own
        return self.credentials("api" if surface == "gradio" else "gradio")
