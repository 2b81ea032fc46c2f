"""One DDIM step (eta > 0) that also returns the Gaussian log-probability of the transition.

The mean and variance mirror `diffusers.DDIMScheduler.step` line for line (pinned by a parity
test), so x_prev = mean + std * noise is the scheduler's own sample. Given `prev_sample`, the
step re-scores a stored transition instead of sampling one: that is how the learner computes
pi_theta(a_k | s_k) for importance ratios. Timesteps may differ per batch element.
Origin: DDIM (Song et al. 2020), eq. 12 and 16; DDPO's `ddim_step_with_logprob`, without its clamp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

Reduction = Literal["sum", "mean"]


@dataclass(frozen=True)
class DDIMStepOutput:
    prev_sample: Tensor  # (B, C, H, W) x_{t_prev}
    log_prob: Tensor  # (B,) float32; 0 where std == 0 (a deterministic step has no density)
    mean: Tensor  # (B, C, H, W) mu_theta(x_t, t, c)
    std: Tensor  # (B, 1, 1, 1) sigma_t, float32
    pred_original_sample: Tensor  # (B, C, H, W) x0_hat


def alphas_at(scheduler: DDIMScheduler, timestep: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """abar_t and abar_prev, shaped (B, 1, 1, 1), exactly as diffusers picks them."""
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    t = timestep.expand(batch) if timestep.ndim == 0 else timestep
    prev = t - step
    ac = scheduler.alphas_cumprod.to(t.device)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=ac.dtype, device=ac.device)
    # clamp only keeps the index valid; torch.where then picks final_alpha_cumprod for prev < 0
    alpha_prod_t_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], final)
    return ac[t].reshape(batch, 1, 1, 1), alpha_prod_t_prev.reshape(batch, 1, 1, 1)


def step_std(scheduler: DDIMScheduler, timesteps: Tensor, eta: float) -> Tensor:
    """sigma_t of the DDIM step at each timestep (any shape), as `ddim_step_with_logprob` uses."""
    t = timesteps.reshape(-1)
    a_t, a_prev = alphas_at(scheduler, t, t.shape[0])
    var = ((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)
    return (eta * var**0.5).reshape(timesteps.shape).float()


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: Tensor,
    timestep: int | Tensor,
    sample: Tensor,
    eta: float,
    generator: torch.Generator | list[torch.Generator] | None = None,
    variance_noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
    reduction: Reduction = "sum",
) -> DDIMStepOutput:
    """DDIM step x_t -> x_{t_prev} with its log-probability under N(mean, std^2 I).

    `timestep` is an int or a (B,) tensor. Give `prev_sample` to score a stored transition,
    `variance_noise` to fix the noise (parity with diffusers), or `generator` to draw it.
    """
    if not eta > 0:
        raise ValueError(
            f"eta = {eta}: DDIM with eta = 0 is deterministic and has no log-probability; "
            "use eta > 0 (sampler.eta in the config)"
        )
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction = {reduction!r}; use 'sum' or 'mean'")
    cfg = scheduler.config
    t = torch.as_tensor(timestep, device=sample.device, dtype=torch.long)
    if t.ndim == 1 and t.shape[0] != sample.shape[0]:
        raise ValueError(f"{t.shape[0]} timesteps for a batch of {sample.shape[0]}")
    alpha_prod_t, alpha_prod_t_prev = alphas_at(scheduler, t, sample.shape[0])
    beta_prod_t = 1 - alpha_prod_t

    if cfg.prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (
            0.5
        )
        pred_epsilon = model_output
    elif cfg.prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (
            0.5
        )
    elif cfg.prediction_type == "v_prediction":
        pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    else:
        raise ValueError(f"unsupported scheduler prediction_type {cfg.prediction_type!r}")

    if cfg.thresholding:
        pred_original_sample = scheduler._threshold_sample(pred_original_sample)
    elif cfg.clip_sample:
        r = cfg.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-r, r)

    # sigma_t(eta), DDIM eq. 16; same expression as DDIMScheduler._get_variance
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance ** (0.5)

    pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
    mean = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction

    if prev_sample is None:
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if variance_noise is None:
            variance_noise = randn_tensor(
                model_output.shape,
                generator=generator,
                device=model_output.device,
                dtype=model_output.dtype,
            )
        prev_sample = mean + std_dev_t * variance_noise

    std = std_dev_t.to(torch.float32)
    log_prob = gaussian_log_prob(prev_sample, mean, std, reduction)
    return DDIMStepOutput(
        prev_sample=prev_sample.to(sample.dtype),
        log_prob=log_prob,
        mean=mean,
        std=std,
        pred_original_sample=pred_original_sample,
    )


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduction: Reduction) -> Tensor:
    """log N(x; mean, std^2 I) per batch element, in fp32; 0 where std == 0."""
    x32, m32 = x.to(torch.float32), mean.to(torch.float32)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    lp = -((x32 - m32) ** 2) / (2 * safe**2) - torch.log(safe) - 0.5 * math.log(2 * math.pi)
    dims = tuple(range(1, x.ndim))
    lp = lp.sum(dims) if reduction == "sum" else lp.mean(dims)
    return torch.where(std.reshape(-1) > 0, lp, torch.zeros_like(lp))
