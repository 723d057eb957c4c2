"""The training child process: ``python -m webui.training.worker``, driven by ``webui.services.training``.

A run lives in its own process so that Cancel frees every byte it used and a crash in the trainer never
takes the server down. The protocol is JSON, one object per line:

- **stdin**: first the job (``checkpoint``: a ``CheckpointRecord`` as JSON, ``dataset``: a folder,
  ``trigger``, ``class_word``, ``prepend_trigger``, ``config``: ``LoraTrainingConfig``'s fields, ``out_dir``,
  ``run_dir``, ``tokenizer_cache``, ``device``, ``precision`` (the server's), ``train_precision`` (auto, bf16
  or fp32), ``samples``: prompts and how to draw them);
  then control lines: ``stop`` (save what was learnt and finish).
- **stdout**: events, each with ``"event"``: ``status`` (``text``), ``warning`` (``text``: said again in
  the final status), ``dataset`` (``images``, ``buckets``, ``skipped``), ``step`` (``step``, ``total``,
  ``loss``, ``lr``), ``eval`` (``step``, ``loss``: the eval loss on the fixed set), ``sample`` (``step``,
  ``paths``),
  ``done`` (``path``, ``steps``, ``stopped``, ``peak_memory``) or ``error`` (``message``).

Anything else a library prints goes to stderr, which the service keeps as the run's log.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any


class _Events:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        with self.lock:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()


def _protocol_stdout() -> IO[str]:
    """The real stdout, for events; fd 1 then points at stderr, so stray prints cannot break the protocol."""
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def _peak_memory(device: Any) -> int:
    import resource

    import torch

    if getattr(device, "type", "") == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _sampler(job: dict[str, Any], model: Any, run_dir: Path, events: _Events) -> Any:
    """``on_sample(step)``: the job's sample prompts at one fixed seed, as ``samples/step-NNNNNN-K.png``."""
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.generate import DiffusionJob, generate_batch

    spec = job.get("samples") or {}
    prompts = [prompt for prompt in spec.get("prompts", []) if prompt.strip()]
    sampler, schedule = resolve_sampler(spec.get("sampler", "Euler a"), spec.get("scheduler"))
    folder = run_dir / "samples"

    def sample(step: int, tables: list[dict[str, Any]] | None = None) -> None:
        if not prompts:
            return
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, prompt in enumerate(prompts):
            diffusion = DiffusionJob(
                prompt=prompt,
                negative_prompt=spec.get("negative_prompt", ""),
                steps=int(spec.get("steps", 20)),
                cfg_scale=float(spec.get("cfg_scale", 7.0)),
                width=int(spec["width"]),
                height=int(spec["height"]),
                seeds=[int(spec.get("seed", 1))],
                subseeds=[0],
                subseed_strength=0.0,
                sampler=sampler,
                schedule=schedule,
                extra={"embeddings": tables} if tables else {},
            )
            images, _finished = generate_batch(model, diffusion, on_step=None)
            path = folder / f"step-{step:06d}-{index}.png"
            images[0].save(path)
            paths.append(str(path))
        events.send("sample", step=step, paths=paths, prompts=prompts)

    return sample


def _free_memory(device: Any, model: Any) -> int | None:
    """Bytes the training can use on ``device``: free CUDA memory, or on the CPU the available RAM plus
    what the loaded model already takes (it is counted in the estimate). ``None`` when unknown."""
    import torch

    if getattr(device, "type", "") == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if getattr(device, "type", "") != "cpu":
        return None
    from webui.runtime.lora import available_ram_bytes

    available = available_ram_bytes()
    if available is None:
        return None
    from webui.training.dreambooth import module_size

    loaded = sum(module_size(m)[1] for m in (model.unet, model.vae, model.text_encoder, model.text_encoder_2))
    return available + loaded


def _class_drawer(job: dict[str, Any], model: Any, config: Any) -> Any:
    """``draw(prompt, seed)``: one class image by the checkpoint, as the samples are drawn."""
    from webui.domain.samplers import resolve_sampler
    from webui.runtime.generate import DiffusionJob, generate_batch

    spec = job.get("samples") or {}
    sampler, schedule = resolve_sampler(spec.get("sampler", "Euler a"), spec.get("scheduler"))

    def draw(prompt: str, seed: int) -> Any:
        diffusion = DiffusionJob(
            prompt=prompt, negative_prompt="", steps=int(spec.get("steps", 20)),
            cfg_scale=float(spec.get("cfg_scale", 7.0)), width=config.resolution, height=config.resolution,
            seeds=[seed], subseeds=[0], subseed_strength=0.0, sampler=sampler, schedule=schedule,
        )  # fmt: skip
        images, _finished = generate_batch(model, diffusion, on_step=None)
        return images[0]

    return draw


