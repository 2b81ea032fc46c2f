"""Per-step advantages and value targets over the denoising chain (gamma = 1).

Pure functions on tensors; no Ray, no I/O. A batch holds B trajectories of K denoising steps in
the time order of sampling: index 0 is the first step (noisiest timestep t_S), index K-1 the last
step, which produces x_0. The reward r arrives only after the last step, then the episode ends.

docs/algorithm.md (section 4) counts the same way. The paper counts the other way (its k = 1 is
the last step, its delta_1 = r - V_1): here step i corresponds to its k = K - i, so its
"V_{k-1}" (the next state's value) is our values[:, i + 1], and the terminal reward plays the
role of the value after the last step.

All outputs are detached: advantages and value targets are regression and policy-gradient
targets, never something to differentiate through.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

AdvantageKind = Literal["terminal", "gae", "vtrace"]
TargetKind = Literal["mc", "td_lambda", "vtrace"]


def _check_batch(values: Tensor, rewards: Tensor) -> None:
    """Fail early, with the shapes, when values and rewards do not describe the same batch."""
    if values.ndim != 2 or rewards.ndim != 1 or values.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"expected values (B, K) and rewards (B,), got values {tuple(values.shape)} and "
            f"rewards {tuple(rewards.shape)}; pass one terminal reward per trajectory"
        )
    if values.shape[1] < 1:
        raise ValueError("values has K = 0 steps; each trajectory needs at least one step")


def td_errors(values: Tensor, rewards: Tensor) -> Tensor:
    """One-step TD errors delta_i = V_{i+1} - V_i, with the terminal reward as V_K (gamma = 1).

    values: Tensor  # (B, K)   critic value of the state each step starts from
    rewards: Tensor  # (B,)    terminal reward r(x_0, c)
    returns: Tensor  # (B, K)  delta; the last step's delta is r - V_{K-1}
    """
    _check_batch(values, rewards)
    values = values.detach()
    next_values = torch.cat([values[:, 1:], rewards.detach().to(values.dtype)[:, None]], dim=1)
    return next_values - values


def gae(values: Tensor, rewards: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) with gamma = 1.

    A_i = sum_{j >= i} lam^(j - i) delta_j: credit flows back from the end of the chain.
    lam = 1 gives r - V_i (see `dpok_advantages`); lam = 0 gives delta_i (`one_step_advantages`).

    values: Tensor  # (B, K)
    rewards: Tensor  # (B,)
    returns: (advantages, returns)  # (B, K) each; returns = advantages + values, the TD(lambda)
        value targets.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"GAE lambda must lie in [0, 1], got {lam}")
    deltas = td_errors(values, rewards)  # (B, K)
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[:, 0])  # (B,)
    for i in range(deltas.shape[1] - 1, -1, -1):
        running = deltas[:, i] + lam * running
        advantages[:, i] = running
    return advantages, advantages + values.detach()


def dpok_advantages(values: Tensor, rewards: Tensor) -> Tensor:
    """GAE at lambda = 1: A_i = r - V_i, the DPOK value baseline (Fan et al. 2023)."""
    _check_batch(values, rewards)
    return rewards.detach().to(values.dtype)[:, None] - values.detach()


def one_step_advantages(values: Tensor, rewards: Tensor) -> Tensor:
    """GAE at lambda = 0: A_i = delta_i = V_{i+1} - V_i, one-step credit from the critic."""
    return td_errors(values, rewards)


def terminal_advantages(rewards: Tensor, num_steps: int) -> Tensor:
    """Critic off (DDPO, Black et al. 2023): the terminal reward broadcast to every step.

    Normalisation is separate (`normalize_and_clip`). returns: Tensor  # (B, K)
    """
    if rewards.ndim != 1:
        raise ValueError(f"expected rewards (B,), got {tuple(rewards.shape)}")
    return rewards.detach()[:, None].expand(-1, num_steps).clone()


def monte_carlo_targets(rewards: Tensor, num_steps: int) -> Tensor:
    """Monte Carlo value targets: with gamma = 1 and one terminal reward, every step's return is r.

    returns: Tensor  # (B, K)
    """
    return terminal_advantages(rewards, num_steps)


def vtrace(
    values: Tensor,
    rewards: Tensor,
    log_rhos: Tensor,
    lam: float = 1.0,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    pg_rho_bar: float | None = None,
    weight_pg: bool = True,
) -> tuple[Tensor, Tensor]:
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, IMPALA), gamma = 1.

    Per-step rewards are 0 except r at the last step, after which the episode ends (bootstrap 0);
    equivalently the last step's TD error is r - V_{K-1}, exactly as in `gae`. With truncated
    weights rho_i = min(rho_bar, pi/mu) and traces c_i = lam * min(c_bar, pi/mu) (IMPALA's lambda
    variant):
        vs_i - V_i = rho_i delta_i + c_i (vs_{i+1} - V_{i+1}),   vs_K - V_K = 0
        pg_adv_i = min(pg_rho_bar, pi/mu) (r_i + vs_{i+1} - V_i),  vs_K = 0, pg_rho_bar = rho_bar
    With `weight_pg = False` the pg advantage omits its min(pg_rho_bar, pi/mu) factor: a PPO
    surrogate multiplies by the ratio itself, so the importance weight must enter only once.
    On-policy (all ratios 1, rho_bar, c_bar >= 1) vs equals the TD(lambda) targets of `gae`;
    pg_adv equals GAE advantages only at lam = 1 (IMPALA bootstraps pg_adv on vs_{i+1}, i.e.
    pg_adv_i = delta_i + A^GAE_{i+1}, which puts weight 1, not lam, on the next step).

    values: Tensor  # (B, K)    V(s_i) under the current critic
    rewards: Tensor  # (B,)     terminal rewards
    log_rhos: Tensor  # (B, K)  log pi_theta(a_i | s_i) - log mu(a_i | s_i), behaviour policy mu
    returns: (vs, pg_advantages)  # (B, K) each
    """
    _check_batch(values, rewards)
    if log_rhos.shape != values.shape:
        raise ValueError(
            f"log_rhos must match values {tuple(values.shape)}, got {tuple(log_rhos.shape)}"
        )
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"V-trace lambda must lie in [0, 1], got {lam}")
    if rho_bar <= 0 or c_bar <= 0:
        raise ValueError(
            f"truncation levels must be positive, got rho_bar={rho_bar}, c_bar={c_bar}"
        )
    pg_rho_bar = rho_bar if pg_rho_bar is None else pg_rho_bar
    values = values.detach()
    ratios = torch.exp(log_rhos.detach().to(values.dtype))  # (B, K)
    rhos = ratios.clamp(max=rho_bar)
    cs = lam * ratios.clamp(max=c_bar)
    deltas = td_errors(values, rewards)  # (B, K)

    corrections = torch.empty_like(values)  # vs - V, (B, K)
    running = torch.zeros_like(values[:, 0])  # (B,)
    for i in range(values.shape[1] - 1, -1, -1):
        running = rhos[:, i] * deltas[:, i] + cs[:, i] * running
        corrections[:, i] = running
    vs = values + corrections

    # What follows step i: vs_{i+1} inside the chain; r (then bootstrap 0) after the last step.
    next_targets = torch.cat([vs[:, 1:], rewards.detach().to(values.dtype)[:, None]], dim=1)
    pg_advantages = next_targets - values
    if weight_pg:
        pg_advantages = ratios.clamp(max=pg_rho_bar) * pg_advantages
    return vs, pg_advantages


