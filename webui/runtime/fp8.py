"""fp8 weight storage (A1111's "FP8 weight" option, Forge's trick for small cards).

The UNet's and the text encoders' Linear and Conv layers keep their weights in ``float8_e4m3fn`` and are
cast up to the model's compute dtype for the duration of each layer's forward, by diffusers' layerwise
casting hooks. Norms and embeddings keep their precision. The VAE is left as it is (its weights are small
and its output is what the user sees). A model once stored in fp8 stays so: switching the option off
loads the checkpoint again.
"""

from __future__ import annotations

import torch

from webui.runtime.loader import LoadedModel

STORAGE_DTYPE = getattr(torch, "float8_e4m3fn", None)


def store_in_fp8(model: LoadedModel, compute_dtype: torch.dtype) -> None:
    """Put ``model``'s UNet and text encoders in fp8 storage, computing in ``compute_dtype``."""
    from diffusers.hooks import apply_layerwise_casting

    if STORAGE_DTYPE is None:
        raise RuntimeError("this torch has no float8 type; turn the FP8 weight option off")
    # The UNet's own skip list keeps its norms (and diffusers' defaults its patch/position embeddings).
    model.unet.enable_layerwise_casting(storage_dtype=STORAGE_DTYPE, compute_dtype=compute_dtype)
    for encoder in model.text_encoders:
        apply_layerwise_casting(
            encoder,
            STORAGE_DTYPE,
            compute_dtype,
            skip_modules_pattern=("norm",),
            skip_modules_classes=(torch.nn.Embedding,),  # token and position tables, as A1111 keeps them
        )
    model.fp8 = True
