"""Prompt matrix: every combination of a prompt's ``|``-separated parts, as A1111's built-in script.

``a cat | in a hat | at night`` makes four images: ``a cat``, ``a cat, in a hat``, ``a cat, at night`` and
``a cat, in a hat, at night``, shown in one grid whose labels name the parts each column and row uses (the
parts it leaves out are greyed and struck through). ``script_args`` as A1111's: ``[put_at_start,
different_seeds, prompt_type ("positive" | "negative"), variations_delimiter ("comma" | "space"),
margin_size]``.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import ValidationError

from webui.extensions.api import (
    Easel,
    Extension,
    GeneratedImage,
    GenerationResult,
    Request,
    Script,
    ScriptRun,
    Tab,
)
from webui.extensions.grids import GridLabel, draw_grid

TITLE = "Prompt matrix"
MAX_SEED = 4294967294
DEFAULT_MAX_MEGAPIXELS = 200  # A1111's option img_max_size_mp
DEFAULTS: list[Any] = [False, False, "positive", "comma", 0]


class PromptMatrixError(ValueError):
    """The matrix cannot be made as asked; nothing was generated."""


def combinations(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """The variable parts and every combination's prompt, in A1111's order: combination ``i`` uses part
    ``j`` when bit ``j`` of ``i`` is set, so the first prompt is the fixed part alone."""
    fixed, *variable = prompt.split("|")
    parts = [part.strip().strip(",").strip() for part in variable]
    fixed = fixed.strip().strip(",").strip()
    prompts = []
    for number in range(2 ** len(parts)):
        chosen = [part for index, part in enumerate(parts) if number & (1 << index)]
        ordered = [*chosen, fixed] if put_at_start else [fixed, *chosen]
        prompts.append(delimiter.join(text for text in ordered if text))
    return parts, prompts


def grid_shape(part_count: int) -> tuple[int, int]:
    """``(columns, rows)``: the first half of the parts (rounded up) across, the rest down, as A1111."""
    across = (part_count + 1) // 2
    return 2**across, 2 ** (part_count - across)


def grid_labels(parts: list[str]) -> tuple[list[list[GridLabel]], list[list[GridLabel]]]:
    across = (len(parts) + 1) // 2
    horizontal, vertical = parts[:across], parts[across:]
    columns = [
        [GridLabel(part, bool(col & (1 << j))) for j, part in enumerate(horizontal)]
        for col in range(2**across)
    ]
    rows = [
        [GridLabel(part, bool(row & (1 << j))) for j, part in enumerate(vertical)]
        for row in range(2 ** len(vertical))
    ]
    return columns, rows


def _with(request: Request, update: dict[str, Any]) -> Request:
    copy = request.model_copy(deep=True)
    for key, value in update.items():
        setattr(copy, key, value)
    return copy


def _image(item: GeneratedImage) -> Any:
    import io

    from PIL import Image

    if item.png_bytes is not None:
        image = Image.open(io.BytesIO(item.png_bytes))
    elif item.path is not None:
        image = Image.open(item.path)
    else:
        raise ValueError("an image has neither data nor a file")
    image.load()
    return image


class PromptMatrix(Script):
    title = TITLE
    tabs = ("txt2img", "img2img")

    def ui(self, tab: Tab) -> list[Any]:
        import gradio as gr

        with gr.Row():
            with gr.Column():
                put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False)
                different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False)
            with gr.Column():
                prompt_type = gr.Radio(["positive", "negative"], label="Select prompt", value="positive")
                delimiter = gr.Radio(["comma", "space"], label="Select joining char", value="comma")
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2)
        gr.Markdown("Separate the parts to combine with `|`: `a cat | in a hat | at night`.")
        return [put_at_start, different_seeds, prompt_type, delimiter, margin_size]

    def api_defaults(self, tab: Tab) -> list[Any]:
        return list(DEFAULTS)

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        put_at_start, different_seeds, prompt_type, delimiter_name, margin = [
            *args[: len(DEFAULTS)],
            *DEFAULTS[len(args) :],
        ]
        requests, parts = self.plan(p, bool(put_at_start), bool(different_seeds), prompt_type, delimiter_name)
        try:
            margin_size = max(0, min(500, int(float(margin or 0))))
        except (TypeError, ValueError):
            raise PromptMatrixError(
                f"{TITLE}: grid margins must be a number of pixels, got {margin!r}"
            ) from None
        return self.make(p, requests, parts, margin_size)

    def plan(
        self, p: ScriptRun, put_at_start: bool, different_seeds: bool, prompt_type: Any, delimiter_name: Any
    ) -> tuple[list[Request], list[str]]:
        """Every combination's request, checked before any image is made."""
        if prompt_type not in ("positive", "negative"):
            raise PromptMatrixError(f"{TITLE}: unknown prompt type {prompt_type!r}; use positive or negative")
        if delimiter_name not in ("comma", "space"):
            raise PromptMatrixError(f"{TITLE}: unknown joining char {delimiter_name!r}; use comma or space")
        request = p.request
        field = "prompt" if prompt_type == "positive" else "negative_prompt"
        text = getattr(request, field)
        if "|" not in text:
            where = "prompt" if field == "prompt" else "negative prompt"
            raise PromptMatrixError(
                f"{TITLE}: the {where} has no parts to combine; separate them with |, e.g. "
                "'a cat | in a hat | at night'"
            )
        parts, prompts = combinations(text, put_at_start, ", " if delimiter_name == "comma" else " ")
        seed = request.seed if request.seed != -1 else random.randrange(MAX_SEED)
        subseed = request.subseed if request.subseed != -1 else random.randrange(MAX_SEED)
        limit = float(p.easel.options().get("img_max_size_mp") or DEFAULT_MAX_MEGAPIXELS)
        megapixels = len(prompts) * request.width * request.height / 1_000_000
        if megapixels > limit:
            raise PromptMatrixError(
                f"{TITLE}: {len(parts)} parts make {len(prompts)} images, a grid of {megapixels:.0f} "
                f"megapixels, more than the {limit:g} allowed (option img_max_size_mp); use fewer parts"
            )
        requests = []
        for index, prompt in enumerate(prompts):
            update = {
                field: prompt,
                "seed": seed + (index if different_seeds else 0),
                "subseed": subseed,
                "batch_size": 1,
                "n_iter": 1,
            }
            try:
                requests.append(_with(request, update))
            except ValidationError as exc:
                raise PromptMatrixError(f"{TITLE}: {exc.errors()[0].get('msg', exc)}") from None
        return requests, parts

    def make(self, p: ScriptRun, requests: list[Request], parts: list[str], margin: int) -> GenerationResult:
        easel: Easel = p.easel
        results: list[GenerationResult] = []
        interrupted = False
        for number, request in enumerate(requests, start=1):
            if easel.interrupted:
                interrupted = True
                break
            easel.set_progress(f"{TITLE}: image {number} of {len(requests)}", (number - 1) / len(requests))
            results.append(p.generate(request))
            if results[-1].interrupted:
                interrupted = True
                break
        images = [image for result in results for image in result.images]
        warnings = [w for result in results for w in result.warnings]
        if not images:
            return GenerationResult(
                request=p.request,
                images=[],
                model_name="",
                model_hash=None,
                interrupted=True,
                warnings=warnings,
            )
        cells = [_image(result.images[0]) if result.images else None for result in results]
        first = next(cell for cell in cells if cell is not None)
        blank = first.copy()
        blank.paste((0, 0, 0), (0, 0, *blank.size))
        cells = [cell if cell is not None else blank for cell in cells]
        cells += [blank] * (len(requests) - len(cells))
        columns, rows = grid_labels(parts)
        cols, _ = grid_shape(len(parts))
        grid = draw_grid(cells, cols=cols, x_labels=columns, y_labels=rows, margin=margin)
        saved = easel.save_grid(grid, results[0].request, images[0].infotext)
        head = results[0]
        return GenerationResult(
            request=p.request,
            images=[saved, *images],
            model_name=head.model_name,
            model_hash=head.model_hash,
            vae_name=head.vae_name,
            vae_hash=head.vae_hash,
            interrupted=interrupted,
            job_timestamp=head.job_timestamp,
            version=head.version,
            warnings=list(dict.fromkeys(warnings)),
        )


def setup(ext: Extension) -> None:
    ext.add_script(PromptMatrix())
