"""Fine-tuning: datasets in kohya's layout (``dataset``), LoRA training on a loaded checkpoint (``lora``) and
the kohya ``.safetensors`` format A1111, Forge, ComfyUI and Easel read (``kohya``)."""
