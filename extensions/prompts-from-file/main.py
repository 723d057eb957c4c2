"""Prompts from file or textbox: one job per line, as A1111's built-in script.

A line is a prompt, or options as in A1111: ``--prompt "a cat" --negative_prompt "blurry" --steps 10``
(prompt, negative_prompt, styles, seed, subseed, subseed_strength, seed_resize_from_w/h, sampler_name,
sampler_index, scheduler, batch_size, n_iter, steps, cfg_scale, width, height, restore_faces, tiling,
do_not_save_samples, do_not_save_grid, sd_model). ``script_args`` as A1111's: ``[checkbox_iterate,
checkbox_iterate_batch, prompt_position ("start" | "end"), prompt_txt]``, then ``make_combined`` (a grid of
all the images, first).
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

from pydantic import ValidationError

from webui.extensions.api import Extension, GenerationResult, Request, Script, ScriptRun, Tab
from webui.extensions.grids import draw_grid

from .lines import TITLE, Line, LineError, read_lines

MAX_SEED = 4294967294
DEFAULTS: list[Any] = [False, False, "start", "", False]


def _with(request: Request, update: dict[str, Any]) -> Request:
    copy = request.model_copy(deep=True)
    for key, value in update.items():
        setattr(copy, key, value)
    return copy


def _join(line_text: str, base: str, position: str) -> str:
    """A line's prompt put at the start or the end of the tab's prompt (when the tab has one)."""
    if not base:
        return line_text
    return f"{line_text} {base}" if position == "start" else f"{base} {line_text}"


def plan(p: ScriptRun, lines: list[Line], iterate: bool, same_seed: bool, position: str) -> list[Request]:
    """Each line's request, checked before any image is made."""
    base = p.request
    seed = base.seed
    if (iterate or same_seed) and seed == -1:
        seed = random.randrange(MAX_SEED)
    step = base.batch_size * base.n_iter
    requests = []
    for line in lines:
        fields = dict(line.fields)
        if "prompt" in fields:
            fields["prompt"] = _join(fields["prompt"], base.prompt, position)
        if "negative_prompt" in fields:
            fields["negative_prompt"] = _join(fields["negative_prompt"], base.negative_prompt, position)
        fields.setdefault("seed", seed)
        try:
            requests.append(_with(base, fields))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error.get("loc", ()))
            raise LineError(f"{TITLE}: line {line.number}: {where}: {error.get('msg', exc)}") from None
        if iterate and seed != -1:
            seed += step
    return requests


def _image(png: bytes | None, path: str | None) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(png)) if png is not None else Image.open(path)  # type: ignore[arg-type]
    image.load()
    return image


class PromptsFromFile(Script):
    title = TITLE
    tabs = ("txt2img", "img2img")

    def ui(self, tab: Tab) -> list[Any]:
        import gradio as gr

        iterate = gr.Checkbox(label="Iterate seed every line", value=False)
        same_seed = gr.Checkbox(label="Use same random seed for all lines", value=False)
        position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start")
        make_combined = gr.Checkbox(
            label="Make a combined image containing all outputs (if more than one)", value=False
        )
        prompt_txt = gr.Textbox(
            "",
            label="List of prompt inputs",
            lines=2,
            placeholder='One prompt per line, or options: --prompt "a cat" --steps 10 --seed 5',
        )
        upload = gr.File(label="Upload prompt inputs", type="binary", file_types=[".txt"])

        def load(data: bytes | None) -> tuple[Any, Any]:
            if data is None:
                return gr.update(), gr.update()
            text = data.decode("utf-8", errors="replace")
            return gr.update(value=None), gr.update(
                value="\n".join(line.strip() for line in text.splitlines())
            )

        upload.upload(load, [upload], [upload, prompt_txt], show_progress="hidden")
        return [iterate, same_seed, position, prompt_txt, make_combined]

    def api_defaults(self, tab: Tab) -> list[Any]:
        return list(DEFAULTS)

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        iterate, same_seed, position, text, combined = [*args[: len(DEFAULTS)], *DEFAULTS[len(args) :]]
        if position not in ("start", "end"):
            raise LineError(f"{TITLE}: prompt position must be start or end, got {position!r}")
        requests = plan(p, read_lines(str(text or ""), p.easel), bool(iterate), bool(same_seed), position)
        return self.make(p, requests, bool(combined))

    def make(self, p: ScriptRun, requests: list[Request], combined: bool) -> GenerationResult:
        easel = p.easel
        results: list[GenerationResult] = []
        interrupted = False
        for number, request in enumerate(requests, start=1):
            if easel.interrupted:
                interrupted = True
                break
            easel.set_progress(f"{TITLE}: line {number} of {len(requests)}", (number - 1) / len(requests))
            results.append(p.generate(request))
            if results[-1].interrupted:
                interrupted = True
                break
        images = [image for result in results for image in result.images]
        warnings = list(dict.fromkeys(w for result in results for w in result.warnings))
        if not images:
            return GenerationResult(
                request=p.request,
                images=[],
                model_name="",
                model_hash=None,
                interrupted=True,
                warnings=warnings,
            )
        if combined and len(images) > 1:
            pictures = [_image(image.png_bytes, image.path) for image in images]
            grid = draw_grid(pictures, cols=math.ceil(math.sqrt(len(pictures))))
            images.insert(0, easel.save_grid(grid, results[0].request, images[0].infotext))
        head = results[0]
        return GenerationResult(
            request=p.request,
            images=images,
            model_name=head.model_name,
            model_hash=head.model_hash,
            vae_name=head.vae_name,
            vae_hash=head.vae_hash,
            interrupted=interrupted,
            job_timestamp=head.job_timestamp,
            version=head.version,
            warnings=warnings,
        )


def setup(ext: Extension) -> None:
    ext.add_script(PromptsFromFile())
