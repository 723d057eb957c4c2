"""``build_services(settings)``: the one place where Easel's objects are created and wired together."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from webui.metadata.image_io import sweep_partial_folders, sweep_temp_files
from webui.services.clip import ClipService
from webui.services.controlnet import ControlNetService
from webui.services.extras import ExtrasService, UpscalerService
from webui.services.faces import FaceRestoreService
from webui.services.generation import GenerationService
from webui.services.history import HistoryService
from webui.services.limits import Limits
from webui.services.limits import install as install_limits
from webui.services.lora import NetworkService
from webui.services.merge import MergeService
from webui.services.models import ModelService
from webui.services.options import OptionsStore
from webui.services.prompts import PromptTokenCounter
from webui.services.styles import StyleStore
from webui.services.training import TrainingService
from webui.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    options: OptionsStore
    models: ModelService
    generation: GenerationService
    networks: NetworkService | None = None
    upscalers: UpscalerService | None = None
    extras: ExtrasService | None = None
    styles: StyleStore | None = None
    controlnet: ControlNetService | None = None
    faces: FaceRestoreService | None = None
    history: HistoryService | None = None
    prompt_tokens: PromptTokenCounter | None = None
    clip: ClipService | None = None
    merge: MergeService | None = None
    training: TrainingService | None = None
    extensions: Any = None  # webui.extensions.manager.ExtensionManager
    extension_host: Any = None  # webui.extensions.host.EaselHost: the Easel facade extensions call

    def preload(self) -> threading.Thread:
        """Load the selected checkpoint in the background so the page is served at once."""

        def run() -> None:
            if self.generation.cluster_factory is not None:  # the workers load models for their jobs
                try:
                    self.generation.cluster()
                except Exception as exc:  # reported in the UI's load status, app keeps running
                    self.models.load_state.error = f"the GPU workers did not start: {exc}"
                    log.error("the GPU workers did not start: %s", exc)
                return
            if self.prompt_tokens is not None:  # counts work before the checkpoint has loaded
                try:
                    self.prompt_tokens.warm_up()
                except Exception as exc:  # the counter tries again at its first count
                    log.warning("prompt token counter not ready: %s", exc)
            try:
                if self.models.default_checkpoint(self.options.get().sd_model_checkpoint) is None:
                    log.warning(self.generation.no_model_message())
                    return
                title = self.generation.load_model(None)
                log.info("model ready: %s", title)
            except Exception as exc:  # reported in the UI's load status, app keeps running
                self.models.load_state.error = str(exc)
                log.error("could not load the checkpoint: %s", exc)

        thread = threading.Thread(target=run, name="easel-preload", daemon=True)
        thread.start()
        return thread


def build_services(settings: Settings, *, engine_factory: Any = None) -> Services:
    for folder in (
        settings.checkpoint_dir,
        settings.lora_path,
        settings.controlnet_path,
        settings.annotators_path,
        settings.vae_path,
        settings.embeddings_path,
        settings.outputs_path,
        settings.clip_path,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    install_limits(Limits.from_settings(settings))  # checked by every entry point's service call
    leftovers = [
        *sweep_temp_files(settings.outputs_path),
        *sweep_temp_files(settings.lora_path),
        *sweep_temp_files(settings.embeddings_path),
        *sweep_temp_files(settings.checkpoint_dir),
    ]
    for leftover in leftovers:  # saves cut short by a crash or kill (images; trained models)
        log.warning("removed %s, the temp file of a save that did not finish", leftover)
    for swept in sweep_partial_folders(settings.checkpoint_dir):  # a DreamBooth folder's save, cut short
        log.warning("cleared %s, left by a checkpoint folder's save that did not finish", swept)
    options = OptionsStore(settings.config_file)
    models = ModelService(settings)
    networks = NetworkService(settings, models.hashes)
    tokenizer_cache = settings.cache_dir / "clip-tokenizer"

    def make_engine() -> Any:
        from webui.runtime.engine import Engine

        return Engine(
            device=settings.device,
            precision=settings.precision,
            attention=settings.attention,
            memory_mode=settings.memory_mode,
            models_in_ram=settings.models_in_ram,
            pinned_ram=settings.pinned_ram,
            tokenizer_cache=tokenizer_cache,
            lora_cache_mb=settings.lora_cache_mb,
        )

    generation = GenerationService(
        models=models,
        options=options,
        engine_factory=engine_factory or make_engine,
        outputs_root=settings.outputs_path,
        networks=networks,
    )
    upscalers = UpscalerService(settings.models_root, settings.checkpoint_dir, generation, tokenizer_cache)
    generation.upscalers = upscalers
    styles = StyleStore(settings.styles_file)
    generation.styles = styles
    # Face restoration runs where generation does, asked on first use only.
    faces = FaceRestoreService(
        settings.models_root,
        options,
        lambda: str(getattr(getattr(generation.engine(), "choice", None), "device", "cpu")),
    )
    generation.faces = faces
    extras = ExtrasService(upscalers, generation, options, settings.outputs_path, faces=faces)
    controlnet = ControlNetService(
        settings.controlnet_path, settings.annotators_path, options, clip_vision_dir=settings.clip_vision_path
    )
    generation.controlnet = controlnet
    if settings.ray_address:  # jobs run on Ray workers; without the flag Ray is never imported
        from webui.runtime.cluster_worker import connect
        from webui.services.cluster import start_cluster

        connect(settings.ray_address)  # here, in the thread that starts Easel (the workers start later)
        generation.cluster_factory = lambda: start_cluster(settings, generation)
    controlnet.progress_text = generation.progress.set_text
    # Preprocessors run where generation does (a GPU when there is one); asked on first use only.
    controlnet.preprocess_device = faces.device
    cache = settings.cache_dir
    history = HistoryService(cache / "history.sqlite3", settings.outputs_path, cache / "history-thumbnails")
    generation.history = history
    clip = ClipService(settings.clip_path, options, tokenizer_cache, cache / "clip-interrogate")
    generation.clip = clip  # best of N and CLIP guidance, through the one CLIP service
    services = Services(
        settings=settings,
        options=options,
        models=models,
        generation=generation,
        networks=networks,
        upscalers=upscalers,
        extras=extras,
        styles=styles,
        controlnet=controlnet,
        faces=faces,
        history=history,
        prompt_tokens=PromptTokenCounter(tokenizer_cache, networks, generation.engine),
        clip=clip,
        merge=MergeService(models),
        training=TrainingService(
            root=cache / "training",
            lora_dir=settings.lora_path,
            embeddings_dir=settings.embeddings_path,
            tokenizer_cache=tokenizer_cache,
            models=models,
            generation=generation,
            networks=networks,
            device=settings.device,
            precision=settings.precision,
            device_memory=lambda: _training_memory(settings.device),
        ),
    )
    from webui.extensions.hooks import HookRunner
    from webui.extensions.host import EaselHost
    from webui.extensions.manager import ExtensionManager

    host = EaselHost(services)
    services.extension_host = host
    services.extensions = ExtensionManager(
        bundled_dir=settings.bundled_extensions_path,
        installed_dir=settings.extensions_path,
        data_root=settings.data_dir / "extensions-data",
        options=options,
        easel=host,
        disable=settings.disable_extensions,
    )
    generation.extension_hooks = HookRunner(services.extensions, host)
    services.extensions.reload()  # an extension that fails is recorded and left out; Easel starts anyway
    from webui.extensions.registrations import connect_registrations

    connect_registrations(services)  # extensions' upscalers join Easel's list
    return services


def _training_memory(device: str) -> tuple[str, int | None]:
    from webui.runtime.devices import training_memory  # torch is imported when a run is checked

    return training_memory(device)
