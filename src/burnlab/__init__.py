"""burnlab: an overtraining experiment harness for text-to-image diffusion models."""
