"""One flow-matching step as a Gaussian policy: the SD3-class ODE made an SDE, same marginals.

Flow matching (FlowMatchEulerDiscreteScheduler; SD3, FLUX) noises as x_t = (1 - t) x0 + t eps,
eps ~ N(0, I), t = sigma in [0, 1], and the model predicts the velocity v(x, t) = E[eps - x0 | x_t].
Sampling integrates the ODE dx = v dt from t = 1 to 0; diffusers' step is Euler,
x_{t'} = x_t + (t' - t) v. That is deterministic, so it has no log-probability. Flow-GRPO (Liu et
al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL", arXiv:2505.05470; their
`sde_step_with_logprob`, sde_type "sde") swaps it for an SDE with the same marginals p_t:

  score from velocity  E[eps | x_t = x] = x + (1 - t) v  (since x_t = eps - (1 - t)(eps - x0)),
                       grad log p_t(x) = -E[eps | x_t = x] / t = -(x + (1 - t) v) / t  (Tweedie)
  same marginals       for any g(t) >= 0, dx = [v - g^2/2 grad log p_t] dt + g dw, run from
                       t = 1 down to 0 (dt < 0, dw of variance |dt|), keeps x ~ p_t: in tau = 1 - t
                       its Fokker-Planck equation is d_tau p = div([v - g^2/2 grad log p] p)
                       + g^2/2 lap p = div(v p), the ODE's own continuity equation.
  drift correction     dx = [v + g^2 / (2t) (x + (1 - t) v)] dt + g dw
  noise schedule       g_t = a sqrt(t / (1 - t)), a = `noise_level`; at t = 1, where it diverges,
                       its 1 - t is 1 - sigma_1 (the schedule's second sigma), as in Flow-GRPO.

One Euler-Maruyama step from t = sigma_i to t' = sigma_{i+1} (dt = t' - t < 0) is then Gaussian:

  x_{t'} ~ N(mu, s^2 I),  mu = x + dt [v + g_t^2 / (2t) (x + (1 - t) v)],  s = g_t sqrt(-dt)
  log pi(x_{t'} | x_t) = sum_d [ -(x_{t'} - mu)^2 / (2 s^2) - log s - log(2 pi) / 2 ]

a = 0 gives mu = diffusers' Euler step and s = 0: a deterministic ODE step whose log-prob is 0
(no density), which is what the steps outside a training window are (`sde_window`). From
x_t ~ p_t the step's output has exactly the mean of p_{t'} (E[score] = 0, E[x_t] is linear in t)
and its variance to first order in dt, Euler-Maruyama's error (pinned on a 1-D Gaussian toy
whose velocity is known in closed form). Sigmas come
from the scheduler (`set_timesteps`), never a hand-written schedule; the step leaves the
scheduler's state (`step_index`) untouched. All step arithmetic is fp32, and a sampled x_{t'} is
rounded to the sample's dtype before its log-prob is taken, so re-scoring the stored value
reproduces the log-prob exactly (PPO ratio 1 for a fresh batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from critic_unlearn.diffusion.ddim_logprob import Reduction, gaussian_log_prob


@dataclass(frozen=True)
class FlowStepOutput:
    prev_sample: Tensor  # (B, ...) x_{t'} in the sample's dtype
    log_prob: Tensor  # (B,) float32; 0 where std == 0 (an ODE step has no density)
    mean: Tensor  # (B, ...) float32 mu_theta(x_t, t, c)
    std: Tensor  # (B, 1, ..., 1) float32 s = g_t sqrt(-dt), the transition's std
    pred_original_sample: Tensor  # (B, ...) float32 x0_hat = x_t - t v


def step_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler, timestep: float | Tensor, batch: int
) -> tuple[Tensor, Tensor]:
    """(sigma_t, sigma_next) per batch element, (B,) float32, for timesteps in scheduler.timesteps.

    A timestep is matched exactly against `scheduler.timesteps` (fp32), as diffusers'
    `index_for_timestep` does; integer timesteps are refused, as diffusers refuses them."""
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    cfg = scheduler.config
    if cfg.invert_sigmas or cfg.stochastic_sampling:
        raise ValueError("invert_sigmas / stochastic_sampling schedulers are not supported")
    t = torch.as_tensor(timestep)
    if not t.is_floating_point():
        raise ValueError(
            f"integer timestep {t.tolist()}: pass values of scheduler.timesteps (floats, "
            "sigma * num_train_timesteps), not step indices"
        )
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
        raise ValueError(f"timesteps of shape {tuple(t.shape)} for a batch of {batch}")
    t = t.to(torch.float32).reshape(-1)  # (1,) or (B,): looked up, then expanded
    schedule = scheduler.timesteps.to(device=t.device, dtype=torch.float32)
    hit = t[:, None] == schedule[None, :]
    if not hit.any(dim=1).all():
        bad = t[~hit.any(dim=1)]
        if (bad < schedule[-1]).any():
            raise ValueError(
                f"timestep {bad.min().item()} steps past the last sigma: the schedule ends at "
                f"timestep {schedule[-1].item()} -> sigma {scheduler.sigmas[-1].item()}"
            )
        raise ValueError(
            f"timesteps {bad.tolist()} are not in scheduler.timesteps {schedule.tolist()}"
        )
    index = hit.float().argmax(dim=1)  # the first match
    sigmas = scheduler.sigmas.to(device=t.device, dtype=torch.float32)
    return sigmas[index].expand(batch), sigmas[index + 1].expand(batch)


def sde_sigma(
    scheduler: FlowMatchEulerDiscreteScheduler, sigma: Tensor, noise_level: float
) -> Tensor:
    """g_t = a sqrt(t / (1 - t)), with 1 - sigma_1 in place of 1 - t at t = 1 (Flow-GRPO)."""
    sigma_1 = scheduler.sigmas[1].to(device=sigma.device, dtype=torch.float32)
    denom = 1 - torch.where(sigma == 1, sigma_1, sigma)
    return noise_level * torch.sqrt(sigma / denom)


def flow_step_with_logprob(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity: Tensor,
    timestep: float | Tensor,
    sample: Tensor,
    noise_level: float | Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prev_sample: Tensor | None = None,
    variance_noise: Tensor | None = None,
    reduction: Reduction = "sum",
) -> FlowStepOutput:
    """SDE step x_t -> x_{t'} (the next sigma) with its log-probability under N(mu, s^2 I).

    `velocity` is the model's output v at (`sample`, `timestep`); `timestep` is one of
    scheduler.timesteps, a float or a (B,) tensor (per-sample timesteps). `noise_level` is
    Flow-GRPO's a (>= 0; 0 is the deterministic Euler step). Give `prev_sample` to re-score a
    stored transition, `variance_noise` to fix the noise, or `generator` to draw it.
    `noise_level` may also be a (B,) tensor, one a per sample (an SDE window: 0 outside it)."""
    level = torch.as_tensor(noise_level, dtype=torch.float32, device=sample.device)
    if not bool((level >= 0).all()):
        raise ValueError(f"noise_level = {noise_level}: use a >= 0 (0 is the ODE step)")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction = {reduction!r}; use 'sum' or 'mean'")
    if sample.ndim < 2:
        raise ValueError(f"sample of shape {tuple(sample.shape)}: expected (B, ...)")
    for name, other in (
        ("velocity", velocity),
        ("prev_sample", prev_sample),
        ("variance_noise", variance_noise),
    ):
        if other is not None and other.shape != sample.shape:
            raise ValueError(
                f"{name} of shape {tuple(other.shape)} != sample {tuple(sample.shape)}"
            )
    if variance_noise is not None and generator is not None:
        raise ValueError("pass either generator or variance_noise, not both")

    batch = sample.shape[0]
    if isinstance(timestep, Tensor):
        timestep = timestep.to(sample.device)
    sigma, sigma_next = step_sigmas(scheduler, timestep, batch)
    view = (batch,) + (1,) * (sample.ndim - 1)
    t = sigma.to(sample.device).reshape(view)
    dt = (sigma_next.to(sample.device) - sigma.to(sample.device)).reshape(view)
    if level.ndim == 1 and level.shape[0] != batch:
        raise ValueError(f"noise_level of shape {tuple(level.shape)} for a batch of {batch}")
    g = sde_sigma(scheduler, t, level.reshape(-1, *view[1:]) if level.ndim else level)

    x = sample.to(torch.float32)
    v = velocity.to(torch.float32)
    mean = x + dt * (v + g**2 / (2 * t) * (x + (1 - t) * v))
    std = g * torch.sqrt(-dt)

    if prev_sample is None:
        if variance_noise is None:
            variance_noise = randn_tensor(
                sample.shape, generator=generator, device=sample.device, dtype=torch.float32
            )
        # rounded to the storage dtype first, so the log-prob is that of what is stored
        prev_sample = (mean + std * variance_noise.to(torch.float32)).to(sample.dtype)
    log_prob = gaussian_log_prob(prev_sample, mean, std, reduction)
    return FlowStepOutput(
        prev_sample=prev_sample,
        log_prob=log_prob,
        mean=mean,
        std=std,
        pred_original_sample=x - t * v,
    )


def sde_window(num_steps: int, window: int, start: int) -> tuple[bool, ...]:
    """Which of `num_steps` denoising steps are stochastic: True for the SDE steps
    start .. start + window - 1 (the ones sampled with noise_level > 0, stored and trained), False
    for the deterministic ODE steps around them (noise_level = 0). Flow-GRPO-Fast draws `start`
    per batch; MixGRPO slides it along the trajectory as training goes. SDE and ODE steps keep
    the same marginals (up to discretisation), so the window picks which steps explore and are
    trained, not which distribution the trajectory ends in."""
    if num_steps < 1:
        raise ValueError(f"num_steps = {num_steps}; need at least 1")
    if not 1 <= window <= num_steps:
        raise ValueError(f"window = {window}; need 1 <= window <= num_steps ({num_steps})")
    if not 0 <= start <= num_steps - window:
        raise ValueError(
            f"start = {start}: a window of {window} needs 0 <= start <= {num_steps - window}"
        )
    return tuple(start <= i < start + window for i in range(num_steps))
