"""The Train tab: a dataset (upload or server folder), its captions and buckets, LoRA settings, then a live
run (progress, loss curve, samples by step) and "Try it" in txt2img. All work goes through
``services.training``, as the ``/easel/v1/train`` API does."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from webui.domain.training import (
    DEFAULT_LEARNING_RATE,
    TRAIN_OPTIMIZERS,
    TRAIN_PRECISIONS,
    TRAIN_SCHEDULES,
    RunState,
    TrainSettings,
)
from webui.services.training import DatasetSummary, TrainingRequestError, optimizer_problems
from webui.training.dataset import IMAGE_EXTENSIONS, StepPlan
from webui.ui.choices import checkpoint_titles
from webui.ui.user_errors import user_message

POLL_SECONDS = 1.0
TEXT_ENCODER_CHOICES = ["auto", "on", "off"]  # auto: on for SD 1.x/2.x, off for SDXL (cached outputs)

TRAIN_CSS = """
#train_summary table { width: auto; }
#train_status { min-height: 1.5em; }
"""


@dataclass
class TrainTab:
    name: gr.Textbox
    start: gr.Button
    status: gr.Markdown
    try_it: gr.Button


def _model_line(services: Any) -> str:
    try:
        record = services.models.default_checkpoint(services.options.get().sd_model_checkpoint)
    except Exception:
        record = None
    if record is None:
        return "**Base model:** none. Put a checkpoint into models/Stable-diffusion first."
    family = record.family.label if record.family else "unidentified"
    return f"**Base model:** {record.title} ({family}), the checkpoint selected at the top of the page"


def _summary_markdown(summary: DatasetSummary) -> str:
    lines = [
        f"**{summary.images} images** ({summary.samples_per_epoch} per epoch with repeats), "
        f"trained at {summary.resolution}² buckets:",
        "",
        "| Bucket | Images |",
        "|---|---|",
        *[
            f"| {width}×{height} | {'▇' * min(count, 30)} {count} |"
            for width, height, count in summary.buckets
        ],
    ]
    if summary.memory is not None:
        lines += ["", summary.memory.line()]
    if summary.skipped:
        skipped = "; ".join(html.escape(reason, quote=False) for reason in summary.skipped[:8])
        lines += ["", f"**Skipped {len(summary.skipped)}:** {skipped}"]
    # "<image>.txt" is text, not an HTML tag
    lines += [f"\n**Warning:** {html.escape(warning, quote=False)}" for warning in summary.warnings]
    return "\n".join(lines)


NEW_EMBEDDING = "(a new one, from the initialization text)"


def _embedding_choices(services: Any) -> list[str]:
    """The "Start from" choices: a new embedding, or one of ``models/embeddings`` to go on training."""
    networks = getattr(services, "networks", None)
    names: list[str] = []
    if networks is not None:
        try:
            names = sorted({record.name for record in networks.embeddings.records()}, key=str.lower)
        except Exception:  # an unreadable folder leaves only "new"; the embeddings tab says why
            names = []
    return [NEW_EMBEDDING, *names]


def _readout(images: int, samples_per_epoch: int, steps: Any, batch: Any, accumulation: Any = 1) -> str:
    try:
        plan = StepPlan(int(steps), int(batch), samples_per_epoch, images, int(accumulation or 1))
    except (TypeError, ValueError):
        return ""
    if not images or plan.total_steps < 1 or plan.batch_size < 1 or plan.accumulation < 1:
        return ""
    return plan.readout()


def _loss_frame(losses: list[float], eval_losses: Sequence[tuple[int, float]] = ()) -> Any:
    """The plot's rows: the training loss, its 20-step mean, and the eval loss at the steps measured."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    window: list[float] = []
    for index, loss in enumerate(losses, start=1):
        if not math.isfinite(loss):
            continue
        window = [*window[-19:], loss]
        rows.append({"step": index, "loss": loss, "curve": "loss"})
        rows.append({"step": index, "loss": sum(window) / len(window), "curve": "smoothed"})
    rows += [{"step": at, "loss": loss, "curve": "eval"} for at, loss in eval_losses if math.isfinite(loss)]
    return pd.DataFrame(rows, columns=["step", "loss", "curve"])


