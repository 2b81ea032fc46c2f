"""Losses for the policy and the critic: pure functions on tensors, no Ray, no I/O.

The policy loss is PPO's clipped surrogate per sampled denoising step (Schulman et al. 2017, as
used for diffusion by DDPO), plus a KL penalty to the base policy (adapters disabled) that is
closed-form because both Gaussians share sigma_t. The critic regresses value targets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def ppo_clipped_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate: -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)).

    rho = exp(log_prob - old_log_prob) against the stored behaviour log-prob. Where the ratio
    has moved past the clip range in the advantage's direction the gradient is exactly zero.

    log_prob: Tensor  # (N,)      log pi_theta(a | s), differentiable
    old_log_prob: Tensor  # (N,)  log mu(a | s) from the actor, treated as a constant
    advantages: Tensor  # (N,)    treated as a constant
    returns: (loss scalar, info) with detached approx_kl (DDPO's 0.5 * mean(log-ratio^2)),
        clip_fraction (share of steps with |rho - 1| > eps) and ratio_mean.
    """
    if not log_prob.shape == old_log_prob.shape == advantages.shape:
        raise ValueError(
            "log_prob, old_log_prob and advantages must share one shape, got "
            f"{tuple(log_prob.shape)}, {tuple(old_log_prob.shape)}, {tuple(advantages.shape)}"
        )
    if clip_range <= 0:
        raise ValueError(f"PPO clip_range must be positive, got {clip_range}")
    advantages = advantages.detach()
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        info = {
            "approx_kl": 0.5 * log_ratio.pow(2).mean(),
            "clip_fraction": ((ratio - 1.0).abs() > clip_range).to(ratio.dtype).mean(),
            "ratio_mean": ratio.mean(),
        }
    return loss, info


def gaussian_kl_same_sigma(
    mean_theta: Tensor,
    mean_base: Tensor,
    std: Tensor | float,
    reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """KL(N(mu_theta, s^2 I) || N(mu_base, s^2 I)) = ||mu_theta - mu_base||^2 / (2 s^2), per sample.

    "sum" over the non-batch dims is the true KL of the step's Gaussians; "mean" matches a
    log-prob reduced by mean (the DDPO convention). Gradients flow into mean_theta only.

    mean_theta: Tensor  # (B, ...)   DDIM mean under the adapted policy
    mean_base: Tensor  # (B, ...)    DDIM mean with adapters disabled
    std: scalar or Tensor broadcastable to mean_theta, e.g. (B, 1, 1, 1) for per-sample sigma_t
    returns: Tensor  # (B,)
    """
    if mean_theta.shape != mean_base.shape:
        raise ValueError(
            f"means must share a shape, got {tuple(mean_theta.shape)} and {tuple(mean_base.shape)}"
        )
    per_elem = (mean_theta - mean_base.detach()).pow(2) / (2.0 * std**2)
    if per_elem.shape != mean_theta.shape:
        raise ValueError(
            f"std must broadcast to the means {tuple(mean_theta.shape)}, got per-element KL of "
            f"shape {tuple(per_elem.shape)}; give a scalar or e.g. (B, 1, 1, 1)"
        )
    dims = tuple(range(1, mean_theta.ndim))
    if not dims:
        return per_elem
    if reduction == "sum":
        return per_elem.sum(dim=dims)
    if reduction == "mean":
        return per_elem.mean(dim=dims)
    raise ValueError(f"unknown KL reduction {reduction!r}; choose 'sum' or 'mean'")


def value_loss(
    pred: Tensor,
    target: Tensor,
    kind: Literal["mse", "huber"] = "mse",
    huber_delta: float = 1.0,
) -> Tensor:
    """Critic regression loss, mean over all elements; targets are constants (detached).

    "huber" is quadratic within huber_delta of the target and linear beyond, so outlier rewards
    do not dominate the critic's gradient.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"value prediction {tuple(pred.shape)} and target {tuple(target.shape)} must match"
        )
    target = target.detach()
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "huber":
        return F.huber_loss(pred, target, delta=huber_delta)
    raise ValueError(f"unknown value loss {kind!r}; choose 'mse' or 'huber'")
