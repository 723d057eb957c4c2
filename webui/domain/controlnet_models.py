"""ControlNet models found on disk (``models/ControlNet``): what they are and which checkpoints they fit.

Pure data: no torch, no file access. The registry fills these records from safetensors headers and
diffusers configs; the runtime loads them. Names and titles follow the sd-webui-controlnet extension, so
``title`` is what its ``/controlnet/model_list`` returns and what its infotext writes
(``control_v11p_sd15_openpose [cab727d4]``: the file stem and A1111's 8-hex legacy hash).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePosixPath

from pydantic import BaseModel


class ControlNetKind(StrEnum):
    """What the model adds to the UNet: a ControlNet (residuals from a UNet copy), a T2I-Adapter (residuals
    from a small encoder) or an IP-Adapter (image tokens its own cross-attention projections attend to)."""

    CONTROLNET = "controlnet"
    T2I_ADAPTER = "t2i_adapter"
    IP_ADAPTER = "ip_adapter"  # image prompt: extra image tokens in the UNet's cross-attention
    LLLITE = "lllite"  # ControlNet-LLLite: small modules in front of the UNet's attention projections


class ControlNetLayout(StrEnum):
    """How the weights are stored.

    * ``ldm``: one file in the original layout (``control_model.input_blocks...``, also accepted without the
      ``control_model.`` prefix); ``.pth`` / ``.ckpt`` files are assumed to be this until loaded.
    * ``diffusers_file``: one file with diffusers key names (``controlnet_cond_embedding...``).
    * ``diffusers``: a folder with ``config.json`` and the weights of a diffusers ``ControlNetModel``.
    * ``t2i_adapter``: a folder with ``config.json`` and the weights of a diffusers ``T2IAdapter``.
    * ``t2i_adapter_file``: one full T2I-Adapter file, with diffusers' keys or TencentARC's original ones
      (``t2iadapter_canny_sd15v2.pth``, ``t2i-adapter_diffusers_xl_canny.safetensors``).
    * ``control_lora``: one Control-LoRA file (Stability's SDXL Control-LoRAs, ``lora_controlnet`` marker):
      the ControlNet as low-rank ``.up`` / ``.down`` differences to the checkpoint's own UNet, plus the
      layers a UNet lacks (hint encoder, zero convolutions) in full; built against the loaded checkpoint.
    * ``ip_adapter``: one IP-Adapter file (``image_proj.*`` and ``ip_adapter.*`` weights; ``.safetensors``,
      or a ``.bin`` / ``.pth`` holding the two parts).
    * ``lllite``: one ControlNet-LLLite file (``lllite_unet_*`` modules, kohya-ss's SDXL format).
    """

    LDM = "ldm"
    DIFFUSERS_FILE = "diffusers_file"
    DIFFUSERS = "diffusers"
    T2I_ADAPTER = "t2i_adapter"
    T2I_ADAPTER_FILE = "t2i_adapter_file"
    IP_ADAPTER = "ip_adapter"
    CONTROL_LORA = "control_lora"
    LLLITE = "lllite"

    @property
    def is_folder(self) -> bool:
        return self in (ControlNetLayout.DIFFUSERS, ControlNetLayout.T2I_ADAPTER)


# The model base each checkpoint family uses: ControlNets are trained against one base's UNet.
_FAMILY_BASES = {
    "sd1": "sd1",
    "sd1-inpaint": "sd1",
    "sd2": "sd2",
    "sd2-v": "sd2",
    "sd2-inpaint": "sd2",
    "sdxl": "sdxl",
    "sdxl-refiner": "sdxl",
    "sdxl-inpaint": "sdxl",
}

BASES = ("sd1", "sd2", "sdxl")


class ControlNetRecord(BaseModel):
    """One ControlNet (or T2I-Adapter) found in ``models/ControlNet``.

    ``name`` is the path relative to the ControlNet folder with ``/`` separators (a file keeps its
    extension; a folder is its relative path). ``base`` is ``sd1`` / ``sd2`` / ``sdxl``, or ``None`` when the
    weights do not tell (a ``.pth`` before loading, a non-standard cross-attention width); ``context_dim`` is
    the width of the text embeddings its cross-attention expects. ``legacy_hash`` is A1111's 8-hex hash of
    the weights file (for a folder, of its main weights file). ``error`` says why the entry cannot be used;
    it is still listed so that one bad download never hides the rest.
    """

    name: str
    path: str
    layout: ControlNetLayout
    kind: ControlNetKind = ControlNetKind.CONTROLNET
    size: int = 0
    mtime: float = 0.0
    base: str | None = None
    context_dim: int | None = None
    legacy_hash: str | None = None
    error: str | None = None

    @property
    def model_name(self) -> str:
        """The name without a file extension (``sub/control_v11p_sd15_canny``), as the extension lists it."""
        if self.layout.is_folder:
            return self.name
        path = PurePosixPath(self.name)
        return str(path.with_suffix("")) if path.suffix else self.name

    @property
    def title(self) -> str:
        """``"<model_name> [<legacy hash>]"`` (the extension's model list entry), or the name alone."""
        return f"{self.model_name} [{self.legacy_hash}]" if self.legacy_hash else self.model_name


def base_of_family(family_value: str) -> str:
    """The ControlNet base (``sd1`` / ``sd2`` / ``sdxl``) of an Easel ``ModelFamily`` value.

    Raises ``ValueError`` for an unknown family value.
    """
    try:
        return _FAMILY_BASES[str(family_value)]
    except KeyError:
        known = ", ".join(_FAMILY_BASES)
        raise ValueError(f"unknown model family {family_value!r}; expected one of {known}") from None


def fits(record: ControlNetRecord, family_value: str) -> bool:
    """Whether ``record`` can be used with a checkpoint of ``family_value``.

    An unknown base fits everything (the runtime checks again once the weights are loaded).
    """
    if record.base is None:
        return True
    return record.base == base_of_family(family_value)
