"""Training runs: the dataset staged, checked before anything loads, trained in a child process, followed.

A run goes through the generation queue, so while it holds the device the generation requests wait behind
it (the progress says "Training <name>: step s/t"), and it never runs beside another job. The trainer is
``python -m webui.training.worker`` (protocol in its docstring): Cancel kills it, which frees all it used,
and a crash there fails the run with its message while Easel keeps serving. A run's folder,
``<data dir>/cache/training/<id>/``, holds ``run.json`` (settings and state, read back at the next start),
the uploaded ``dataset/``, the ``samples/`` and the trainer's ``log.txt``.

When a LoRA is saved, Easel's LoRA list is refreshed and an A1111 sidecar ``<name>.json`` (activation text:
the trigger word; preferred weight 1) is written beside it, with the run's settings in
``<name>.training.json`` so the run can be repeated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import IO, Any

from webui.domain.models import CheckpointRecord, ModelFamily
from webui.domain.training import TRAIN_OPTIMIZERS, TRAIN_SCHEDULES, RunState, TrainSettings
from webui.registry.scanner import EMBEDDING_EXTENSIONS
from webui.services.training_data import (
    DatasetSummary,
    MemoryCheck,
    TrainingRequestError,
    Upload,
    decode_image,
    stage_dataset,
    summarize_dataset,
)
from webui.services.training_runs import RunNotFoundError, TrainingRun
from webui.training.memory import MemoryEstimate, checkpoint_sizes, does_not_fit, estimate

__all__ = [
    "DatasetSummary",
    "MemoryCheck",
    "RunNotFoundError",
    "TrainingRequestError",
    "TrainingRun",
    "TrainingService",
    "Upload",
    "decode_image",
]

log = logging.getLogger(__name__)

TRAINABLE = (ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
_RUN_ID = re.compile(r"^[0-9a-f]{12}$")


def optimizer_problems(device: str) -> dict[str, str | None]:
    """Each optimizer → why it cannot be used with ``--device`` ``device`` (``None``: usable), without
    importing torch: 8-bit AdamW needs bitsandbytes and a CUDA GPU; AdamW and Adafactor work everywhere."""
    import importlib.util

    eight_bit: str | None = None
    if importlib.util.find_spec("bitsandbytes") is None:
        eight_bit = "needs the bitsandbytes package (pip install bitsandbytes) and a CUDA GPU"
    elif device in ("cpu", "mps"):
        eight_bit = "needs a CUDA GPU"
    return {"AdamW": None, "AdamW8bit": eight_bit, "Adafactor": None}


_WHAT_IS_SAVED = {"lora": "LoRA file", "embedding": "embedding file", "dreambooth": "checkpoint"}


class TrainingService:
    def __init__(
        self,
        *,
        root: Path,
        lora_dir: Path,
        tokenizer_cache: Path,
        embeddings_dir: Path | None = None,
        models: Any,  # webui.services.models.ModelService
        generation: Any,  # webui.services.generation.GenerationService: its queue and progress
        networks: Any = None,  # webui.services.lora.NetworkService: refreshed when a LoRA is saved
        device: str = "auto",
        precision: str = "half",
        worker_command: list[str] | None = None,
        device_memory: Callable[[], tuple[str, int | None]] | None = None,
    ) -> None:
        self.root = root
        self.lora_dir = lora_dir
        self.embeddings_dir = embeddings_dir or lora_dir.parent / "embeddings"
        self.tokenizer_cache = tokenizer_cache
        self.models = models
        self.generation = generation
        self.networks = networks
        self.device = device
        self.precision = precision
        self.worker_command = worker_command or [sys.executable, "-m", "webui.training.worker"]
        # () -> (device, bytes a run may use there): the pre-flight's memory check (None: not checked)
        self.device_memory = device_memory
        self.on_saved: list[Callable[[TrainingRun], None]] = []  # e.g. the UI's LoRA list
        self._runs: dict[str, TrainingRun] = {}
        self._lock = threading.RLock()
        self._load_runs()

    # -- runs on disk ---------------------------------------------------------------------------------------
    def _load_runs(self) -> None:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*/run.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                run = TrainingRun(
                    id=data["id"],
                    settings=TrainSettings.model_validate(data["settings"]),
                    model_title=data["model"],
                    family=data.get("family", ""),
                    run_dir=path.parent,
                    dataset_dir=Path(data.get("dataset_dir") or path.parent / "dataset"),
                    state=RunState(data["state"]),
                    created=float(data.get("created") or 0),
                    started=data.get("started"),
                    finished=data.get("finished"),
                    step=int(data.get("step") or 0),
                    total=int(data.get("total") or 0),
                    losses=[float(x) for x in data.get("loss") or []],
                    eval_losses=[(int(step), float(loss)) for step, loss in data.get("eval_loss") or []],
                    learning_rate=data.get("learning_rate"),
                    elapsed=float(data.get("elapsed") or 0),
                    samples=list(data.get("samples") or []),
                    result=data.get("result"),
                    error=data.get("error"),
                    summary=dict(data.get("dataset") or {}),
                    peak_memory=data.get("peak_memory"),
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring the training run in %s: %s", path.parent, exc)
                continue
            if not run.state.finished:  # the server stopped while it was queued or running
                run.state = RunState.FAILED
                run.error = "Easel stopped before this run finished; start it again"
                run.finished = run.finished or time.time()
                self._save(run)
            self._runs[run.id] = run

    def _save(self, run: TrainingRun) -> None:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        temp = run.run_dir / "run.json.tmp"
        temp.write_text(json.dumps(run.record(), indent=1), encoding="utf-8")
        os.replace(temp, run.run_dir / "run.json")

    # -- lookup ---------------------------------------------------------------------------------------------
    def list(self) -> list[TrainingRun]:
        with self._lock:
            return sorted(self._runs.values(), key=lambda run: run.created, reverse=True)

    def get(self, run_id: str) -> TrainingRun:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    def sample_path(self, run_id: str, file_name: str) -> Path:
        """A sample image of a run (``FileNotFoundError`` for a name that is not one of its samples)."""
        run = self.get(run_id)
        for sample in run.samples:
            for path in sample["paths"]:
                if Path(path).name == file_name and Path(path).is_file():
                    return Path(path)
        raise FileNotFoundError(f"run {run_id} has no sample {file_name!r}")

    def wait(self, run_id: str, timeout: float | None = None) -> TrainingRun:
        """Block until run ``run_id`` has finished (done, stopped, failed or cancelled) or ``timeout`` seconds
        have passed; return it. The run's state is final when its queued job ends (``_execute`` sets it)."""
        run = self.get(run_id)
        if run._future is not None and not run.state.finished:
            with contextlib.suppress(CancelledError, TimeoutError):
                run._future.result(timeout=timeout)
        return run

    def active(self) -> TrainingRun | None:
        with self._lock:
            return next((run for run in self._runs.values() if run.state is RunState.RUNNING), None)

    # -- checks ---------------------------------------------------------------------------------------------
    def checkpoint(self, model: str | None) -> CheckpointRecord:
        if model:
            try:
                record: CheckpointRecord = self.models.find(model)
            except Exception as exc:
                raise TrainingRequestError(str(exc)) from exc
        else:
            selected = self.generation.options.get().sd_model_checkpoint
            found = self.models.default_checkpoint(selected)
            if found is None:
                raise TrainingRequestError(self.generation.no_model_message())
            record = found
        if record.family not in TRAINABLE:
            family = record.family.label if record.family else "an unidentified model"
            raise TrainingRequestError(
                f"{record.name} is {family}; LoRA training needs an SD 1.x, SD 2.x or SDXL checkpoint "
                "(choose one in the checkpoint list)"
            )
        return record

    def default_resolution(self, record: CheckpointRecord) -> int:
        from webui.services.model_defaults import checkpoint_defaults

        values = checkpoint_defaults(record).values
        side = min(values.width or 512, values.height or 512)
        return max(64, side // 64 * 64)

    def output_dir(self, method: str) -> Path:
        if method == "dreambooth":
            return Path(self.models.settings.checkpoint_dir)
        return self.embeddings_dir if method == "embedding" else self.lora_dir

    def embedding_file(self, name: str) -> Path:
        """The file of embedding ``name`` in ``models/embeddings`` (:class:`TrainingRequestError` if none)."""
        for suffix in EMBEDDING_EXTENSIONS:
            path = self.embeddings_dir / f"{name}{suffix}"
            if path.is_file():
                return path
        raise TrainingRequestError(
            f"there is no embedding {name!r} in {self.embeddings_dir}; create it first or check the name"
        )

    def create_embedding(
        self,
        name: str,
        *,
        vectors: int = 1,
        init_text: str = "*",
        overwrite: bool = False,
        model: str | None = None,
    ) -> Path:
        """A1111's "Create embedding": ``models/embeddings/<name>.safetensors`` whose ``vectors`` start as
        the token embeddings of ``init_text`` in the checkpoint ``model`` (the selected one by default),
        ready to be trained on (:meth:`start` with ``init_from``). With ``overwrite`` an existing ``<name>``
        is moved to ``cache/training/replaced/`` first; without, it is an error."""
        self.check_name(name, method="embedding", replacing=True)
        if not 1 <= vectors <= 75:
            raise TrainingRequestError(f"an embedding has 1 to 75 vectors per token (got {vectors})")
        existing = [self.embeddings_dir / f"{name}{x}" for x in EMBEDDING_EXTENSIONS]
        existing = [path for path in existing if path.exists()]
        if existing and not overwrite:
            raise TrainingRequestError(
                f"{existing[0].name} already exists in {self.embeddings_dir}; choose another name, or "
                "overwrite it (the old file is kept in the cache folder)"
            )
        record = self.checkpoint(model)
        target = self.embeddings_dir / f"{name}.safetensors"

        def make(loaded: Any) -> Path:
            from webui.metadata.image_io import save_new_file
            from webui.training.embedding import embedding_file_bytes, starting_vectors

            data = embedding_file_bytes(
                loaded, starting_vectors(loaded, init_text, vectors),
                {"name": name, "step": "0", "sd_checkpoint": record.short_hash or "",
                 "sd_checkpoint_name": record.name, "init_text": init_text, "trained_in": "Easel"},
            )  # fmt: skip
            if existing:
                keep = self.root / "replaced" / time.strftime("%Y%m%d-%H%M%S")
                keep.mkdir(parents=True, exist_ok=True)
                for path in existing:
                    path.replace(keep / path.name)
                log.info("embedding %s replaced; the previous file is in %s", name, keep)
            self.embeddings_dir.mkdir(parents=True, exist_ok=True)
            save_new_file(data, target)
            return target

        path: Path = self.generation.submit_with_model(record, make).result()
        if self.networks is not None:
            try:
                self.networks.refresh_embeddings()
            except Exception as exc:  # written; the list catches up at the next refresh
                log.warning("could not refresh the embeddings after creating %s: %s", name, exc)
        return path

    def check_name(
        self, name: str, *, exclude: str | None = None, method: str = "lora", replacing: bool = False
    ) -> None:
        """``name`` can be written (``replacing``: an embedding trained on from its own file may exist)."""
        if not _NAME.match(name or "") or name.strip() != name:
            raise TrainingRequestError(
                f"the name {name!r} cannot be a {_WHAT_IS_SAVED.get(method, 'file')} name: use letters, "
                "digits, spaces, '.', '-' or '_' (up to 100, starting with a letter or digit)"
            )
        folder = self.output_dir(method)
        suffixes = {"embedding": EMBEDDING_EXTENSIONS, "dreambooth": (".safetensors", ".ckpt", "")}.get(
            method, (".safetensors",)
        )  # a checkpoint's name is also taken by a diffusers folder of that name
        taken = next((folder / f"{name}{x}" for x in suffixes if (folder / f"{name}{x}").exists()), None)
        if taken is not None and not replacing:
            raise TrainingRequestError(
                f"the name {name!r} is taken: {taken.name} already exists in {folder}; choose another name "
                "(nothing is overwritten)"
            )
        with self._lock:
            for run in self._runs.values():
                if run.id != exclude and run.name == name and not run.state.finished:
                    raise TrainingRequestError(
                        f"run {run.id} is already training {name!r}; choose another name"
                    )

    def check_settings(self, settings: TrainSettings) -> None:
        if settings.schedule not in TRAIN_SCHEDULES:
            raise TrainingRequestError(
                f"unknown schedule {settings.schedule!r}; choose one of {', '.join(TRAIN_SCHEDULES)}"
            )
        if settings.optimizer not in TRAIN_OPTIMIZERS:
            raise TrainingRequestError(
                f"unknown optimizer {settings.optimizer!r}; choose one of {', '.join(TRAIN_OPTIMIZERS)}"
            )
        if settings.resolution is not None and settings.resolution % 64:
            raise TrainingRequestError(f"the resolution must be a multiple of 64 (got {settings.resolution})")
        if settings.warmup_steps >= settings.steps and settings.schedule != "constant":
            raise TrainingRequestError(
                f"{settings.warmup_steps} warm-up steps leave nothing of the {settings.steps} steps to train"
            )

    def memory_check(
        self, record: CheckpointRecord, settings: TrainSettings, resolution: int
    ) -> MemoryCheck | None:
        """What a run of ``settings`` on ``record`` needs against what the device has, from the checkpoint's
        tensor shapes (nothing is loaded); ``None`` when either is unknown (a ``.ckpt``, no device probe)."""
        if self.device_memory is None:
            return None
        sizes = checkpoint_sizes(Path(record.path))
        if sizes is None:
            return None
        device, available = self.device_memory()
        text = settings.train_text_encoder
        if text is None:
            text = record.family is not ModelFamily.SDXL and settings.method == "lora"

        def needs(checkpointing: bool) -> MemoryEstimate:
            return estimate(
                settings.method, sizes, resolution=resolution, batch_size=settings.batch_size,
                optimizer=settings.optimizer, gradient_checkpointing=checkpointing, train_text_encoder=text,
                rank=settings.rank, weight_bytes=4 if device == "cpu" or settings.precision == "fp32" else 2,
                sdxl=record.family is ModelFamily.SDXL,
            )  # fmt: skip

        return MemoryCheck(
            settings.method, device, available, needs(settings.gradient_checkpointing), needs(True),
            settings.gradient_checkpointing,
        )  # fmt: skip

    def summarize(
        self,
        folder: Path,
        settings: TrainSettings,
        resolution: int,
        record: CheckpointRecord | None = None,
    ) -> DatasetSummary:
        """The pre-flight of ``folder`` (:func:`summarize_dataset`); with ``record``, also the memory the run
        needs against what the device has."""
        memory = self.memory_check(record, settings, resolution) if record is not None else None
        return summarize_dataset(folder, settings, resolution, memory)

    # -- datasets -------------------------------------------------------------------------------------------
    def new_run_dir(self) -> tuple[str, Path]:
        run_id = secrets.token_hex(6)
        run_dir = self.root / run_id
        (run_dir / "dataset").mkdir(parents=True)
        return run_id, run_dir

    def discard_staged(self, run_id: str) -> None:
        """Remove an upload staged by :meth:`new_run_dir` that no run used."""
        with self._lock:
            if run_id in self._runs or not _RUN_ID.match(run_id or ""):
                return
        shutil.rmtree(self.root / run_id, ignore_errors=True)

    def stage(self, dataset_dir: Path, uploads: Iterable[Upload] = (), zips: Iterable[Path] = ()) -> None:
        """Put ``uploads`` and the contents of ``zips`` into ``dataset_dir`` (:func:`stage_dataset`)."""
        stage_dataset(dataset_dir, uploads, zips)

    # -- running --------------------------------------------------------------------------------------------
    def start(
        self,
        settings: TrainSettings,
        *,
        folder: Path | None = None,
        uploads: Iterable[Upload] = (),
        zips: Iterable[Path] = (),
        staged: tuple[str, Path] | None = None,
    ) -> TrainingRun:
        """Check the request, stage its dataset and queue the run.

        :class:`TrainingRequestError` when it cannot start (nothing is left behind then)."""
        self.check_settings(settings)
        record = self.checkpoint(settings.model)
        replacing = False
        if settings.init_from:
            if settings.method != "embedding":
                raise TrainingRequestError("init_from continues an embedding; a LoRA run resumes instead")
            self.embedding_file(settings.init_from)
            replacing = settings.init_from == settings.name
        self.check_name(settings.name, method=settings.method, replacing=replacing)
        uploads, zips = list(uploads), list(zips)
        if folder is not None and (uploads or zips or staged):
            raise TrainingRequestError("give either a server folder or uploaded images, not both")
        if folder is None and not uploads and not zips and staged is None:
            raise TrainingRequestError("no images: upload 10-30 images (or a zip), or give a server folder")
        if folder is not None and not Path(folder).is_dir():
            raise TrainingRequestError(f"the dataset folder {folder} does not exist on the server")
        if staged is not None and (staged[0] in self._runs or not _RUN_ID.match(staged[0])):
            raise TrainingRequestError("this upload was used by another run already; upload the images again")
        run_id, run_path = staged or self.new_run_dir()
        try:
            dataset_dir = Path(folder) if folder is not None else run_path / "dataset"
            if folder is None and staged is None:
                self.stage(dataset_dir, uploads, zips)
            resolution = settings.resolution or self.default_resolution(record)
            summary = self.summarize(dataset_dir, settings, resolution, record)
            memory = summary.memory
            if memory is not None and not memory.fits and not memory.fits_with_checkpointing:
                raise TrainingRequestError(
                    str(does_not_fit(settings.method, memory.needed, memory.available, memory.device))
                )
        except BaseException:
            if staged is None:  # a staged upload stays for the next try (the Train tab keeps it)
                shutil.rmtree(run_path, ignore_errors=True)
            raise
        resolved = settings.model_copy(update={"resolution": resolution, "learning_rate": settings.rate})
        if memory is not None and not memory.fits:  # it fits with checkpointing (checked above)
            resolved.gradient_checkpointing = True
        if (
            settings.method == "dreambooth"
            and settings.prior_preservation
            and not (settings.class_prompt.strip() or settings.class_word.strip())
        ):
            raise TrainingRequestError("prior preservation needs a class prompt or a class word (e.g. 'dog')")
        if settings.method == "embedding" and not settings.trigger:
            resolved.trigger = settings.name  # captions without one fall back to "<name> <class>"
        if resolved.train_text_encoder is None:  # DreamBooth: the UNet only, unless asked (memory)
            resolved.train_text_encoder = record.family is not ModelFamily.SDXL and settings.method == "lora"
        if settings.method == "dreambooth" and not resolved.class_prompt.strip():
            resolved.class_prompt = f"a photo of {settings.class_word.strip()}".strip()
        if resolved.sample_prompts is None:
            fallback = " ".join(w for w in (resolved.trigger.strip(), settings.class_word.strip()) if w)
            resolved.sample_prompts = [fallback or summary.captions[0][1]]
        if resolved.sample_every is None:
            resolved.sample_every = max(1, settings.steps // 4)
        run = TrainingRun(
            id=run_id,
            settings=resolved,
            model_title=record.title,
            family=record.family.label if record.family else "",
            run_dir=run_path,
            dataset_dir=dataset_dir,
            total=settings.steps,
            summary=summary.to_json(),
        )
        with self._lock:
            self._runs[run.id] = run
            self._save(run)
        run._future = self.generation.submit_call(lambda: self._execute(run, record))
        log.info("training run %s queued: %s on %s, %d images", run.id, run.name, record.name, summary.images)
        return run

    def stop(self, run_id: str) -> TrainingRun:
        """Stop a run and keep what it learnt (a queued run is cancelled: it has learnt nothing)."""
        run = self.get(run_id)
        with self._lock:
            if run.state is RunState.QUEUED:
                return self.cancel(run_id)
            if run.state is RunState.RUNNING and not run._stop:
                run._stop = True
                run.status = "Stopping: saving what was learnt"
                _send(run._process, "stop")
        return run

    def resume(self, run_id: str) -> TrainingRun:
        """Queue a stopped LoRA or DreamBooth run again; it goes on from the step it stopped at, as if never
        stopped."""
        run = self.get(run_id)
        with self._lock:
            if run.state is not RunState.STOPPED:
                raise TrainingRequestError(
                    f"run {run.id} is {run.state.value}; only a stopped run can resume"
                )
            if not run.resumable:
                raise TrainingRequestError(
                    f"run {run.id} has no saved training state to resume from (an embedding run, or a stop "
                    "that could not keep it); start a new run"
                )
            if not run.dataset_dir.is_dir():
                raise TrainingRequestError(f"the dataset of run {run.id} is gone ({run.dataset_dir})")
            record = self.checkpoint(run.settings.model or run.model_title)
            family = record.family.label if record.family else ""
            if family != run.family:
                raise TrainingRequestError(
                    f"run {run.id} trained on {run.family} and {record.name} is {family}: a run resumes "
                    "on its own base model"
                )
            run.state, run.status, run.error, run.finished = (
                RunState.QUEUED,
                "Waiting for the device",
                None,
                None,
            )
            run._stop = run._cancel = False
            run._outcome = run._warning = None
            run._resume = True
            run.result = None  # the file the stop saved stays until the resumed run saves its own
            self._save(run)
        run._future = self.generation.submit_call(lambda: self._execute(run, record))
        return run

    def cancel(self, run_id: str) -> TrainingRun:
        """Cancel a run: nothing it made is kept in ``models/``."""
        run = self.get(run_id)
        with self._lock:
            if run.state is RunState.QUEUED:
                run._cancel = True
                if run._future is not None:
                    run._future.cancel()
                run.state, run.finished = RunState.CANCELLED, time.time()
                self._save(run)
            elif run.state is RunState.RUNNING:
                run._cancel = True
                run.status = "Cancelling"
                process = run._process
                if process is not None and process.poll() is None:
                    process.kill()
        return run

    def delete(self, run_id: str) -> int:
        """Forget a finished run: its folder (the uploaded dataset, the samples, the class images and the
        training state a stop kept, gigabytes for a DreamBooth) is removed; what it saved in ``models/``
        stays. Returns the bytes freed. A queued or running run is refused: stop or cancel it first."""
        run = self.get(run_id)
        with self._lock:
            if not run.state.finished:
                raise TrainingRequestError(
                    f"run {run.id} is {run.state.value}: stop or cancel it before deleting its files"
                )
            files = [p for p in run.run_dir.rglob("*") if p.is_file() and not p.is_symlink()]
            freed = sum(p.stat().st_size for p in files)
            shutil.rmtree(run.run_dir, ignore_errors=True)
            if run.run_dir.exists():
                raise TrainingRequestError(f"the folder of run {run.id} could not be removed: {run.run_dir}")
            del self._runs[run.id]
        log.info("training run %s deleted (%d bytes freed); its result stays: %s", run.id, freed, run.result)
        return freed

    def _execute(self, run: TrainingRun, record: CheckpointRecord) -> None:
        if run._cancel or run.state is not RunState.QUEUED:
            return
        progress = self.generation.progress
        progress.begin_script(f"Training {run.name}")
        run.state, run.started, run.status = RunState.RUNNING, time.time(), "Starting the trainer"
        self._save(run)
        try:
            self._free_device()
            self._run_worker(run, record)
        except Exception as exc:  # the run fails with the reason; the queue goes on
            log.exception("training run %s failed", run.id)
            run.state, run.error = RunState.FAILED, run.error or f"{type(exc).__name__}: {exc}"
        finally:
            if run.result and run.state is RunState.RUNNING:
                self._after_save(run)
            if run._outcome is not None and run.state is RunState.RUNNING:
                run.state = run._outcome
            run.finished = time.time()
            run._process = None
            progress.end_script()
            with self._lock:
                self._save(run)

    def _free_device(self) -> None:
        """On a GPU, unload the generation models while training (the trainer loads its own copy)."""
        engine = getattr(self.generation, "_engine", None)
        device = getattr(getattr(engine, "choice", None), "device", None)
        if engine is not None and getattr(device, "type", "cpu") == "cuda":
            engine.unload()
            self.models.load_state.loaded_name = None

    def _job(self, run: TrainingRun, record: CheckpointRecord) -> dict[str, Any]:
        settings = run.settings
        resolution = settings.resolution or 512
        config = {
            "name": settings.name,
            "resolution": resolution,
            "rank": settings.rank,
            "alpha": settings.alpha,
            "total_steps": settings.steps,
            "batch_size": settings.batch_size,
            "learning_rate": settings.rate,
            "text_encoder_learning_rate": settings.text_encoder_learning_rate,
            "train_text_encoder": bool(settings.train_text_encoder),
            "schedule": settings.schedule,
            "warmup_steps": settings.warmup_steps,
            "seed": settings.seed,
            "noise_offset": settings.noise_offset,
            "min_snr_gamma": settings.min_snr_gamma or None,
            "flip": settings.flip,
            "gradient_checkpointing": settings.gradient_checkpointing,
            "shuffle_captions": settings.shuffle_captions,
            "keep_tokens": settings.keep_tokens,
            "sample_every": settings.sample_every or 0,
            "optimizer": settings.optimizer,
            "base_model_hash": record.short_hash or "",
            "gradient_accumulation": settings.gradient_accumulation,
        }
        if settings.method == "dreambooth":
            config.update(
                {
                    "prior_preservation": settings.prior_preservation,
                    "class_prompt": settings.class_prompt,
                    "class_images": settings.class_images,
                    "prior_loss_weight": settings.prior_loss_weight,
                }
            )
        if settings.method == "embedding":
            config.update({"vectors": settings.vectors, "init_text": settings.init_text})
            if settings.init_from:
                config["init_file"] = str(self.embedding_file(settings.init_from))
        return {
            "resume": run._resume,
            "method": settings.method,
            "checkpoint": record.model_dump(mode="json"),
            "dataset": str(run.dataset_dir),
            "trigger": settings.trigger,
            "class_word": settings.class_word,
            "prepend_trigger": settings.prepend_trigger,
            "config": config,
            "out_dir": str(self.output_dir(settings.method)),
            "run_dir": str(run.run_dir),
            "tokenizer_cache": str(self.tokenizer_cache),
            "device": self.device,
            "precision": self.precision,
            "train_precision": settings.precision,
            "samples": {
                "prompts": settings.sample_prompts or [],
                "seed": settings.sample_seed,
                "steps": settings.sample_steps,
                "cfg_scale": settings.sample_cfg_scale,
                "sampler": settings.sample_sampler,
                "scheduler": settings.sample_scheduler,
                "width": resolution,
                "height": resolution,
            },
        }

    def _run_worker(self, run: TrainingRun, record: CheckpointRecord) -> None:
        progress = self.generation.progress
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        repo_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
        with open(run.run_dir / "log.txt", "ab") as log_file:
            process = subprocess.Popen(
                self.worker_command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
                text=True,
                encoding="utf-8",
            )
            run._process = process
            if run._cancel:
                process.kill()
            _send(process, json.dumps(self._job(run, record)))
            assert process.stdout is not None
            for line in process.stdout:
                if progress.script_interrupted and not run._stop:  # the page's Interrupt: stop and save
                    self.stop(run.id)
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._on_event(run, event)
                if run.state is RunState.RUNNING and run.total:
                    progress.set_script_progress(
                        f"Training {run.name}: {run.progress_text()}", run.step / run.total
                    )
            code = process.wait()
        if run._cancel:
            run.state, run.status = RunState.CANCELLED, "Cancelled"
            self._discard(run)
        elif run.state is RunState.RUNNING and run._outcome is None:
            run.state = RunState.FAILED
            run.error = run.error or (
                f"the trainer stopped unexpectedly (exit code {code}); its log is {run.run_dir / 'log.txt'}"
            )

    def _on_event(self, run: TrainingRun, event: dict[str, Any]) -> None:
        kind = event.get("event")
        with self._lock:
            if kind == "status":
                run.status = str(event.get("text", ""))
            elif kind == "warning":
                run._warning = run.status = f"Warning: {event.get('text', '')}"
            elif kind == "dataset":
                run.summary["images"] = event.get("images")
            elif kind == "step":
                run.step, run.total = int(event["step"]), int(event["total"])
                run.losses.append(float(event["loss"]))
                run.learning_rate = float(event.get("lr") or 0)
                run.elapsed = float(event.get("elapsed") or 0)
                run.status = "Training"
                if run.step % 25 == 0:
                    self._save(run)
            elif kind == "eval":
                run.eval_losses.append((int(event["step"]), float(event["loss"])))
            elif kind == "sample":
                run.samples.append(
                    {
                        "step": int(event["step"]),
                        "paths": list(event["paths"]),
                        "prompts": event.get("prompts", []),
                    }
                )
                self._save(run)
            elif kind == "done":
                run.peak_memory = event.get("peak_memory")
                path = event.get("path")
                run.result = Path(path).name if path else None  # a cancelled run's file is removed after
                if run._cancel:
                    return
                # published once the LoRA is listed too (see _execute): a client that sees "done" can use it
                run._outcome = RunState.STOPPED if event.get("stopped") else RunState.DONE
                run.status = (
                    f"Saved {run.result}" if run.result else "Stopped before the first step: nothing saved"
                )
                if run._warning:
                    run.status += f". {run._warning}"
            elif kind == "error":
                run.state, run.error = RunState.FAILED, str(event.get("message"))
                run.status = "Failed"

    def _discard(self, run: TrainingRun) -> None:
        """A cancelled run keeps nothing in ``models/``: a file it saved just before is removed too."""
        from webui.metadata.image_io import sweep_temp_files

        folder = self.output_dir(run.settings.method)
        target = folder / f"{run.name}.safetensors"
        if run.result and target.is_file():
            target.unlink()
        elif run.result and run.settings.method == "dreambooth" and (folder / run.name).is_dir():
            shutil.rmtree(folder / run.name)  # a DreamBooth of a diffusers folder is a folder
        run.result = None
        sweep_temp_files(folder)

    def _after_checkpoint(self, run: TrainingRun) -> None:
        """A DreamBooth checkpoint takes its base's sidecars (per-model defaults, an LDM ``.yaml``) and is
        listed at once."""
        from webui.services.merge import copy_sidecars

        target = self.output_dir("dreambooth") / (run.result or "")
        try:
            copy_sidecars(target, [self.models.find(run.model_title)])
        except LookupError as exc:  # the base went away meanwhile; the checkpoint is saved all the same
            log.warning("could not copy the base model's sidecars to %s: %s", target.name, exc)
        try:
            self.models.refresh()
        except Exception as exc:  # saved; the list catches up at the next refresh
            log.warning("could not refresh the checkpoints after training: %s", exc)

    def _after_save(self, run: TrainingRun) -> None:
        """A LoRA gets its A1111 sidecar and settings file; Easel's LoRA or embedding list is refreshed."""
        if run.settings.method == "dreambooth":
            self._after_checkpoint(run)
            return
        if run.settings.method == "embedding":
            if self.networks is not None:
                try:
                    self.networks.refresh_embeddings()
                except Exception as exc:  # saved; the list catches up at the next refresh
                    log.warning("could not refresh the embeddings after training: %s", exc)
            return
        target = self.lora_dir / (run.result or "")
        settings = run.settings
        sidecar = target.with_suffix(".json")
        if not sidecar.exists():
            sd_version = {"SD 1.x": "SD1", "SD 2.x": "SD2", "SDXL": "SDXL"}.get(run.family, "Unknown")
            with contextlib.suppress(OSError):
                sidecar.write_text(
                    json.dumps(
                        {
                            "description": f"Trained in Easel on {run.model_title}, {run.step} steps.",
                            "activation text": settings.trigger,
                            "preferred weight": 1.0,
                            "sd version": sd_version,
                            "notes": f"Training run {run.id}; settings in {target.stem}.training.json",
                        },
                        indent=4,
                    ),
                    encoding="utf-8",
                )
        with contextlib.suppress(OSError):
            target.with_suffix(".training.json").write_text(
                json.dumps(
                    {"run": run.id, "model": run.model_title, "steps_done": run.step,
                     "dataset": str(run.dataset_dir), "settings": settings.model_dump(mode="json")},
                    indent=1,
                ),
                encoding="utf-8",
            )  # fmt: skip
        if self.networks is not None:
            try:
                self.networks.refresh_loras()
            except Exception as exc:  # the file is saved; the list catches up at the next refresh
                log.warning("could not refresh the LoRA list after training: %s", exc)
        for listener in list(self.on_saved):
            with contextlib.suppress(Exception):
                listener(run)

    def shutdown(self) -> None:
        """Stop the running trainer (it saves what it learnt) when Easel exits."""
        run = self.active()
        if run is not None:
            self.stop(run.id)


def _send(process: Any, line: str) -> None:
    stdin: IO[str] | None = getattr(process, "stdin", None)
    if stdin is None:
        return
    with contextlib.suppress(OSError, ValueError):
        stdin.write(line + "\n")
        stdin.flush()
