"""Easel: a self-hosted Stable Diffusion studio. ``python app.py --help`` lists the options."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from webui.cli import settings_from_args

    settings = settings_from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from webui.container import build_services
    from webui.server import serve

    serve(settings, lambda: build_services(settings), preload=settings.preload_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