def value_targets(
    kind: TargetKind,
    values: Tensor,
    rewards: Tensor,
    lam: float = 1.0,
    log_rhos: Tensor | None = None,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> Tensor:
    """Critic regression targets by name: "mc" (r), "td_lambda" (GAE returns), "vtrace" (vs).

    values: Tensor  # (B, K); rewards: Tensor  # (B,); log_rhos: Tensor  # (B, K), V-trace only
    returns: Tensor  # (B, K)
    """
    if kind == "mc":
        _check_batch(values, rewards)
        return monte_carlo_targets(rewards, values.shape[1]).to(values.dtype)
    if kind == "td_lambda":
        return gae(values, rewards, lam)[1]
    if kind == "vtrace":
        if log_rhos is None:
            raise ValueError("value_targets('vtrace') needs log_rhos = log pi_theta - log mu")
        return vtrace(values, rewards, log_rhos, lam, rho_bar, c_bar)[0]
    raise ValueError(f"unknown value-target kind {kind!r}; choose 'mc', 'td_lambda' or 'vtrace'")


def step_advantages(
    kind: AdvantageKind,
    rewards: Tensor,
    num_steps: int,
    values: Tensor | None = None,
    lam: float = 1.0,
    log_rhos: Tensor | None = None,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> Tensor:
    """Per-step advantages by name: "terminal" (critic off), "gae", or "vtrace" (pg advantages).

    These feed the PPO surrogate, which multiplies by pi/mu itself: V-trace's pg advantages are
    therefore returned without their importance weight (`vtrace(weight_pg=False)`).
    Not normalised; follow with `normalize_and_clip`. returns: Tensor  # (B, K)
    """
    if kind == "terminal":
        return terminal_advantages(rewards, num_steps)
    if values is None:
        raise ValueError(f"advantage kind {kind!r} needs critic values (B, K); got None")
    if kind == "gae":
        return gae(values, rewards, lam)[0]
    if kind == "vtrace":
        if log_rhos is None:
            raise ValueError("advantage kind 'vtrace' needs log_rhos = log pi_theta - log mu")
        return vtrace(values, rewards, log_rhos, lam, rho_bar, c_bar, weight_pg=False)[1]
    raise ValueError(f"unknown advantage kind {kind!r}; choose 'terminal', 'gae' or 'vtrace'")


def normalize_and_clip(
    adv: Tensor, clip: float | None, mask: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """Normalise with the mean and std of the trained entries, then clip to [-clip, clip].

    mask: Tensor | None  # (B, K) bool, True where the transition is trained on; None = all.
    Statistics over untrained entries would shift and scale the trained ones by numbers that
    never enter the loss. Population std (as DDPO's np.std), so a single trained element
    gives 0, not NaN. Entries outside the mask are transformed the same way. clip=None skips
    clipping.
    """
    adv = adv.detach()
    if mask is None:
        mask = torch.ones_like(adv, dtype=torch.bool)
    if mask.shape != adv.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match advantages {tuple(adv.shape)}")
    if not mask.any():
        raise ValueError("mask selects no entry: nothing is trained, nothing to normalise")
    picked = adv[mask]
    normed = (adv - picked.mean()) / (picked.std(correction=0) + eps)
    if clip is None:
        return normed
    if clip <= 0:
        raise ValueError(f"advantage clip must be positive or None, got {clip}")
    return normed.clamp(-clip, clip)
