"""Easel's reference models: a procedural shapes dataset and the code that trains the demo/test models."""
