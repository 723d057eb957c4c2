"""ControlNet: models, preprocessors, and applying units to a denoising pass."""