def _sample_items(run: Any) -> list[tuple[str, str]]:
    items = []
    for sample in reversed(run.samples):  # newest first
        for path, prompt in zip(
            sample["paths"], sample.get("prompts") or [""] * len(sample["paths"]), strict=False
        ):
            label = "baseline (before training)" if sample["step"] == 0 else f"step {sample['step']}"
            items.append((path, f"{label}: {prompt}"))
    return items


def _run_markdown(run: Any) -> str:
    head = f"**{run.name}** · {run.state.value}"
    if run.state is RunState.RUNNING:
        return f"{head} · {run.status} · {run.progress_text()}"
    if run.state is RunState.QUEUED:
        return f"{head} · waiting for the device (a generation is running)"
    if run.state is RunState.FAILED:
        return f"{head}: {run.error}"
    if run.state is RunState.CANCELLED:
        return f"{head}: nothing was saved"
    folder = {"embedding": "models/embeddings", "dreambooth": "models/Stable-diffusion"}.get(
        run.settings.method, "models/Lora"
    )
    saved = f"saved **{folder}/{run.result}**" if run.result else "nothing was saved"
    return f"{head} after {run.step} steps: {saved}. {run.progress_text()}"


def try_in_txt2img(services: Any, run: Any, switch: Callable[[str], Any] | None) -> tuple[str, str | None]:
    """What **Try it in txt2img** does with a finished run: the prompt (its words, with the LoRA's tag for a
    LoRA) and, for a DreamBooth run, the title of its checkpoint, whose load ``switch`` starts (a dropdown
    value set by code is not a choice the user made: nothing would load it)."""
    words = " ".join(w for w in (run.settings.word, run.settings.class_word) if w.strip())
    if run.settings.method == "lora":
        words = f"{words} <lora:{Path(run.result or run.name).stem}:1>"
    title = None
    if run.settings.method == "dreambooth" and run.result:
        try:
            title = services.models.find(run.name).title  # the name, whole: a folder's may have a dot
        except LookupError:
            return words.strip(), None
        if switch is not None:
            switch(title)
    return words.strip(), title


