"""Image metadata in A1111's format: the infotext (write/parse) and its PNG/EXIF embedding. No torch."""

from webui.metadata.image_io import (
    dated_output_dir,
    encode_image,
    read_infotext,
    save_image_atomic,
)
from webui.metadata.infotext import (
    build_infotext,
    generation_params,
    parse_infotext,
    quote,
    request_fields_from_infotext,
)

__all__ = [
    "build_infotext",
    "dated_output_dir",
    "encode_image",
    "generation_params",
    "parse_infotext",
    "quote",
    "read_infotext",
    "request_fields_from_infotext",
    "save_image_atomic",
]