def run(job: dict[str, Any], events: _Events, stop: threading.Event) -> None:
    import torch

    from webui.domain.models import CheckpointRecord
    from webui.runtime.cache import choose_device
    from webui.runtime.loader import load_checkpoint
    from webui.training.dataset import bucket_histogram, load_dataset
    from webui.training.dreambooth import DreamBoothConfig, check_memory, memory_estimate, train_dreambooth
    from webui.training.embedding import EmbeddingTrainingConfig, train_embedding
    from webui.training.loop import LoraTrainingConfig, learning_rate_factor
    from webui.training.lora import train_lora

    torch.set_num_threads(max(1, int(job.get("threads") or torch.get_num_threads())))
    method = job.get("method") or "lora"
    kinds = {"embedding": EmbeddingTrainingConfig, "dreambooth": DreamBoothConfig}
    config = kinds.get(method, LoraTrainingConfig)(**job["config"])
    config.check()
    dataset = load_dataset(
        Path(job["dataset"]),
        job.get("trigger", ""),
        job.get("class_word", ""),
        prepend_trigger=bool(job.get("prepend_trigger")),
    )
    histogram = bucket_histogram(dataset, config.resolution)
    events.send(
        "dataset",
        images=len(dataset.images),
        samples_per_epoch=dataset.samples_per_epoch,
        buckets=[[width, height, count] for (width, height), count in histogram.items()],
        skipped=dataset.skipped,
    )
    record = CheckpointRecord.model_validate(job["checkpoint"])
    choice = choose_device(job.get("device", "auto"), job.get("precision", "half"), "sdpa", "normal")
    dtype = choice.dtype
    wanted = job.get("train_precision") or "auto"
    if wanted == "fp32":
        dtype = torch.float32
    elif wanted == "bf16":
        dtype = torch.bfloat16
    elif dtype == torch.float16 and choice.device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16  # fp16's range overflows in training; bf16 trains where the card has it
    precision = str(dtype).removeprefix("torch.")
    events.send("status", text=f"Loading {record.name} on {choice.device} ({precision})")
    model = load_checkpoint(record, dtype=dtype, tokenizer_cache=Path(job["tokenizer_cache"]))
    if isinstance(config, DreamBoothConfig):  # refused before anything is on the device when it cannot fit
        check_memory(memory_estimate(model, config), _free_memory(choice.device, model), str(choice.device))
    model.to(choice.device)
    events.send("status", text="Encoding the images")
    # Seconds spent in training steps only: the time between two steps, less the samples drawn between them
    # (the first step also carries the images' encoding), so it/s and the ETA describe the steps.
    clock = {"last": time.monotonic(), "spent": 0.0}

    def on_step(step: int, total: int, loss: float) -> bool:
        now = time.monotonic()
        clock["spent"] += now - clock["last"]
        clock["last"] = now
        rate = config.learning_rate * learning_rate_factor(config, step - 1)
        events.send("step", step=step, total=total, loss=loss, lr=rate, elapsed=clock["spent"])
        return not stop.is_set()

    def on_eval(step: int, loss: float) -> None:
        events.send("eval", step=step, loss=loss)
        clock["last"] = time.monotonic()  # measuring it is not a training step's time

    draw = _sampler(job, model, Path(job["run_dir"]), events)

    def sampler(step: int, tables: list[dict[str, Any]] | None = None) -> None:
        draw(step, tables)
        clock["last"] = time.monotonic()

    def status(text: str) -> None:
        events.send("status", text=text)

    def warn(text: str) -> None:  # said again in the run's final status
        events.send("warning", text=text)

    if isinstance(config, DreamBoothConfig):
        result = train_dreambooth(
            model, dataset, config, Path(job["out_dir"]), on_step=on_step, on_eval=on_eval, on_sample=sampler,
            class_folder=Path(job["run_dir"]) / "class_images", draw=_class_drawer(job, model, config),
            status=status, warn=warn, state_file=Path(job["run_dir"]) / "state.pt",
            resume=bool(job.get("resume")),
        )  # fmt: skip
    elif isinstance(config, EmbeddingTrainingConfig):
        result = train_embedding(
            model, dataset, config, Path(job["out_dir"]), on_step=on_step, on_eval=on_eval, on_sample=sampler,
            keep_previous=Path(job["run_dir"]) / "previous",
        )  # fmt: skip
    else:
        result = train_lora(
            model, dataset, config, Path(job["out_dir"]), on_step=on_step, on_eval=on_eval, on_sample=sampler,
            state_file=Path(job["run_dir"]) / "state.pt", resume=bool(job.get("resume")),
            on_warning=warn,
        )  # fmt: skip
    events.send(
        "done",
        path=str(result.path) if result.path else None,
        steps=result.steps,
        stopped=result.stopped,
        peak_memory=_peak_memory(choice.device),
    )


def main() -> int:
    events = _Events(_protocol_stdout())
    first = sys.stdin.readline()
    stop = threading.Event()

    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                stop.set()
        stop.set()  # the service went away: save and finish rather than train for nobody

    try:
        job = json.loads(first)
    except json.JSONDecodeError as exc:
        events.send("error", message=f"the training job could not be read: {exc}")
        return 2
    threading.Thread(target=listen, name="easel-train-control", daemon=True).start()
    try:
        run(job, events, stop)
    except (ValueError, RuntimeError, OSError, MemoryError) as exc:
        traceback.print_exc()
        events.send("error", message=_message(exc))
        return 1
    except Exception as exc:  # the run fails with the reason; the server is another process
        traceback.print_exc()
        events.send("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def _message(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text:
        return (
            "the device ran out of memory while training: lower the resolution or the batch size, or turn "
            "on gradient checkpointing"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
