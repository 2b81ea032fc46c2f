"""critic-unlearn: remove concepts from text-to-image diffusion models with critic-guided RL."""

__version__ = "0.1.0"
