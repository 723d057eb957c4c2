"""Loopback: A1111's img2img script that feeds each output back in as the next input.

``script_args``: ``[loops, final_denoising_strength, denoising_curve, append_interrogation]``, defaults
``[4, 0.5, "Linear", "None"]``. The denoising strength moves from the request's to the final one along the
curve (Aggressive: fast at first, Linear, Lazy: slow at first); the seed counts up by one per loop. With
``append_interrogation`` "CLIP" each loop's prompt is the request's prompt plus what CLIP reads in that
loop's input. Each of the request's ``n_iter`` batches starts again from the init image; with one batch
every loop's image is returned, with several the last image of each. When there is more than one image,
a one-row grid of them is saved and returned first (A1111's ``return_grid``).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageOps

from webui.extensions.api import (
    Easel,
    Extension,
    GeneratedImage,
    GenerationResult,
    Img2ImgRequest,
    Script,
    ScriptRun,
    Tab,
)

TITLE = "Loopback"
CURVES: tuple[str, ...] = ("Aggressive", "Linear", "Lazy")
INTERROGATIONS: tuple[str, ...] = ("None", "CLIP", "DeepBooru")
MAX_LOOPS = 100


def setup(ext: Extension) -> None:
    ext.add_script(Loopback(ext.easel))


def loop_strength(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """Denoising strength of loop ``loop`` (0 is the first) of ``loops``: ``initial`` at the first loop,
    ``final`` at the last, in between along ``curve``."""
    if loops <= 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shaped = math.sin(progress * math.pi / 2)
    elif curve == "Lazy":
        shaped = 1 - math.cos(progress * math.pi / 2)
    else:
        shaped = progress
    return initial + (final - initial) * shaped


class Loopback(Script):
    title = TITLE
    tabs: tuple[Tab, ...] = ("img2img",)

    def __init__(self, easel: Easel | None = None) -> None:
        self.easel = easel

    def ui(self, tab: Tab) -> list[Any]:
        import gradio as gr

        prefix = "img2img_script_loopback"
        interrogations = ["None", "CLIP"] if _can_interrogate(self.easel) else ["None"]
        return [
            gr.Slider(1, 32, value=4, step=1, label="Loops", elem_id=f"{prefix}_loops"),
            gr.Slider(
                0.0, 1.0, value=0.5, step=0.01, label="Final denoising strength", elem_id=f"{prefix}_final"
            ),
            gr.Dropdown(
                list(CURVES), value="Linear", label="Denoising strength curve", elem_id=f"{prefix}_curve"
            ),
            gr.Dropdown(
                interrogations,
                value="None",
                label="Append interrogated prompt at each iteration",
                elem_id=f"{prefix}_interrogation",
            ),
        ]

    def api_defaults(self, tab: Tab) -> list[Any]:
        return [4, 0.5, "Linear", "None"]

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        if len(args) > 4:
            raise ValueError(f"Loopback takes at most 4 script arguments, got {len(args)}")
        loops_arg, final_arg, curve_arg, interrogation_arg = [*args, *self.api_defaults(p.tab)[len(args) :]]
        loops = _int(loops_arg, "Loops", 1, MAX_LOOPS)
        final = _float(final_arg, "Final denoising strength", 0.0, 1.0)
        curve = _choice(curve_arg, CURVES, "Denoising strength curve")
        interrogation = _choice(interrogation_arg, INTERROGATIONS, "Append interrogated prompt")
        request = p.request
        if not isinstance(request, Img2ImgRequest):
            raise ValueError("Loopback works in img2img: it feeds each output back in as the next input")
        easel = p.easel
        if interrogation == "DeepBooru":
            raise ValueError("DeepBooru is not available in Easel; use CLIP or None")
        if interrogation == "CLIP" and not _can_interrogate(easel):
            raise ValueError("this Easel cannot interrogate images; use None")

        initial = request.denoising_strength
        batches = request.n_iter
        base = request.model_copy(
            update={
                "batch_size": 1,
                "n_iter": 1,
                "save_images": False,  # each loop's image is saved below, in the request's format
                "samples_format": "png",  # lossless, so the next loop starts from the exact pixels
                "extra_infotext": {
                    **request.extra_infotext,
                    "Final denoising strength": f"{final:g}",
                    "Denoising curve": curve,
                },
            }
        )
        seed = request.seed
        first: GenerationResult | None = None
        warnings: list[str] = []
        shown: list[tuple[Image.Image, GeneratedImage]] = []
        interrupted = False
        for batch in range(batches):
            inputs = list(request.init_images)
            mask = request.mask
            strength, fill = initial, request.inpainting_fill
            last: tuple[Image.Image, GeneratedImage] | None = None
            for loop in range(loops):
                if easel.interrupted:
                    interrupted = True
                    break
                prompt = request.prompt
                if interrogation == "CLIP":
                    prompt = _with_interrogation(
                        easel, request.prompt, _decode(inputs[0], "the loop's input")
                    )
                done = batch * loops + loop
                easel.set_progress(
                    f"Loopback: iteration {loop + 1}/{loops}, batch {batch + 1}/{batches}",
                    done / (batches * loops),
                )
                job = base.model_copy(
                    update={
                        "init_images": inputs,
                        "mask": mask,
                        "denoising_strength": strength,
                        "inpainting_fill": fill,
                        "seed": seed,
                        "prompt": prompt,
                    }
                )
                result = easel.img2img(job)
                warnings.extend(w for w in result.warnings if w not in warnings)
                if not result.images:
                    interrupted = True
                    break
                first = first or result
                made = result.images[0]
                image = _decode(made.png_bytes, "the loop's image")
                saving = job.model_copy(
                    update={"save_images": request.save_images, "samples_format": request.samples_format}
                )
                saved = easel.encode_image(image, saving, made.infotext, made.seed)
                last = (image, saved)
                if batches == 1:
                    shown.append(last)
                if result.interrupted:
                    interrupted = True
                    break
                seed = made.seed + 1
                strength = round(loop_strength(loop + 1, loops, initial, final, curve), 4)
                inputs = [_encode(image)]
                mask = _mask_for(mask, image, request.resize_mode)
                fill = 1  # later loops start from the previous image: masked content "original"
            if batches > 1 and last is not None:
                shown.append(last)
            if interrupted:
                break
        if first is None:
            return GenerationResult(
                request=request,
                images=[],
                model_name="",
                model_hash=None,
                interrupted=True,
                warnings=warnings,
            )
        images = [saved for _, saved in shown]
        if len(shown) > 1 and easel.options().get("return_grid", True):
            grid = _row([image for image, _ in shown])
            grid_request = request.model_copy(update={"seed": shown[0][1].seed})  # the seed it is saved under
            images.insert(0, easel.save_grid(grid, grid_request, shown[0][1].infotext))
        easel.set_progress("Loopback: done", 1.0)
        return first.model_copy(
            update={"request": request, "images": images, "interrupted": interrupted, "warnings": warnings}
        )


def _can_interrogate(easel: Easel | None) -> bool:
    return callable(getattr(easel, "interrogate", None))


def _with_interrogation(easel: Easel, prompt: str, image: Image.Image) -> str:
    found = str(easel.interrogate(image)).strip()
    if not found:
        return prompt
    return f"{prompt}, {found}" if prompt else found


def _mask_for(mask: str | None, image: Image.Image, resize_mode: int) -> str | None:
    """The request's mask at the size of the next loop's input (img2img's output size can differ)."""
    if mask is None:
        return None
    current = _decode(mask, "the mask")
    if current.size == image.size:
        return mask
    if resize_mode == 1:  # crop and resize: the image was cropped the same way
        resized = ImageOps.fit(current, image.size, Image.Resampling.LANCZOS)
    else:
        resized = current.resize(image.size, Image.Resampling.LANCZOS)
    return _encode(resized)


def _row(images: Sequence[Image.Image]) -> Image.Image:
    """The images side by side (A1111's loopback grid has one row)."""
    width, height = images[0].size
    grid = Image.new("RGB", (width * len(images), height))
    for index, image in enumerate(images):
        grid.paste(
            image.resize((width, height)) if image.size != (width, height) else image, (index * width, 0)
        )
    return grid


def _encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(data: str | bytes | None, what: str) -> Image.Image:
    if data is None:
        raise ValueError(f"{what} is missing")
    try:
        if isinstance(data, str):
            data = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data)
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise ValueError(f"{what} is not a readable image ({type(exc).__name__})") from exc
    return image


def _int(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def _float(value: Any, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {value!r}")
    return number


def _choice(value: Any, choices: Sequence[str], name: str) -> str:
    text = str(value).strip().lower()
    for choice in choices:
        if choice.lower() == text:
            return choice
    raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
