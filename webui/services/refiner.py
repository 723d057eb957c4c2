"""The refiner of a job (A1111's Refiner accordion, the API's ``refiner_checkpoint`` / ``refiner_switch_at``).

The service finds and loads the refiner checkpoint beside the job's model (both stay warm in RAM, so a
second job switches without reading the disk), checks that it can take over the base's latents, and
hands the runtime a plan (``webui.runtime.refiner.RefinerPlan``). The infotext names the refiner only
when it ran, as A1111 writes it: ``Refiner: <name> [<hash>], Refiner switch at: 0.8``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.domain.models import fp8_applies, refiner_kind_error
from webui.services.models import ModelNotFoundError


class RefinerError(ValueError):
    """The refiner cannot take over from the job's checkpoint; the message says why and what to choose."""


def find_refiner(models: Any, request: Txt2ImgRequest | Img2ImgRequest) -> Any:
    """The refiner's checkpoint record, or ``None``; ``ModelNotFoundError`` names a missing one."""
    if not request.refiner_checkpoint:
        return None
    try:
        return models.find(request.refiner_checkpoint)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"Refiner: {exc}") from exc


def check_refiner_request(models: Any, options: Any, request: Txt2ImgRequest | Img2ImgRequest) -> None:
    """Before a job is queued: the refiner is there and, where both families are known from the files,
    of the job's checkpoint's kind (``RefinerError``); the runtime checks again once both are loaded."""
    refiner = find_refiner(models, request)
    if refiner is None or refiner.family is None:
        return
    try:
        base = (
            models.find(request.checkpoint)
            if request.checkpoint
            else models.default_checkpoint(options.get().sd_model_checkpoint)
        )
    except ModelNotFoundError:
        return  # the job reports the missing checkpoint itself
    if base is None or base.family is None:
        return
    problem = refiner_kind_error(refiner.name, refiner.family, base.name, base.family)
    if problem:
        raise RefinerError(problem)


def refiner_title(models: Any, record: Any) -> str:
    """A1111's short title of a checkpoint: ``name [hash]`` (a diffusers folder has no file hash)."""
    if record.format.value == "diffusers":
        return str(record.model_name)
    return f"{record.model_name} [{models.ensure_hash(record)[:10]}]"


def prepare_refiner(
    service: Any,
    engine: Any,
    model: Any,
    request: Txt2ImgRequest | Img2ImgRequest,
    opts: Any,
    warnings: list[str],
) -> Any:
    """The job's ``RefinerPlan`` with the refiner loaded (caller holds the engine lock), or ``None``."""
    from webui.runtime.refiner import HIRES_REFINER_PASSES, RefinerPlan, check_refiner

    record = find_refiner(service.models, request)
    if record is None:
        return None
    if record.path == model.record.path:
        warnings.append(f"The refiner {record.name} is the job's own checkpoint; generated without a switch.")
        return None
    load = getattr(engine, "refiner_model", None)
    if load is None:
        warnings.append("This engine cannot run a refiner; generated without it.")
        return None
    progress = service.progress
    progress.set_text(f"Loading refiner {record.name}")
    fp8 = {"fp8": True} if fp8_applies(opts.fp8_storage, record.family) else {}
    refiner = load(record, lambda text, _fraction: progress.set_text(f"Refiner: {text}"), **fp8)
    check_refiner(model, refiner)
    embeddings = None
    tables_for = getattr(engine, "embedding_tables", None)
    if service.networks is not None and tables_for is not None:
        resolved = service.networks.resolve(request.prompt, request.negative_prompt)
        if resolved.embeddings:
            tables, used, _ = tables_for(refiner, resolved.embedding_files())
            embeddings = tables if used else None

    def switched() -> None:
        progress.set_text(f"Refining with {record.name}")

    return RefinerPlan(
        model=refiner,
        switch_at=request.refiner_switch_at,
        by_steps=bool(opts.refiner_switch_by_sample_steps),
        passes=HIRES_REFINER_PASSES[opts.hires_fix_refiner_pass],
        embeddings=embeddings,
        on_switch=switched,
        title=refiner_title(service.models, record),
    )


def refiner_infotext(plan: Any, request: Txt2ImgRequest | Img2ImgRequest, opts: Any) -> dict[str, object]:
    """The infotext fields of a job whose refiner ran (none when it never took over)."""
    if plan is None or not plan.switched:
        return {}
    fields: dict[str, object] = {}
    if getattr(request, "enable_hr", False) and opts.hires_fix_refiner_pass != "second pass":
        fields["Hires refiner"] = opts.hires_fix_refiner_pass
    if plan.by_steps:
        fields["Refiner switch by sampling steps"] = True
    fields["Refiner"] = plan.title
    fields["Refiner switch at"] = plan.switch_at
    return fields


@contextlib.contextmanager
def refiner_released(engine: Any) -> Iterator[None]:
    """Around a job: its refiner (if any) leaves the generation device when the job ends, however it ends."""
    try:
        yield
    finally:
        release = getattr(engine, "release_refiner", None)
        if release is not None:
            release()
