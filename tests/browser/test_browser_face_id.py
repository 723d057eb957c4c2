"""A real browser: a portrait in an IP-Adapter FaceID unit of txt2img. The wrong preprocessor is refused
with the one to choose, the preview boxes the face the unit uses in green, and the image is generated with
the unit in its infotext."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import OpenPage, enable_unit, generate, set_size_steps_seed, wait_for_text
from tests.fixtures.face_id_files import write_face_models
from tests.fixtures.ip_adapter_files import write_ip_adapter
from tests.fixtures.tiny_models import tiny_sd15_components
from tests.integration.test_face_id import portrait

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def data_dir(data_dir: Path) -> Path:
    models = data_dir / "models"
    unet = tiny_sd15_components()["unet"]
    write_ip_adapter(models / "ControlNet" / "ip-adapter-faceid_sd15.bin", unet, variant="faceid")
    write_face_models(models)
    return data_dir


def test_a_portrait_in_a_face_id_unit(data_dir: Path, open_page: OpenPage, tmp_path: Path) -> None:
    picture = tmp_path / "portrait.png"
    portrait().save(picture)
    unit = "#txt2img_controlnet_0"
    page = open_page(height=1600)
    enable_unit(page, picture, "ip-adapter-faceid_sd15", unit)
    page.fill("#txt2img_prompt textarea", "a portrait")
    set_size_steps_seed(page, "txt2img", steps=4, seed=3)
    # wrong input first: a CLIP preprocessor with a FaceID model
    page.locator(f"{unit}_module input").click()
    page.get_by_role("option", name="ip-adapter_clip_sd15", exact=True).click()
    page.click("#txt2img_generate")
    wait_for_text(page, "#txt2img_error", "choose the ip-adapter_face_id preprocessor", timeout=60_000)
    page.locator(f"{unit}_module input").click()
    page.get_by_role("option", name="ip-adapter_face_id", exact=True).click()
    page.click(f"{unit}_preview")
    page.wait_for_selector(f"{unit}_detected img", timeout=60_000)
    source = page.locator(f"{unit}_detected img").first.get_attribute("src") or ""
    preview = _fetch(page, source)
    red, green, blue = (int(v) for v in preview[161, 300])  # the stand-in detector's face: its box's top
    assert green > 180 and red < 60 and blue < 60  # green (the page shows a lossy copy of the preview)
    infotext = generate(page, "txt2img", "Module: ip-adapter_face_id")
    assert "Model: ip-adapter-faceid_sd15 [" in infotext
    page.screenshot(path=str(tmp_path / "face-id.png"), full_page=True)


def _fetch(page: object, source: str) -> np.ndarray:
    """The pixels of an image the page shows (a data URL or a file URL of the app)."""
    if source.startswith("data:"):
        data = base64.b64decode(source.split(",", 1)[1])
    else:
        data = page.request.get(source).body()  # type: ignore[attr-defined]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
