"""Joint training of the tiny text encoder and UNet on pre-encoded latents.

What the feasibility probe found mattered, in order: many small updates (batch 32) rather than
few big ones, min-SNR weighting, encoding each distinct caption once per step (which makes the
text encoder nearly free), and sampling from an EMA of the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel

from critic_unlearn.diffusion.tiny import clip_tokenizer, sd_ddim_scheduler
from critic_unlearn.toyworld.pipeline import (
    DiffusionConfig,
    build_text_encoder,
    build_unet,
)
from critic_unlearn.toyworld.progress import stage
from critic_unlearn.toyworld.training import EMA, batch_indices, set_lr, warmup_cosine

# evaluate(unet, text_encoder) -> metrics, called on the EMA models every cfg.eval_every steps
Evaluate = Callable[[UNet2DConditionModel, CLIPTextModel], dict[str, float]]


def tokenize(captions: list[str], max_length: int) -> Tensor:
    """(N, max_length) int64 CLIP token ids, padded as the pipeline pads them."""
    tok = clip_tokenizer(max_length)
    return tok(
        captions, padding="max_length", max_length=max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


def min_snr_weights(alphas_cumprod: Tensor, t: Tensor, gamma: float) -> Tensor:
    """Per-sample weight min(SNR, gamma) / SNR for epsilon prediction."""
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


def train_diffusion(
    latents: Tensor,  # (N, C, h, w) already multiplied by the VAE's scaling factor
    captions: list[str],
    cfg: DiffusionConfig,
    evaluate: Evaluate | None = None,
) -> tuple[UNet2DConditionModel, CLIPTextModel, list[dict[str, float]]]:
    """Returns the EMA UNet, the EMA text encoder and the periodic evaluations."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    unet = build_unet(cfg, latents.shape[1], latents.shape[-1]).train()
    text_encoder = build_text_encoder(cfg).train()
    tokens = tokenize(captions, cfg.max_length)  # (N, L)
    empty = tokenize([""], cfg.max_length)[0]  # (L,)
    alphas = sd_ddim_scheduler().alphas_cumprod  # (1000,)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema_unet, ema_text = EMA(unet, cfg.ema_decay), EMA(text_encoder, cfg.ema_decay)
    history: list[dict[str, float]] = []
    with stage("text encoder + UNet", cfg.steps) as bar:
        for step, idx in enumerate(batch_indices(len(captions), cfg.batch_size, cfg.steps, g)):
            set_lr(opt, cfg.lr * warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr_floor))
            b = len(idx)
            tok = tokens[idx].clone()
            tok[torch.rand(b, generator=g) < cfg.caption_dropout] = empty
            unique, inverse = torch.unique(tok, dim=0, return_inverse=True)
            cond = text_encoder(unique)[0][inverse]  # (B, L, D)
            z0 = latents[idx]
            t = torch.randint(0, len(alphas), (b,), generator=g)
            noise = torch.randn(z0.shape, generator=g)
            a = alphas[t].view(b, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            pred = unet(zt, t, encoder_hidden_states=cond).sample
            per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
            loss = (min_snr_weights(alphas, t, cfg.min_snr_gamma) * per_sample).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema_unet.update(unet)
            ema_text.update(text_encoder)
            bar.update(loss=loss.item())
            done = step + 1
            if evaluate is not None and cfg.eval_every and done % cfg.eval_every == 0:
                metrics = {"step": float(done), "elapsed_s": bar.elapsed,
                           **evaluate(ema_unet.model, ema_text.model)}
                history.append(metrics)
                bar.note(f"step {done}: " + " ".join(
                    f"{k} {v:.3g}" for k, v in metrics.items() if k != "step"))
    return ema_unet.model, ema_text.model, history
