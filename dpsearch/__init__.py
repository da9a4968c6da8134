"""dpsearch: DP fine-tuning of latent diffusion models with a search over which attention layers to train."""

__version__ = "0.1.0"
