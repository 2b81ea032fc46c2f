"""What the critic knows, per denoising timestep: explained variance and advantage variance.

The critic only helps where V(x_t, t, c) predicts the final reward better than its mean; where
the explained variance is ~0 its advantages are noise. Both numbers are grouped by timestep value
(with `sampler.keep_steps` a batch position holds different timesteps in different rows), and
pooled over the last `critic.diagnostics_window` learner steps (`WindowedDiagnostics`): one batch
of 32 trajectories, whose reward variance a few outliers decide, gives estimates too noisy to read.

    critic/ev_tNNNN          1 - Var(r - V(x_t)) / Var(r) over the batch's states at timestep t
    advantage/var_share_tNNNN  share of the trained advantages' sum of squares (about their mean)
                             that sits at timestep t: where the policy gradient's signal lives
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor


def explained_variance(pred: Tensor, target: Tensor) -> float:
    """1 - Var(target - pred) / Var(target) (population variances); nan for a constant target."""
    var = target.double().var(correction=0)
    if var <= 0:
        return float("nan")
    return float(1.0 - (target.double() - pred.double()).var(correction=0) / var)


def label(timesteps: Tensor) -> Tensor:
    """Integer labels of timesteps: DDIM's as they are, flow's (sigma * 1000) rounded."""
    return timesteps.cpu().round().long() if timesteps.is_floating_point() else timesteps.cpu()


def ev_by_timestep(values: Tensor, rewards: Tensor, timesteps: Tensor) -> dict[int, float]:
    """{timestep: explained variance of the reward by V at the states at that timestep}.

    values, timesteps: (N, K); rewards: (N,). A row that holds a timestep more than once (it
    cannot with DDIM) would count with the mean of its values. Noisiest timestep first. Flow
    timesteps (sigma * 1000, floats) are labelled by their nearest integer."""
    ts, r, v_all = label(timesteps), rewards.detach().cpu(), values.detach().cpu()
    out = {}
    for t in sorted({int(x) for x in ts.unique()}, reverse=True):
        at = ts == t
        rows = at.any(1)
        v = torch.stack([v_all[i][at[i]].mean() for i in rows.nonzero().squeeze(1).tolist()])
        out[t] = explained_variance(v, r[rows])
    return out


def per_timestep_diagnostics(
    timesteps: Tensor,
    rewards: Tensor,
    values: Tensor | None,
    advantages: Tensor,
    trained: Tensor,
) -> dict[str, float]:
    """Metrics keyed by timestep (see the module docstring).

    timesteps: Tensor  # (B, K) int (DDIM) or float (flow: labelled by the nearest integer)
    rewards: Tensor    # (B,)    the rewards the critic regresses on (standardised if so set)
    values: Tensor | None  # (B, K) V of each stored state, None without a critic
    advantages: Tensor  # (B, K)  before normalisation
    trained: Tensor    # (B, K) bool, transitions the policy may train on
    """
    out: dict[str, float] = {}
    ts = label(timesteps)
    adv = advantages.detach().double().cpu()
    mask = trained.cpu()
    centred = adv - adv[mask].mean() if mask.any() else adv
    total = float((centred[mask] ** 2).sum()) if mask.any() else 0.0
    if values is not None:
        for t, ev in ev_by_timestep(values, rewards, ts).items():
            out[f"critic/ev_t{t:04d}"] = ev
    if total > 0:
        for t in sorted({int(x) for x in ts.unique()}, reverse=True):
            share = float((centred[(ts == t) & mask] ** 2).sum()) / total
            out[f"advantage/var_share_t{t:04d}"] = share
    return out


class WindowedDiagnostics:
    """`per_timestep_diagnostics` over the last `window` learner steps' batches, pooled."""

    def __init__(self, window: int) -> None:
        self.batches: deque[tuple[Tensor, ...]] = deque(maxlen=window)

    def update(self, timesteps: Tensor, rewards: Tensor, values: Tensor | None,
               advantages: Tensor, trained: Tensor) -> dict[str, float]:
        keep = (timesteps, rewards, values, advantages, trained)
        self.batches.append(tuple(None if x is None else x.detach().cpu() for x in keep))
        if len({b[0].shape[1] for b in self.batches}) > 1:  # K changed: start the window anew
            self.batches = deque([self.batches[-1]], maxlen=self.batches.maxlen)
        cols = list(zip(*self.batches, strict=True))
        cat = [None if any(x is None for x in col) else torch.cat(col) for col in cols]
        return per_timestep_diagnostics(*cat)
