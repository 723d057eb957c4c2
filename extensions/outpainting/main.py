"""Outpainting: A1111's "Poor man's outpainting" and "Outpainting mk2" img2img scripts.

Both extend the first init image by some pixels on the chosen sides and repaint the new area with
img2img and a mask, window by window (:mod:`canvas`); mk2 first fills the new area with noise in the
image's colours (:mod:`noise`) and repaints it from there. The arguments (``script_args``) are A1111's:

* Poor man's outpainting: ``[pixels, mask_blur, inpainting_fill, direction]``
  (defaults ``[128, 4, 0, ["left", "right", "up", "down"]]``; ``inpainting_fill`` is the index of
  fill / original / latent noise / latent nothing, or its name);
* Outpainting mk2: ``[info, pixels, mask_blur, direction, noise_q, color_variation]``
  (defaults ``[None, 128, 8, [...], 1.0, 0.05]``; ``info`` is the hint text and is ignored).

Each of the request's ``n_iter`` x ``batch_size`` images is one outpainted picture (seeds counting up);
the windows' jobs save nothing, the finished picture is saved with the first window's infotext.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from webui.extensions.api import (
    Extension,
    GeneratedImage,
    GenerationResult,
    Img2ImgRequest,
    Script,
    ScriptRun,
    Tab,
)

from . import canvas, noise

POOR_MANS = "Poor man's outpainting"
MK2 = "Outpainting mk2"
FILLS: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
ALL_DIRECTIONS = list(canvas.DIRECTIONS)
MK2_HINT = "Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8"
MAX_MASK_BLUR = 64  # Img2ImgRequest.mask_blur's limit


def setup(ext: Extension) -> None:
    ext.add_script(PoorMansOutpainting())
    ext.add_script(OutpaintingMk2())


class PoorMansOutpainting(Script):
    """Extend the canvas and inpaint the new area in request-sized tiles (masked content as chosen)."""

    title = POOR_MANS
    tabs: tuple[Tab, ...] = ("img2img",)

    def ui(self, tab: Tab) -> list[Any]:
        import gradio as gr

        prefix = "img2img_script_poor_mans_outpainting"
        return [
            gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id=f"{prefix}_pixels"),
            gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id=f"{prefix}_mask_blur"),
            gr.Radio(
                list(FILLS), value="fill", type="index", label="Masked content", elem_id=f"{prefix}_fill"
            ),
            gr.CheckboxGroup(
                ALL_DIRECTIONS,
                value=ALL_DIRECTIONS,
                label="Outpainting direction",
                elem_id=f"{prefix}_direction",
            ),
        ]

    def api_defaults(self, tab: Tab) -> list[Any]:
        return [128, 4, 0, list(ALL_DIRECTIONS)]

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        pixels, mask_blur, fill, direction = _pad(args, self.api_defaults(p.tab), 4)
        pixels = _int(pixels, "Pixels to expand", 1, 2048)
        mask_blur = _int(mask_blur, "Mask blur", 0, 256)
        fill_index = _fill(fill)
        request = _img2img_request(p, self.title)
        image = _first_image(request)
        expansion = canvas.plan_expansion(
            image.width, image.height, pixels, canvas.parse_directions(direction)
        )
        windows = [
            ("tile", box) for box in canvas.grid_windows(expansion, request.width, request.height, pixels)
        ]
        job = request.model_copy(
            update={"mask_blur": min(MAX_MASK_BLUR, mask_blur * 2), "inpainting_fill": fill_index}
        )
        return _outpaint(
            p, self.title, image, expansion, overlap=mask_blur * 2, windows=windows, job=job, best_first=True
        )


class OutpaintingMk2(Script):
    """Extend the canvas, fill the new area with noise in the image's colours, and denoise it side by side."""

    title = MK2
    tabs: tuple[Tab, ...] = ("img2img",)

    def ui(self, tab: Tab) -> list[Any]:
        import gradio as gr

        prefix = "img2img_script_outpainting_mk2"
        return [
            gr.HTML(f"<p style='margin-bottom:0.75em'>{MK2_HINT}</p>"),
            gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id=f"{prefix}_pixels"),
            gr.Slider(0, 64, value=8, step=1, label="Mask blur", elem_id=f"{prefix}_mask_blur"),
            gr.CheckboxGroup(
                ALL_DIRECTIONS,
                value=ALL_DIRECTIONS,
                label="Outpainting direction",
                elem_id=f"{prefix}_direction",
            ),
            gr.Slider(
                0.0,
                4.0,
                value=1.0,
                step=0.01,
                label="Fall-off exponent (lower=higher detail)",
                elem_id=f"{prefix}_noise_q",
            ),
            gr.Slider(
                0.0, 1.0, value=0.05, step=0.01, label="Color variation", elem_id=f"{prefix}_color_variation"
            ),
        ]

    def api_defaults(self, tab: Tab) -> list[Any]:
        return [None, 128, 8, list(ALL_DIRECTIONS), 1.0, 0.05]

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        _info, pixels, mask_blur, direction, noise_q, color_variation = _pad(
            args, self.api_defaults(p.tab), 6
        )
        pixels = _int(pixels, "Pixels to expand", 1, 2048)
        mask_blur = _int(mask_blur, "Mask blur", 0, 256)
        falloff = _float(noise_q, "Fall-off exponent", 0.0, 4.0)
        variation = _float(color_variation, "Color variation", 0.0, 1.0)
        request = _img2img_request(p, self.title)
        image = _first_image(request)
        expansion = canvas.plan_expansion(
            image.width, image.height, pixels, canvas.parse_directions(direction)
        )
        windows = canvas.sweep_windows(expansion, request.width, request.height)
        job = request.model_copy(
            update={"mask_blur": min(MAX_MASK_BLUR, mask_blur * 4), "inpainting_fill": 1}
        )

        def prepare(tile: Image.Image, mask: Image.Image) -> Image.Image:
            return noise.matched_noise(tile, mask, falloff, variation)

        return _outpaint(
            p, self.title, image, expansion, overlap=mask_blur, windows=windows, job=job, prepare=prepare
        )


