"""Stable Diffusion as a stochastic policy: loading, LoRA, the DDIM step with log-prob, sampling."""
