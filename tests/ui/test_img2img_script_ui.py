"""The img2img tab's Script dropdown: "SD upscale" through the Gradio app (tiny SD 1.5, gradio_client)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.integration.test_img2img_service import picture
from webui.domain.sd_upscale import SdUpscaleParams
from webui.ui.img2img_scripts import sd_upscale_params

gradio_client = pytest.importorskip("gradio_client")


def test_widget_values_make_the_request_field() -> None:
    assert sd_upscale_params("None", 64, "Lanczos", 2.0) is None
    assert sd_upscale_params("SD upscale", 32.0, "Nearest", 1.5) == SdUpscaleParams(
        overlap=32, upscaler="Nearest", scale=1.5
    )


@pytest.mark.slow
def test_sd_upscale_from_the_img2img_tab(data_dir: Path, tmp_path: Path) -> None:
    from webui.container import build_services
    from webui.settings import Settings
    from webui.ui.app import build_ui, launch_kwargs

    services = build_services(Settings(data_dir=data_dir, preload_model=False))
    blocks = build_ui(services)
    blocks.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_kwargs())
    init = tmp_path / "init.png"
    picture(48, 40).save(init)
    try:
        client = gradio_client.Client(blocks.local_url, verbose=False)
        _preview, _progress, gallery, infotext, _error = client.predict(
            image=gradio_client.handle_file(str(init)),
            editor={"background": None, "layers": [], "composite": None},
            upload_image=None,
            upload_mask=None,
            prompt="a red circle",
            steps=2,
            width=64,
            height=64,
            seed=3,
            denoising_strength=0.3,
            script_name="SD upscale",
            sd_upscale_overlap=16,
            sd_upscale_upscaler="Lanczos",
            sd_upscale_scale=2.0,
            api_name="/img2img",
        )
        client.close()
        assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in infotext
        with Image.open(gallery[0]["image"]) as result:
            assert result.size == (96, 80)
    finally:
        blocks.close()
        services.generation.shutdown()
