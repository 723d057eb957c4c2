"""The generation service: one queue for the UI, the API and extensions.

Jobs run one at a time on a worker thread (model switches are serialised with generations through
the engine lock). Each job reports progress and live previews through ``ProgressState``; interrupt
and skip act on the running job only. Results are saved with A1111 infotext before they are returned,
so nothing a user made exists only in memory.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import date
from pathlib import Path
from typing import Any, cast

from webui.domain.generation import GeneratedImage, GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.domain.memory_plan import JobShape
from webui.domain.models import fp8_applies
from webui.domain.samplers import effective_schedule, resolve_sampler
from webui.metadata.image_io import (
    DISK_FULL_ERRNOS,
    ImageFormat,
    dated_output_dir,
    encode_image,
    save_image_atomic,
)
from webui.metadata.infotext import build_infotext, generation_params
from webui.services import limits
from webui.services.clip_guidance import prepare_clip_guidance
from webui.services.clip_scoring import check_best_of, run_best_of
from webui.services.img2img import ImageModesMixin
from webui.services.models import ModelService
from webui.services.options import OptionsStore
from webui.services.progress import ProgressState, TaskRegistry
from webui.services.refiner import check_refiner_request, prepare_refiner, refiner_infotext, refiner_released

log = logging.getLogger(__name__)

VERSION = "easel-0.1.0"


class NoModelError(RuntimeError):
    """No checkpoint is available to generate with."""


class GenerationFailed(RuntimeError):
    """A job failed; the message is for the user. The service keeps running."""


EngineFactory = Callable[[], Any]

# What the allocators say when memory runs out: torch.OutOfMemoryError (CUDA, MPS), the CPU allocator's
# "can't allocate memory", Python's MemoryError.
_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` says a device or the host ran out of memory."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(phrase in text for phrase in _OOM_PHRASES)


def release_memory() -> None:
    """Return what a failed job left allocated: collect garbage, empty the CUDA cache when torch has one."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class GenerationService(ImageModesMixin):
    def __init__(
        self,
        *,
        models: ModelService,
        options: OptionsStore,
        engine_factory: EngineFactory,
        outputs_root: Path,
        networks: Any = None,
    ) -> None:
        self.models = models
        self.networks = networks  # webui.services.lora.NetworkService (LoRAs, embeddings), optional
        self.styles: Any = None  # webui.services.styles.StyleStore, set by the container
        self.controlnet: Any = None  # webui.services.controlnet.ControlNetService, set by the container
        self.faces: Any = None  # webui.services.faces.FaceRestoreService, set by the container
        self.history: Any = None  # webui.services.history.HistoryService, set by the container
        self.clip: Any = None  # webui.services.clip.ClipService (best of N, guidance), set by the container
        # webui.extensions.hooks.HookRunner: the always-on extensions' hooks around each job (container)
        self.extension_hooks: Any = None
        self._image_hook: Callable[[Any], Any] | None = None  # the running job's extension image hooks
        # --ray-address: txt2img and img2img jobs run on GPU workers (webui.services.cluster), started at
        # first use
        self.cluster_factory: Callable[[], Any] | None = None
        self._cluster: Any = None
        self.options = options
        self._engine_factory = engine_factory
        self._engine: Any = None
        self._engine_lock = threading.Lock()
        self.outputs_root = outputs_root
        self.progress = ProgressState()
        self.tasks = TaskRegistry()
        self._queue: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="easel-generation", daemon=True)
        self._worker.start()

    # -- engine ----------------------------------------------------------------------------------------------
    def engine(self) -> Any:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._engine_factory()
                add_releasable = getattr(self._engine, "add_releasable", None)
                if self.controlnet is not None and add_releasable is not None:
                    add_releasable(self.controlnet.encoder_gpu_bytes, self.controlnet.release_encoders)
            return self._engine

    # -- queue -----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            func, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func())
            except BaseException as exc:
                future.set_exception(exc)

    def submit_call(self, func: Callable[[], Any], task_id: str | None = None) -> Future[Any]:
        """Queue ``func``; with ``task_id`` the job can be followed in ``tasks`` (``/internal/progress``)."""
        future: Future[Any] = Future()
        if task_id:
            tasks = self.tasks
            tasks.queued(task_id)
            inner = func

            def func() -> Any:
                tasks.started(task_id)
                try:
                    return inner()
                finally:
                    tasks.done(task_id)

        self._queue.put((func, future))
        return future

    def pending(self) -> int:
        if self._cluster is not None:
            return int(self._cluster.pending())
        return self._queue.qsize()

    def shutdown(self) -> None:
        self._queue.put(None)

    def submit_txt2img(
        self, request: Txt2ImgRequest, task_id: str | None = None, user: str | None = None
    ) -> Future[GenerationResult]:
        """Queue a txt2img job. ``user`` ("browser:<name>" for the page, "api:<name>" for the REST API) is
        whom the GPU workers' scheduler shares them between (``--ray-address``); the page's jobs go first."""
        limits.active().check_generation(request)  # over a server limit: an error before queueing
        self.check_controlnet_units(request)  # a bad unit fails here, before anything is queued
        check_best_of(self.clip, request)  # best of N without a CLIP model fails here too
        check_refiner_request(self.models, self.options, request)  # so does a refiner that is not there
        if self.cluster_factory is not None:
            return self._submit_to_cluster(request, task_id, user)
        return self.submit_call(lambda: self._run_job(request), task_id)

    # -- many GPU workers (--ray-address) ------------------------------------------------------------------
    def cluster(self) -> Any:
        """The dispatcher over the Ray workers (``webui.services.cluster``), started on first use."""
        with self._engine_lock:
            if self._cluster is None and self.cluster_factory is not None:
                self._cluster = self.cluster_factory()
            return self._cluster

    def _submit_to_cluster(
        self, request: Txt2ImgRequest | Img2ImgRequest, task_id: str | None, user: str | None
    ) -> Future[GenerationResult]:
        interactive = user.startswith("browser:") if user else None
        future: Future[GenerationResult] = self.cluster().submit(
            request, task_id, user=user, interactive=interactive
        )
        if task_id:
            self.tasks.queued(task_id)
            self.tasks.started(task_id)
            future.add_done_callback(lambda _done: self.tasks.done(task_id))
        return future

    def checkpoint_name(self, request: Txt2ImgRequest | Img2ImgRequest) -> str:
        """The file name of the checkpoint ``request`` runs on (what the workers report as loaded); an API
        job's ``override_settings.sd_model_checkpoint`` counts, as it does for the job itself."""
        record = (
            self.models.find(request.checkpoint)
            if request.checkpoint
            else self.models.default_checkpoint(self.job_options(request).sd_model_checkpoint)
        )
        if record is None:
            raise NoModelError(self.no_model_message())
        return str(record.name)

    def will_save(self, request: Txt2ImgRequest | Img2ImgRequest) -> bool:
        """Does ``request`` save its images (the request's flag and the saving option)?"""
        return bool(request.save_images and self.job_options(request).samples_save)

    def save_remote(
        self,
        request: Txt2ImgRequest | Img2ImgRequest,
        result: GenerationResult,
        saved: dict[int, str] | None = None,
        on_saved: Callable[[int, str], None] | None = None,
    ) -> GenerationResult:
        """A worker's images saved on this machine (the front is the only writer of files and of the
        history): numbered into ``outputs/`` as a local job's are, when saving is on. ``saved``: the files
        an earlier run of the front saved for this job (from the cluster's journal); an image is not saved
        twice, even when that run stopped between writing its file and noting it. ``on_saved`` hears of
        each image's file (index, path)."""
        if not self.will_save(request):
            return result
        folder = dated_output_dir(self.outputs_root, request.mode, date.today())
        fmt = cast(ImageFormat, request.samples_format)
        images: list[GeneratedImage] = []
        for index, image in enumerate(result.images):
            data = image.png_bytes or b""
            path = None if saved is None else _saved_before(saved.get(index), folder, image.seed, fmt, data)
            if path is not None and any(path == other.path for other in images):
                path = None  # two images of the job with the same bytes: two files
            if path is None:
                path = str(save_image_atomic(data, folder, image.seed, fmt))
            self.notify_saved(path, image.infotext, _image_size(image.png_bytes))
            if on_saved is not None:
                on_saved(index, path)
            images.append(image.model_copy(update={"path": path}))
        return result.model_copy(update={"images": images})

    def run_now(self, request: Txt2ImgRequest | Img2ImgRequest, user: str | None = None) -> GenerationResult:
        """Run one job at once in the calling thread, for work that already holds the queue (an extension
        script's job runs its jobs this way); anything else uses ``submit_txt2img`` / ``submit_img2img``.
        With GPU workers (``--ray-address``) a worker runs it while this thread waits: the script's cells
        (X/Y/Z plot...) run on the workers and the front makes the grid."""
        if self.cluster_factory is not None:
            if isinstance(request, Img2ImgRequest):
                return self.submit_img2img(request, user=user).result()
            return self.submit_txt2img(request, user=user).result()
        if isinstance(request, Img2ImgRequest):
            return self.run_img2img_now(request)
        limits.active().check_generation(request)
        self.check_controlnet_units(request)
        check_best_of(self.clip, request)
        check_refiner_request(self.models, self.options, request)
        return self._run_job(request)

    def _run_job(self, request: Txt2ImgRequest | Img2ImgRequest) -> GenerationResult:
        """One job: the always-on extensions' process hooks, the job loop, their postprocess hooks."""
        hooks = self.extension_hooks
        if hooks is None:
            return self._run_with_memory_retry(request)
        job = hooks.begin(request)  # a raising hook is reported in job.warnings and left out
        outer, self._image_hook = self._image_hook, job.image  # a hook may itself run a job inline
        try:
            result = self._run_with_memory_retry(self._hooked_inputs(request, job.request))
        finally:
            self._image_hook = outer
        return job.finish(result)

    def _run_with_memory_retry(self, request: Txt2ImgRequest | Img2ImgRequest) -> GenerationResult:
        """Run the job; when the GPU runs out of memory, once more in the next memory mode (normal →
        medvram → lowvram), which then stays for the session, as the result's warning says. A second
        out-of-memory error, or one with no lower mode left, fails with the advice to lower the size."""
        try:
            return self._run_txt2img(request)
        except GenerationFailed as exc:
            if exc.__cause__ is None or not is_out_of_memory(exc.__cause__):
                raise
            step = self.engine().lower_memory_mode()
            if step is None:
                raise
        old, new = step
        try:
            result = self._run_txt2img(request)
        except GenerationFailed as again:
            if again.__cause__ is None or not is_out_of_memory(again.__cause__):
                raise
            raise GenerationFailed(
                f"Out of memory, in {old} mode and again in {new} mode (kept for this session). Lower the "
                "size or batch size, or restart with --lowvram."
            ) from again
        result.warnings.append(
            f"The GPU ran out of memory in {old} mode: the job ran again in {new} mode, which Easel keeps "
            f"until it restarts (start with --{new} to begin there)."
        )
        return result

    def check_controlnet_units(self, request: Txt2ImgRequest | Img2ImgRequest) -> None:
        if self.controlnet is None or not any(unit.enabled for unit in request.controlnet_units):
            return
        opts = self.options.get()
        record = (
            self.models.find(request.checkpoint)
            if request.checkpoint
            else self.models.default_checkpoint(opts.sd_model_checkpoint)
        )
        family = record.family.value if record is not None and record.family is not None else None
        self.controlnet.check_units(request, family)

    def _prepare_control(
        self, engine: Any, model: Any, request: Txt2ImgRequest | Img2ImgRequest, seed: int
    ) -> Any:
        from webui.services.controlnet import PreparedControl

        if self.controlnet is None or not any(unit.is_active for unit in request.controlnet_units):
            if any(unit.is_active for unit in request.controlnet_units):
                return PreparedControl(warnings=["ControlNet is not available; generated without it."])
            return PreparedControl()
        inputs = self._img2img_inputs
        init_mask = None
        if inputs is not None and inputs.mask is not None and isinstance(request, Img2ImgRequest):
            from webui.runtime.masks import prepare_mask

            init_mask = prepare_mask(inputs.mask, invert=bool(request.inpainting_mask_invert), blur=0)
        return self.controlnet.prepare_units(
            engine,
            model,
            request,
            init_image=inputs.images[0] if inputs is not None else None,
            init_mask=init_mask,
            progress=self.progress,
            outputs_root=self.outputs_root,
            seed=seed,
        )

    def txt2img(self, request: Txt2ImgRequest) -> GenerationResult:
        return self.submit_txt2img(request).result()

    def interrupt(self) -> None:
        self.progress.interrupt()

    def skip(self) -> None:
        self.progress.skip()

    # -- model selection -------------------------------------------------------------------------------------
    def load_model(self, alias: str | None = None) -> str:
        """Queue a switch to ``alias`` (or the selected checkpoint); returns the loaded model's title. With
        GPU workers (--ray-address) it only becomes the selected checkpoint: a worker loads it for its job."""
        if self.cluster_factory is not None:
            record = (
                self.models.find(alias)
                if alias
                else self.models.default_checkpoint(self.options.get().sd_model_checkpoint)
            )
            if record is None:
                raise NoModelError(self.no_model_message())
            self.options.update({"sd_model_checkpoint": record.title})
            state = self.models.load_state
            state.loaded_name, state.error = record.title, None
            state.set("Selected for the GPU workers", 1.0)
            return str(record.title)

        def run() -> str:
            opts = self.options.get()
            record = (
                self.models.find(alias) if alias else self.models.default_checkpoint(opts.sd_model_checkpoint)
            )
            if record is None:
                raise NoModelError(self.no_model_message())
            self._activate(record, opts.sd_vae, opts.fp8_storage)
            self.options.update({"sd_model_checkpoint": record.title})
            return record.title

        return self.submit_call(run).result()

    def submit_with_model(self, record: Any, func: Callable[[Any], Any]) -> Future[Any]:
        """Queue ``func(model)`` with checkpoint ``record`` loaded (and made the active one, as a generation
        with it would), for work that reads the model itself, e.g. creating an embedding."""
        opts = self.options.get()
        return self.submit_call(lambda: func(self._activate(record, opts.sd_vae, opts.fp8_storage)))

    def no_model_message(self) -> str:
        return (
            f"No checkpoint found. Put a Stable Diffusion model (.safetensors file or diffusers folder) "
            f"into {self.models.settings.checkpoint_dir}, then press the refresh button next to the "
            "checkpoint list."
        )

    def _activate(
        self, record: Any, vae_option: str | None, fp8_storage: str = "Disable", shape: JobShape | None = None
    ) -> Any:
        """``record`` loaded and made the active model, with the VAE option's VAE and, where option
        ``fp8_storage`` says so for its family, its weights in fp8; placed in the memory mode that ``shape``
        (the job about to run) needs when the mode is automatic."""
        engine = self.engine()
        placing: dict[str, Any] = {"fp8": True} if fp8_applies(fp8_storage, record.family) else {}
        if shape is not None and getattr(engine, "auto", False):
            placing["shape"] = shape
        state = self.models.load_state
        vae_path = self.models.find_vae(vae_option) if vae_option else None
        vae_hash = self.models.hashes.compute("vae", vae_path.name, vae_path)[:10] if vae_path else None
        with engine.lock:
            state.loading, state.error = True, None
            try:
                model = engine.activate(
                    record, vae_path=vae_path, vae_hash=vae_hash, progress=state.set, **placing
                )
            except Exception as exc:
                state.error = str(exc)
                raise
            finally:
                state.loading = False
            state.loaded_name = record.title
            state.set(f"Loaded {record.name}", 1.0)
            return model

    # -- txt2img ---------------------------------------------------------------------------------------------
    # The job loop of every mode (txt2img, hires fix, img2img); ImageModesMixin runs each batch.
    def _run_txt2img(self, request: Txt2ImgRequest | Img2ImgRequest) -> GenerationResult:
        from webui.runtime.engine import DiffusionJob
        from webui.runtime.noise import batch_seeds

        request = self._with_styles(request)
        if request.clip_best_of:  # generate N unsaved, keep the k best by CLIP score (services.clip_scoring)
            return run_best_of(self, request, self._run_txt2img)
        opts = self.job_options(request)
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        record = (
            self.models.find(request.checkpoint)
            if request.checkpoint
            else self.models.default_checkpoint(opts.sd_model_checkpoint)
        )
        if record is None:
            raise NoModelError(self.no_model_message())
        per_batch = self._images_per_batch(request)
        all_seeds, all_subseeds = batch_seeds(
            request.seed, request.subseed, request.n_iter, per_batch, request.subseed_strength
        )
        seed, subseed = all_seeds[0], all_subseeds[0]
        canonical = request.model_copy(
            update={
                "sampler_name": sampler.name,
                "scheduler": effective_schedule(sampler, schedule).label,
                "seed": seed,
                "subseed": subseed,
            }
        )
        # Eta is DDIM's knob (A1111 option eta_ddim); the other samplers use their fixed value.
        eta = (request.eta if request.eta is not None else opts.eta_ddim) if sampler.name == "DDIM" else None
        progress = self.progress
        progress.begin(request.mode, request.n_iter, self._steps_per_batch(request))
        images: list[GeneratedImage] = []
        first_passes: list[GeneratedImage] = []  # hires first passes kept (save_images_before_highres_fix)
        interrupted = False
        face_model: str | None = None  # the face restorer that ran, for the API's info
        compiling: Any = None  # webui.runtime.compile.CompileState when option easel_compile_unet is on
        try:
            progress.set_text("Loading model")
            vae_option = request.vae if request.vae is not None else opts.sd_vae
            engine = self.engine()
            plan_before = getattr(engine, "memory_plan", None)
            shape = job_shape(request, per_batch)  # sizes the memory plan, and keys the compiled graphs
            model = self._activate(record, vae_option, opts.fp8_storage, shape)
            memory_note = memory_choice_note(engine, plan_before)
            model_hash = self.models.ensure_hash(record)[:10] if record.format.value != "diffusers" else None
            preview_every = opts.show_progress_every_n_steps if opts.live_previews_enable else -1
            with (
                engine.lock,
                self._tiling(engine, model, request.tiling),
                refiner_released(engine),
                contextlib.ExitStack() as job_scope,
            ):
                job_extra, infotext_extra, warnings = self._prepare_networks(engine, model, request)
                refiner = prepare_refiner(self, engine, model, request, opts, warnings)
                layout = getattr(engine, "memory_layout", None)
                if layout is not None:
                    layout(model, opts.easel_channels_last)
                    if refiner is not None:
                        layout(refiner.model, opts.easel_channels_last)
                if refiner is not None:
                    job_extra["refiner"] = refiner
                    job_scope.enter_context(self._tiling(engine, refiner.model, request.tiling))
                control = self._prepare_control(engine, model, request, seed)
                if control.plan:
                    job_extra["control"] = control.plan
                if control.inpaint is not None:
                    job_extra["control_inpaint"] = control.inpaint
                infotext_extra = {**control.infotext, **infotext_extra}  # A1111: script keys first
                guidance = prepare_clip_guidance(self.clip, request)
                job_extra.update(guidance.job_extra)
                infotext_extra.update(guidance.infotext)
                warnings.extend(control.warnings)
                if memory_note:
                    warnings.append(memory_note)
                restorer = self._face_restorer(request, warnings)
                if request.tiling:
                    infotext_extra = {**infotext_extra, "Tiling": True}
                if getattr(model, "fp8", False):
                    infotext_extra = {**infotext_extra, "FP8 weight": opts.fp8_storage}
                compile_unet = opts.easel_compile_unet
                if compile_unet and control.plan and any(unit.is_hooked for unit in control.plan.units):
                    # a compiled graph would not see hooks added inside the UNet (nor drop them later)
                    compile_unet = False
                    warnings.append(
                        "The UNet ran without compiling for this job: its IP-Adapter / LLLite units work "
                        "inside the UNet's layers."
                    )
                compiling = job_scope.enter_context(
                    self._compiled(engine, model, compile_unet, shape, opts.easel_cuda_graphs)
                )
                for iteration in range(request.n_iter):
                    base = iteration * per_batch
                    seeds = all_seeds[base : base + per_batch]
                    subseeds = all_subseeds[base : base + per_batch]
                    job = DiffusionJob(
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt,
                        steps=request.steps,
                        cfg_scale=request.cfg_scale,
                        width=request.width,
                        height=request.height,
                        seeds=seeds,
                        subseeds=subseeds,
                        subseed_strength=request.subseed_strength,
                        sampler=sampler,
                        schedule=schedule,
                        clip_skip=request.clip_skip,
                        randn_source=request.randn_source.value,
                        eta=eta,
                        extra=dict(job_extra),
                        seed_resize_from=request.seed_resize_from,
                    )
                    batch_text = f"Batch {iteration + 1} of {request.n_iter}"
                    compile_wait = iteration == 0 and compiling is not None and compiling.new_shape
                    progress.set_text(
                        "Compiling the UNet for this size (once per size)" if compile_wait else batch_text
                    )

                    def on_step(
                        step: int,
                        total: int,
                        latents: Any,
                        compile_wait: bool = compile_wait,
                        batch_text: str = batch_text,
                    ) -> bool:
                        if compile_wait and step == 1:  # the first step ran: the compile is done
                            progress.set_text(batch_text)
                        progress.step(step, total)
                        if preview_every > 0 and (step % preview_every == 0) and step < total:
                            try:
                                progress.set_preview(engine.preview(latents, model), step)
                            except Exception:  # a preview must never break a generation
                                log.debug("preview failed", exc_info=True)
                        return not (progress.interrupted or progress.skipped)

                    batch_images, _stopped = self._generate_batch(engine, model, job, canonical, on_step)
                    batch_extra = {**infotext_extra, **refiner_infotext(refiner, request, opts)}
                    kept = job.extra.pop("first_pass_images", None) or []
                    restored_by = None
                    if restorer is not None:
                        progress.set_text("Restoring faces")
                        batch_images, restored_by = self._restore_faces(batch_images, restorer, warnings)
                        restorer = restored_by  # one that failed is not tried again
                        face_model = face_model or restored_by

                    def finish(
                        made: list[Any],
                        face: str | None = None,
                        seeds: list[int] = seeds,
                        subseeds: list[int] = subseeds,
                        batch_extra: dict[str, object] = batch_extra,
                    ) -> list[GeneratedImage]:
                        return [
                            self._finish_image(canonical, image, seeds[i], subseeds[i], record, model,
                                               model_hash, extra=batch_extra, face_restoration=face)
                            for i, image in enumerate(made)
                        ]  # fmt: skip

                    images += finish(batch_images, restored_by)
                    if opts.save_images_before_highres_fix:  # hires first passes, kept as well
                        first_passes += finish(kept)
                    if progress.interrupted:
                        interrupted = True
                        break
                    progress.next_batch()
        except Exception as exc:
            if type(exc).__name__ in (
                "ModelLoadError",
                "ModelFileError",
                "GenerationError",
                "NoModelError",
                "ModelNotFoundError",
                "LoraTagError",
                "ImageInputError",
                "UpscalerError",
                "UnknownUpscalerError",
                "ControlNetInputError",
                "ControlError",
                "ControlNetLoadError",
                "AnnotatorWeightsMissing",
                "UnknownPreprocessorError",
                "ClipGuidanceUnavailable",
                "ClipGuidanceError",
                "SamplerUnavailableError",
            ):
                raise
            if type(exc).__name__ == "LoraMemoryError":  # LoRA backups would not fit in RAM: say so
                raise GenerationFailed(str(exc)) from exc
            if is_out_of_memory(exc):
                release_memory()  # what the failed job held, so the next job starts with it free
                raise GenerationFailed(
                    "Out of memory. Lower the size or batch size, or restart with --medvram / --lowvram."
                ) from exc
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                raise GenerationFailed(
                    f"The disk is full: the image could not be saved in {exc.filename or self.outputs_root}. "
                    "Free some space there and generate again (no partial file was left)."
                ) from exc
            log.exception("generation failed")
            raise GenerationFailed(f"Generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            progress.end()
        if compiling is not None and compiling.failure:
            warnings.append(
                f"Compiling the {compiling.failed_part} failed ({compiling.failure}); this model's "
                f"{compiling.failed_part} runs without compiling until it is loaded again."
            )
        return GenerationResult(
            request=canonical,
            images=images + first_passes,
            model_name=record.model_name,
            model_hash=model_hash,
            vae_name=model.vae_name,
            vae_hash=model.vae_hash,
            interrupted=interrupted,
            job_timestamp=progress.job_timestamp,
            version=VERSION,
            warnings=warnings,
            detected_maps=control.maps,
            face_restoration_model=face_model,
        )

    def job_options(self, request: Txt2ImgRequest | Img2ImgRequest) -> Any:
        """The options with the request's ``override_settings`` applied (config.json is untouched)."""
        opts = self.options.get()
        if not request.override_settings:
            return opts
        return type(opts).model_validate({**opts.model_dump(), **request.override_settings})

    def _with_styles(self, request: Any) -> Any:
        """The request with its ``styles`` applied to the prompts (``UnknownStyleError``: unknown name)."""
        if not request.styles or self.styles is None:
            return request
        prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        return request.model_copy(update={"prompt": prompt, "negative_prompt": negative})

    @staticmethod
    def _tiling(engine: Any, model: Any, enabled: bool) -> Any:
        tiling = getattr(engine, "tiling", None)
        if not enabled or tiling is None:
            return contextlib.nullcontext()
        return tiling(model, enabled)

    @staticmethod
    def _compiled(engine: Any, model: Any, enabled: bool, shape: Any, cuda_graphs: bool) -> Any:
        compiled_unet = getattr(engine, "compiled_unet", None)
        if not enabled or compiled_unet is None:
            return contextlib.nullcontext()
        return compiled_unet(model, enabled, shape, cuda_graphs)

    def _face_restorer(self, request: Txt2ImgRequest | Img2ImgRequest, warnings: list[str]) -> str | None:
        """The face restorer to run on this job's images, or None (with a warning if one was asked for)."""
        if not request.restore_faces:
            return None
        if self.faces is None:
            warnings.append("Face restoration is not available in this setup; the images are not restored.")
            return None
        opts = self.job_options(request)
        try:
            return str(self.faces.choose(option=opts.face_restoration_model).name)
        except ValueError as exc:  # nothing installed, or not the one the option names
            warnings.append(f"{exc} The images are not restored.")
            return None

    def _restore_faces(
        self, images: list[Any], name: str, warnings: list[str]
    ) -> tuple[list[Any], str | None]:
        """``images`` with their faces restored; on failure the images as they are and a warning, so a
        generated picture is never lost to a broken restorer file."""
        try:
            return [self.faces.restore(image, name)[0] for image in images], name
        except Exception as exc:
            log.warning("face restoration failed: %s", exc)
            warnings.append(f"Face restoration failed ({exc}); the images are not restored.")
            return images, None

    def _prepare_networks(
        self, engine: Any, model: Any, request: Txt2ImgRequest | Img2ImgRequest
    ) -> tuple[dict[str, Any], dict[str, object], list[str]]:
        """Apply the prompt's LoRAs to ``model`` (caller holds the engine lock) and pick its embeddings.

        Returns the job's extra inputs, the infotext extras (``Lora hashes``, ``TI hashes``) and the
        warnings for the user. Without LoRA tags the model is restored to its own weights.
        """
        if self.networks is None:
            return {}, {}, []
        resolved = self.networks.resolve(request.prompt, request.negative_prompt)  # LoraTagError: bad tag
        warnings = list(resolved.warnings)
        applied: dict[str, tuple[int, int]] | None = {}
        apply = getattr(engine, "apply_loras", None)
        if apply is not None:
            report = apply(model, resolved.loras)
            applied = report.applied
            warnings.extend(report.warnings)
        elif resolved.loras:
            warnings.append("This engine cannot apply LoRAs; generated without them.")
        job_extra: dict[str, Any] = {}
        used: list[str] = []
        tables_for = getattr(engine, "embedding_tables", None)
        if resolved.embeddings and tables_for is not None:
            tables, used, embedding_warnings = tables_for(model, resolved.embedding_files())
            warnings.extend(embedding_warnings)
            if used:
                job_extra["embeddings"] = tables
        for warning in warnings:
            log.warning("%s", warning)
        return job_extra, self.networks.infotext_extra(resolved, applied, used), warnings

    def notify_saved(self, path: str, infotext: str | None, size: tuple[int, int]) -> None:
        """Add a just-saved image to the history index; a failure there is logged, never the job's."""
        if self.history is None:
            return
        try:
            self.history.add_saved(path, infotext, size)
        except Exception as exc:
            log.warning("could not add %s to the history: %s", path, exc)

    def _finish_image(
        self,
        request: Txt2ImgRequest | Img2ImgRequest,
        image: Any,
        seed: int,
        subseed: int,
        record: Any,
        model: Any,
        model_hash: str | None,
        extra: dict[str, object] | None = None,
        face_restoration: str | None = None,
    ) -> GeneratedImage:
        opts = self.job_options(request)
        if self._image_hook is not None:
            image = self._image_hook(image)
        params = generation_params(
            request,
            seed=seed,
            subseed=subseed,
            model_name=record.model_name if opts.add_model_name_to_info else None,
            model_hash=model_hash if opts.add_model_hash_to_info else None,
            vae_name=Path(model.vae_name).stem if model.vae_name else None,
            vae_hash=model.vae_hash,
            version=VERSION if opts.add_version_to_infotext else None,
            extra=self._mode_extra(request, extra),
            face_restoration=face_restoration,
        )
        for key, value in request.extra_infotext.items():  # extensions' fields, after Easel's own
            params.setdefault(key, value)
        infotext = build_infotext(request.prompt, request.negative_prompt, params)
        fmt = cast(ImageFormat, request.samples_format)
        data = encode_image(image, infotext if opts.enable_pnginfo else None, fmt, quality=opts.jpeg_quality)
        path = None
        if request.save_images and opts.samples_save:
            folder = dated_output_dir(self.outputs_root, request.mode, date.today())
            path = str(save_image_atomic(data, folder, seed, fmt))
            self.notify_saved(path, infotext, image.size)
        return GeneratedImage(
            seed=seed,
            subseed=subseed,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            infotext=infotext,
            path=path,
            png_bytes=data,
        )


def job_shape(request: Txt2ImgRequest | Img2ImgRequest, per_batch: int) -> JobShape:
    """What sizes the job's GPU memory: its largest pass (the hires one when there is one), images per
    batch, CFG and ControlNet units. The engine adds what the loaded model tells (family, precision)."""
    from webui.domain.img2img import hires_target_size

    width, height = request.width, request.height
    if getattr(request, "enable_hr", False):
        hr = cast(Txt2ImgRequest, request)
        width, height, _crop = hires_target_size(width, height, hr.hr_scale, hr.hr_resize_x, hr.hr_resize_y)
    return JobShape(
        family="",
        width=width,
        height=height,
        batch=per_batch,
        cfg=request.cfg_scale != 1,
        controlnets=sum(1 for unit in request.controlnet_units if unit.is_active),
    )


def memory_choice_note(engine: Any, before: Any) -> str | None:
    """The automatic memory mode's choice for the job when it differs from the last job's plan (``before``;
    the first job's when it is not the whole model on the GPU): a line for the job's messages, with the
    estimate and free memory behind it; ``None`` otherwise."""
    plan = getattr(engine, "memory_plan", None)
    if not getattr(engine, "auto", False) or plan is None or plan is before:
        return None
    if plan.mode == (before.mode if before is not None else "normal"):
        return None
    return cast(str, plan.line())


def _image_size(data: bytes | None) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data or b"")) as image:
        return image.size


def _saved_before(path: str | None, folder: Path, seed: int, ext: str, data: bytes) -> str | None:
    """The file an earlier run of the front saved for an image (``path``, from the cluster's journal, or
    one it wrote without noting it: a file in ``folder`` named for the image's seed, with its bytes)."""
    candidates = [Path(path)] if path else sorted(folder.glob(f"[0-9]*-{seed}.{ext.lower().lstrip('.')}"))
    for candidate in candidates:
        try:
            if candidate.stat().st_size == len(data) and candidate.read_bytes() == data:
                return str(candidate)
        except OSError:
            continue
    return None