# ---------------------------------------------------------------------------------------------- the run


def _outpaint(
    p: ScriptRun,
    title: str,
    image: Image.Image,
    expansion: Any,
    *,
    overlap: int,
    windows: Sequence[tuple[str, tuple[int, int, int, int]]],
    job: Img2ImgRequest,
    prepare: Callable[[Image.Image, Image.Image], Image.Image] | None = None,
    best_first: bool = False,
) -> GenerationResult:
    """Outpaint ``image`` once per requested image; each window is one img2img job (nothing saved), the
    finished canvases are saved (and, when there are several, a grid of them). ``best_first`` takes the
    windows with the most known pixels first instead of in the given order."""
    count = job.batch_size * job.n_iter
    job = job.model_copy(
        update={
            "batch_size": 1,
            "n_iter": 1,
            "mask": None,
            "inpaint_full_res": False,
            "inpainting_mask_invert": 0,
            "resize_mode": 0,
            "sd_upscale": None,
            "save_images": False,
            "samples_format": "png",  # lossless, so each window builds on exact pixels
        }
    )
    total = count * len(windows)
    done = 0
    seed = job.seed
    first: GenerationResult | None = None
    warnings: list[str] = []
    pictures: list[tuple[Image.Image, GeneratedImage]] = []
    interrupted = False
    for _ in range(count):
        picture = noise.continue_edges(canvas.extend_canvas(image, expansion), canvas.new_area(expansion))
        pending = canvas.outpaint_mask(expansion, overlap)
        started: GeneratedImage | None = None
        remaining = list(windows)
        while remaining:
            index = canvas.most_known_first(pending, [box for _, box in remaining]) if best_first else 0
            label, box = remaining.pop(index)
            if p.easel.interrupted:
                interrupted = True
                break
            mask = canvas.window_mask(pending, box)
            done += 1
            if mask is None:
                continue
            tile = picture.crop(box)
            if prepare is not None:
                tile = prepare(tile, mask)
            p.easel.set_progress(f"{title}: {label} {done} of {total}", (done - 1) / total)
            result = p.easel.img2img(
                job.model_copy(
                    update={
                        "init_images": [_encode(tile)],
                        "mask": _encode(mask),
                        "width": box[2] - box[0],
                        "height": box[3] - box[1],
                        "seed": seed,
                        "extra_infotext": dict(job.extra_infotext),
                    }
                )
            )
            warnings.extend(w for w in result.warnings if w not in warnings)
            if not result.images:
                interrupted = True
                break
            first = first or result
            started = started or result.images[0]
            picture.paste(_decode(result.images[0].png_bytes, "the generated window"), box[:2])
            canvas.mark_done(pending, box)
            seed = result.images[0].seed + 1
            if result.interrupted:
                interrupted = True
                break
        if started is not None:
            pictures.append((picture, started))
        if interrupted:
            break
    if first is None:
        return GenerationResult(
            request=p.request, images=[], model_name="", model_hash=None, interrupted=True
        )
    images = [p.easel.encode_image(pic, p.request, info.infotext, info.seed) for pic, info in pictures]
    if len(pictures) > 1 and p.easel.options().get("return_grid", True):
        grid = _grid([pic for pic, _ in pictures])
        grid_request = p.request.model_copy(
            update={"seed": pictures[0][1].seed}
        )  # the seed it is saved under
        images.insert(0, p.easel.save_grid(grid, grid_request, pictures[0][1].infotext))
    p.easel.set_progress(f"{title}: done", 1.0)
    return first.model_copy(
        update={"request": p.request, "images": images, "interrupted": interrupted, "warnings": warnings}
    )


def _grid(pictures: Sequence[Image.Image]) -> Image.Image:
    """Pictures side by side in rows of a near-square grid (all have one size)."""
    columns = 1
    while columns * columns < len(pictures):
        columns += 1
    rows = -(-len(pictures) // columns)
    width, height = pictures[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, picture in enumerate(pictures):
        grid.paste(picture, ((index % columns) * width, (index // columns) * height))
    return grid


# ------------------------------------------------------------------------------------------ arguments


def _img2img_request(p: ScriptRun, title: str) -> Img2ImgRequest:
    if not isinstance(p.request, Img2ImgRequest):
        raise ValueError(f"{title} works in img2img: it extends the init image")
    return p.request


def _first_image(request: Img2ImgRequest) -> Image.Image:
    return _decode(request.init_images[0], "the init image").convert("RGB")


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


def _pad(args: Sequence[Any], defaults: Sequence[Any], count: int) -> list[Any]:
    """The script's arguments: those given, then A1111's defaults for the rest."""
    if len(args) > count:
        raise ValueError(f"expected at most {count} script arguments, got {len(args)}")
    return [*args, *defaults[len(args) :]]


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


def _fill(value: Any) -> int:
    """Masked content: an index (as A1111's radio sends it) or one of the names."""
    if isinstance(value, str) and not value.strip().isdigit():
        name = value.strip().lower()
        if name not in FILLS:
            raise ValueError(f"Masked content must be one of {', '.join(FILLS)}, got {value!r}")
        return FILLS.index(name)
    return _int(value, "Masked content", 0, len(FILLS) - 1)