def build_train_tab(
    services: Any,
    *,
    tabs: gr.Tabs,
    txt2img_tab_id: str,
    txt2img_prompt: gr.Textbox,
    lora_dropdowns: list[Any],
    checkpoint_dropdown: Any = None,
    switch_checkpoint: Callable[[str], Any] | None = None,
) -> TrainTab:
    training = services.training
    problems = optimizer_problems(services.settings.device)
    usable = [name for name in TRAIN_OPTIMIZERS if not problems[name]]
    unusable = "; ".join(f"{name} {why}" for name, why in problems.items() if why)

    staged = gr.State(None)  # (run id, folder) of the uploaded dataset, kept for the run
    counts = gr.State((0, 0))  # (images, samples per epoch) of the checked dataset
    run_id = gr.State(None)
    gr.Markdown(
        "Teach the selected checkpoint a character, a style or an object from 10-30 images: as a LoRA "
        "(models/Lora, `<lora:name:1>` here and in any UI that reads kohya's files), an embedding "
        "(models/embeddings, a new word) or a DreamBooth checkpoint (models/Stable-diffusion).",
        elem_id="train_intro",
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            files = gr.File(
                label="Images (PNG, JPEG, WebP) or a zip; <image>.txt captions and kohya folders come along",
                file_count="multiple",
                file_types=[*IMAGE_EXTENSIONS, ".txt", ".zip"],
                elem_id="train_files",
            )
            folder = gr.Textbox(
                label="…or a dataset folder on the server",
                placeholder="/path/to/dataset  (folders like '10_zwx dog' = 10 repeats of 'zwx dog')",
                elem_id="train_folder",
            )
            with gr.Row():
                trigger = gr.Textbox(
                    label="Trigger word", placeholder="zwx", elem_id="train_trigger", scale=1
                )
                class_word = gr.Textbox(label="Class word", placeholder="dog", elem_id="train_class", scale=1)
            prepend = gr.Checkbox(label="Prepend the trigger word to every caption", elem_id="train_prepend")
            check = gr.Button("Check dataset", elem_id="train_check")
            summary = gr.Markdown(elem_id="train_summary")
            captions = gr.Dataframe(
                headers=["File", "Caption"],
                datatype=["str", "str"],
                column_count=(2, "fixed"),
                interactive=True,
                label="Captions (edit them here for uploaded images)",
                elem_id="train_captions",
            )
            thumbnails = gr.Gallery(
                label="Dataset", columns=6, height=220, object_fit="cover", elem_id="train_thumbnails"
            )
        with gr.Column(scale=2, min_width=320):
            model_line = gr.Markdown(_model_line(services), elem_id="train_model")
            method = gr.Radio(
                [("LoRA", "lora"), ("Embedding (textual inversion)", "embedding"),
                 ("DreamBooth (a new checkpoint)", "dreambooth")], value="lora",
                label="Train", elem_id="train_method",
                info="A LoRA changes the model's weights (models/Lora); an embedding learns a new word "
                "(models/embeddings), small and slower to learn; DreamBooth fine-tunes the whole UNet into a "
                "new checkpoint (models/Stable-diffusion; needs memory for the full model)",
            )  # fmt: skip
            name = gr.Textbox(
                label="Name (the file; an embedding's name is the word prompts use)", placeholder="my-style",
                elem_id="train_name",
            )  # fmt: skip
            with gr.Row(visible=False) as embedding_row:
                init_from = gr.Dropdown(
                    _embedding_choices(services), value=NEW_EMBEDDING, label="Start from",
                    elem_id="train_init_from",
                    info="an existing embedding goes on from its vectors and step count; under its own name "
                    "its file is replaced and the old one kept in the run's folder",
                )  # fmt: skip
                vectors = gr.Number(4, label="Vectors per token", precision=0, minimum=1, maximum=75)
                init_text = gr.Textbox("*", label="Initialization text", elem_id="train_init_text")
            with gr.Row(visible=False) as dreambooth_row:
                prior = gr.Checkbox(
                    label="Prior preservation", elem_id="train_prior",
                    info="first draw class images with the checkpoint, and keep training on them too",
                )  # fmt: skip
                class_prompt = gr.Textbox(
                    label="Class prompt", placeholder="a photo of <class word>", elem_id="train_class_prompt"
                )
                class_images = gr.Number(50, label="Class images", precision=0, minimum=1, maximum=10_000)
                prior_weight = gr.Number(1.0, label="Prior loss weight", minimum=0.01, maximum=10)
            with gr.Row():
                steps = gr.Number(1000, label="Total steps", precision=0, minimum=1, elem_id="train_steps")
                batch = gr.Number(1, label="Batch size", precision=0, minimum=1, elem_id="train_batch")
            readout = gr.Markdown(elem_id="train_readout")
            with gr.Row():
                resolution = gr.Number(
                    0, label="Resolution (0: the model's own size)", precision=0, step=64,
                    elem_id="train_resolution",
                )  # fmt: skip
                learning_rate = gr.Number(1e-4, label="Learning rate", elem_id="train_lr")
            with gr.Row() as rank_row:
                rank = gr.Number(16, label="Rank", precision=0, minimum=1, elem_id="train_rank")
                alpha = gr.Number(8, label="Alpha", minimum=0.01, elem_id="train_alpha")
            with gr.Row():
                schedule = gr.Dropdown(
                    list(TRAIN_SCHEDULES),
                    value="constant_with_warmup",
                    label="Schedule",
                    elem_id="train_schedule",
                )
                warmup = gr.Number(0, label="Warm-up steps", precision=0, minimum=0, elem_id="train_warmup")
            optimizer = gr.Dropdown(
                usable, value="AdamW", label="Optimizer", elem_id="train_optimizer",
                info=f"Not here: {unusable}" if unusable else None,
            )  # fmt: skip
            with gr.Row() as text_encoder_row:
                text_encoder = gr.Radio(
                    TEXT_ENCODER_CHOICES, value="auto", label="Train the text encoder",
                    info="auto: on for a LoRA of SD 1.x/2.x; off for SDXL and DreamBooth",
                    elem_id="train_text_encoder",
                )  # fmt: skip
                te_rate = gr.Number(5e-5, label="Text encoder learning rate", elem_id="train_te_lr")
            sample_prompts = gr.Textbox(
                label="Sample prompts, one per line (empty: the trigger and class word)",
                lines=2,
                elem_id="train_sample_prompts",
            )
            sample_every = gr.Number(
                0, label="Sample every N steps (0: four times in the run; -1: never)", precision=0,
                elem_id="train_sample_every",
            )  # fmt: skip
            with gr.Accordion("Advanced", open=False, elem_id="train_advanced"):
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="train_seed")
                    sample_seed = gr.Number(1, label="Sample seed", precision=0, minimum=0)
                    sample_steps = gr.Number(20, label="Sample steps", precision=0, minimum=1)
                with gr.Row():
                    noise_offset = gr.Number(0.0, label="Noise offset", minimum=0, maximum=1)
                    min_snr = gr.Number(5.0, label="Min-SNR γ (0: off)", minimum=0)
                    keep_tokens = gr.Number(0, label="Keep tokens", precision=0, minimum=0)
                with gr.Row():
                    shuffle = gr.Checkbox(label="Shuffle caption tags")
                    flip = gr.Checkbox(label="Flip (mirror) augmentation")
                    checkpointing = gr.Checkbox(label="Gradient checkpointing (less memory, slower)")
                with gr.Row():
                    accumulation = gr.Number(
                        1, label="Gradient accumulation (batches per step)", precision=0, minimum=1,
                        elem_id="train_accumulation",
                    )  # fmt: skip
                    precision = gr.Dropdown(
                        list(TRAIN_PRECISIONS), value="auto", label="Precision", elem_id="train_precision",
                        info="auto: bf16 on GPUs that have it, else the server's precision; fp32 on the CPU",
                    )  # fmt: skip
            with gr.Row():
                start = gr.Button("Train", variant="primary", elem_id="train_start")
                stop = gr.Button("Stop and save", elem_id="train_stop", interactive=False)
                cancel = gr.Button("Cancel", variant="stop", elem_id="train_cancel", interactive=False)
                resume = gr.Button("Resume", elem_id="train_resume", interactive=False)
            status = gr.Markdown(elem_id="train_status")
            loss_plot = gr.LinePlot(
                x="step", y="loss", color="curve", label="Loss", height=280, elem_id="train_loss",
                x_title="step", y_title="loss",
            )  # fmt: skip
            samples = gr.Gallery(label="Samples by step", columns=4, height=260, elem_id="train_samples")
            with gr.Row():
                try_it = gr.Button("Try it in txt2img", visible=False, elem_id="train_try")
                forget = gr.Button(
                    "Delete the run's files", visible=False, elem_id="train_forget", variant="secondary"
                )  # the dataset copy, samples and training state; the saved model stays
    timer = gr.Timer(POLL_SECONDS, active=False)

    settings_inputs = [
        method, vectors, init_text, name, trigger, class_word, prepend, steps, batch, resolution, rank, alpha,
        learning_rate, te_rate,
        schedule, warmup, optimizer, text_encoder, sample_prompts, sample_every, seed, sample_seed,
        sample_steps, noise_offset, min_snr, keep_tokens, shuffle, flip, checkpointing, accumulation,
        precision, init_from, prior, class_prompt, class_images, prior_weight,
    ]  # fmt: skip

    def make_settings(*values: Any) -> TrainSettings:
        (
            method_v, vectors_v, init_v, name_v, trigger_v, class_v, prepend_v, steps_v, batch_v,
            resolution_v,
            rank_v, alpha_v, lr_v,
            te_lr_v, schedule_v, warmup_v, optimizer_v, te_v, prompts_v, every_v, seed_v, sample_seed_v,
            sample_steps_v, noise_v, snr_v, keep_v, shuffle_v, flip_v, checkpointing_v, accumulation_v,
            precision_v, init_from_v, prior_v, class_prompt_v, class_images_v, prior_weight_v,
        ) = values  # fmt: skip
        prompts = [line.strip() for line in (prompts_v or "").splitlines() if line.strip()]
        return TrainSettings(
            method=method_v or "lora", vectors=int(vectors_v or 4), init_text=init_v or "*",
            name=(name_v or "").strip(), trigger=trigger_v or "", class_word=class_v or "",
            prepend_trigger=bool(prepend_v), steps=int(steps_v or 0), batch_size=int(batch_v or 0),
            resolution=int(resolution_v) if resolution_v else None, rank=int(rank_v or 0),
            alpha=float(alpha_v or 0), learning_rate=float(lr_v or 0),
            text_encoder_learning_rate=float(te_lr_v or 0),
            schedule=schedule_v, warmup_steps=int(warmup_v or 0), optimizer=optimizer_v,
            train_text_encoder={"on": True, "off": False}.get(te_v), sample_prompts=prompts or None,
            sample_every=None if not every_v else max(0, int(every_v)), seed=int(seed_v or 0),
            sample_seed=int(sample_seed_v or 0), sample_steps=int(sample_steps_v or 20),
            noise_offset=float(noise_v or 0), min_snr_gamma=float(snr_v) if snr_v else None,
            keep_tokens=int(keep_v or 0), shuffle_captions=bool(shuffle_v), flip=bool(flip_v),
            gradient_checkpointing=bool(checkpointing_v),
            gradient_accumulation=int(accumulation_v or 1), precision=precision_v or "auto",
            init_from=init_from_v if method_v == "embedding" and init_from_v != NEW_EMBEDDING else None,
            prior_preservation=bool(prior_v), class_prompt=class_prompt_v or "",
            class_images=int(class_images_v or 50), prior_loss_weight=float(prior_weight_v or 1.0),
        )  # fmt: skip

    def stage_files(paths: list[str], previous: Any) -> Any:
        if previous:
            training.discard_staged(previous[0])
        if not paths:
            return None
        from webui.services.training import Upload

        run_key, run_dir = training.new_run_dir()
        images = [Path(p) for p in paths if Path(p).suffix.lower() in IMAGE_EXTENSIONS]
        texts = {Path(p).stem: Path(p) for p in paths if Path(p).suffix.lower() == ".txt"}
        uploads = [
            Upload(
                path.name,
                path.read_bytes(),
                texts[path.stem].read_text(encoding="utf-8", errors="replace")
                if path.stem in texts
                else None,
            )
            for path in images
        ]
        try:
            training.stage(
                run_dir / "dataset", uploads, [Path(p) for p in paths if p.lower().endswith(".zip")]
            )
        except BaseException:
            training.discard_staged(run_key)
            raise
        return (run_key, str(run_dir / "dataset"))

    def dataset_folder(staged_v: Any, folder_v: str) -> tuple[Path | None, bool]:
        if (folder_v or "").strip():
            return Path(folder_v.strip()).expanduser(), False
        if staged_v:
            return Path(staged_v[1]), True
        return None, False

    def do_check(paths: Any, staged_v: Any, folder_v: str, *values: Any) -> list[Any]:
        nothing = [
            staged_v,
            (0, 0),
            "",
            gr.update(value=None),
            gr.update(value=None),
            "",
            _model_line(services),
        ]
        try:
            if paths and not (folder_v or "").strip():
                current = [str(p) for p in paths]
                staged_v = stage_files(current, staged_v)
            named = (*values[:3], values[3] or "check", *values[4:])  # the dataset can be checked unnamed
            settings = make_settings(*named)
            where, editable = dataset_folder(staged_v, folder_v)
            if where is None:
                nothing[2] = "Upload images or a zip, or type a server folder, then check the dataset."
                nothing[0] = staged_v
                return nothing
            if not where.is_dir():
                raise TrainingRequestError(f"the dataset folder {where} does not exist on the server")
            record = training.checkpoint(None)
            resolution = settings.resolution or training.default_resolution(record)
            found = training.summarize(where, settings, resolution, record)
        except Exception as exc:
            nothing[0] = staged_v
            nothing[2] = f"**Error:** {user_message(exc)}"
            return nothing
        rows = [[file_name, caption] for file_name, caption in found.captions]
        pictures = [
            str(path) for path in sorted(where.rglob("*")) if path.suffix.lower() in IMAGE_EXTENSIONS
        ][:60]
        return [
            staged_v,
            (found.images, found.samples_per_epoch),
            _summary_markdown(found),
            gr.update(value=rows, interactive=editable),
            gr.update(value=pictures),
            _readout(
                found.images,
                found.samples_per_epoch,
                settings.steps,
                settings.batch_size,
                settings.gradient_accumulation,
            ),
            _model_line(services),
        ]

    check_outputs = [staged, counts, summary, captions, thumbnails, readout, model_line]

    def refresh_summary(staged_v: Any, folder_v: str, *values: Any) -> Any:
        """The pre-flight again for the dataset already checked, when a setting it depends on changes (the
        buckets follow the resolution, the memory estimate the method, batch, optimizer...): nothing is
        staged again, so captions edited in the grid stay."""
        where, _ = dataset_folder(staged_v, folder_v)
        if where is None or not where.is_dir():
            return gr.update()
        try:
            named = (*values[:3], values[3] or "check", *values[4:])
            settings = make_settings(*named)
            record = training.checkpoint(None)
            resolution = settings.resolution or training.default_resolution(record)
            return _summary_markdown(training.summarize(where, settings, resolution, record))
        except Exception as exc:
            return f"**Error:** {user_message(exc)}"

    # Every writer of the summary runs in one queue, one at a time and in the order it was asked: leaving
    # Batch for Resolution fires two refreshes, and run side by side the older one could land last and
    # show the old resolution's buckets.
    in_order = {"api_visibility": "private", "concurrency_id": "train_summary", "concurrency_limit": 1}
    summary_inputs = [staged, folder, *settings_inputs]
    for changed in (method, optimizer, text_encoder, checkpointing, precision):
        changed.change(refresh_summary, summary_inputs, summary, **in_order)
    for typed in (batch, resolution, rank):
        typed.blur(refresh_summary, summary_inputs, summary, **in_order)
        typed.submit(refresh_summary, summary_inputs, summary, **in_order)
    check_inputs = [files, staged, folder, *settings_inputs]
    check.click(do_check, check_inputs, check_outputs, **in_order)
    files.upload(do_check, check_inputs, check_outputs, **in_order)

    def live_readout(counts_v: Any, steps_v: Any, batch_v: Any, accumulation_v: Any) -> str:
        images, per_epoch = counts_v or (0, 0)
        return _readout(images, per_epoch, steps_v, batch_v, accumulation_v)

    for field in (steps, batch, accumulation):
        field.change(
            live_readout,
            inputs=[counts, steps, batch, accumulation],
            outputs=readout,
            api_visibility="private",
            queue=False,
        )

    def write_captions(where: Path, rows: Any) -> None:
        """The caption grid's edits, as ``<image>.txt`` beside the uploaded copies."""
        values = rows.values.tolist() if hasattr(rows, "values") else list(rows or [])
        for row in values:
            if len(row) < 2 or not row[0]:
                continue
            for image in where.rglob(Path(str(row[0])).name):
                text = " ".join(str(row[1] or "").split())
                caption_file = image.with_suffix(".txt")
                if text:
                    caption_file.write_text(text, encoding="utf-8")
                elif caption_file.exists():
                    caption_file.unlink()

    def do_start(paths: Any, staged_v: Any, folder_v: str, rows: Any, *values: Any) -> list[Any]:
        try:
            settings = make_settings(*values)
            if paths and not staged_v and not (folder_v or "").strip():
                staged_v = stage_files([str(p) for p in paths], None)
            where, editable = dataset_folder(staged_v, folder_v)
            if where is None:
                raise TrainingRequestError("no images: upload 10-30 images or a zip, or type a server folder")
            if editable:
                write_captions(where, rows)
                run = training.start(settings, staged=(staged_v[0], where.parent))
                staged_v = None  # the run owns the upload now
            else:
                run = training.start(settings, folder=where)
        except Exception as exc:
            return [
                staged_v, None, f"**Error:** {user_message(exc)}", gr.update(), gr.update(), gr.update(),
                gr.Timer(active=False), gr.update(visible=False), gr.update(), gr.update(),
            ]  # fmt: skip
        return [
            staged_v, run.id, _run_markdown(run), gr.update(interactive=False), gr.update(interactive=True),
            gr.update(interactive=True), gr.Timer(active=True), gr.update(visible=False),
            None, gr.update(value=[]),
        ]  # fmt: skip

    start.click(
        do_start,
        inputs=[files, staged, folder, captions, *settings_inputs],
        outputs=[staged, run_id, status, start, stop, cancel, timer, try_it, loss_plot, samples],
        api_visibility="private",
    )

    def poll_run(run_key: Any, *chosen: Any) -> list[Any]:
        if not run_key:
            return [gr.update(), gr.update(), gr.update(), gr.Timer(active=False), *[gr.update()] * 6,
                    *[gr.update() for _ in lora_dropdowns]]  # fmt: skip
        run = training.get(run_key)
        finished = run.state.finished
        dropdowns = [gr.update() for _ in lora_dropdowns]
        if finished and run.result and services.networks is not None:
            names = services.networks.lora_names()
            dropdowns = [gr.update(choices=sorted(set(names) | set(c or []))) for c in chosen]
        return [
            _run_markdown(run),
            # an empty frame would break the plot's updates
            _loss_frame(run.losses, run.eval_losses) if run.losses or run.eval_losses else None,
            gr.update(value=_sample_items(run)),
            gr.Timer(active=not finished),
            gr.update(interactive=finished),
            gr.update(interactive=not finished),
            gr.update(interactive=not finished),
            gr.update(visible=finished and bool(run.result)),
            gr.update(interactive=run.resumable),
            gr.update(visible=finished),
            *dropdowns,
        ]

    timer.tick(
        poll_run,
        inputs=[run_id, *lora_dropdowns],
        outputs=[
            status,
            loss_plot,
            samples,
            timer,
            start,
            stop,
            cancel,
            try_it,
            resume,
            forget,
            *lora_dropdowns,
        ],
        api_visibility="private",
        queue=False,
    )

    def do_stop(run_key: Any) -> str:
        if not run_key:
            return "No run to stop."
        return _run_markdown(training.stop(run_key))

    def do_cancel(run_key: Any) -> str:
        if not run_key:
            return "No run to cancel."
        return _run_markdown(training.cancel(run_key))

    def do_forget(run_key: Any) -> list[Any]:
        hidden = gr.update(visible=False)
        try:
            run = training.get(run_key)
            freed = training.delete(run_key)
        except Exception as exc:
            return [f"**Error:** {user_message(exc)}", run_key, gr.update(), gr.update(), gr.update()]
        kept = f"; {run.result} stays in models/" if run.result else ""
        text = f"Deleted the files of run {run.name} ({freed / 2**20:.1f} MiB freed){kept}."
        return [text, None, hidden, hidden, gr.update(interactive=False)]

    forget.click(
        do_forget, inputs=run_id, outputs=[status, run_id, try_it, forget, resume], api_visibility="private",
        queue=False,
    )  # fmt: skip

    def do_resume(run_key: Any) -> list[Any]:
        try:
            run = training.resume(run_key)
        except Exception as exc:
            return [f"**Error:** {user_message(exc)}", gr.Timer(active=False), gr.update()]
        return [_run_markdown(run), gr.Timer(active=True), gr.update(interactive=False)]

    resume.click(
        do_resume, inputs=run_id, outputs=[status, timer, resume], api_visibility="private", queue=False
    )
    stop.click(do_stop, inputs=run_id, outputs=status, api_visibility="private", queue=False)
    cancel.click(do_cancel, inputs=run_id, outputs=status, api_visibility="private", queue=False)

    def try_prompt(run_key: Any) -> list[Any]:
        prompt, title = try_in_txt2img(services, training.get(run_key), switch_checkpoint)
        checkpoint = gr.update()
        if title is not None:  # the list did not have it when the page was made
            checkpoint = gr.update(choices=checkpoint_titles(services), value=title)
        return [prompt, gr.Tabs(selected=txt2img_tab_id), checkpoint]

    def method_changed(chosen: str) -> list[Any]:
        embedding, dreambooth = chosen == "embedding", chosen == "dreambooth"
        return [
            gr.update(visible=embedding),
            gr.update(value=DEFAULT_LEARNING_RATE.get(chosen, 1e-4)),
            gr.update(visible=chosen == "lora"),
            gr.update(visible=not embedding),
            gr.update(choices=_embedding_choices(services)),  # one trained a moment ago is there too
            gr.update(visible=dreambooth),
        ]

    method.change(
        method_changed, inputs=method,
        outputs=[embedding_row, learning_rate, rank_row, text_encoder_row, init_from, dreambooth_row],
        api_visibility="private", queue=False,
    )  # fmt: skip

    def start_from_changed(chosen: str, current_name: str) -> list[Any]:
        fresh = chosen in (None, NEW_EMBEDDING)
        return [
            gr.update(visible=fresh),  # the file decides how many vectors, and where they start
            gr.update(visible=fresh),
            current_name if fresh else chosen,  # going on under its own name; rename to keep both
        ]

    init_from.change(
        start_from_changed, inputs=[init_from, name], outputs=[vectors, init_text, name],
        api_visibility="private", queue=False,
    )  # fmt: skip

    try_outputs = [
        txt2img_prompt,
        tabs,
        checkpoint_dropdown if checkpoint_dropdown is not None else gr.State(),
    ]
    try_it.click(try_prompt, inputs=run_id, outputs=try_outputs, api_visibility="private")
    return TrainTab(name=name, start=start, status=status, try_it=try_it)
