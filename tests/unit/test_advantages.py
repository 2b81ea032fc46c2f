"""Per-step advantages and value targets: hand-computed GAE, V-trace against RLlib's and a loop."""

from __future__ import annotations

import pytest
import torch

from critic_unlearn.learner.advantages import (
    dpok_advantages,
    gae,
    monte_carlo_targets,
    normalize_and_clip,
    one_step_advantages,
    step_advantages,
    td_errors,
    terminal_advantages,
    value_targets,
    vtrace,
)

# Two trajectories of K = 4 steps, index 0 = first (noisiest) denoising step.
# Row 0: V = [0.2, 0.5, 0.1, 0.4], r = 1.0
#   deltas (next value minus value, r after the last step):
#     d0 = 0.5 - 0.2 = 0.3, d1 = 0.1 - 0.5 = -0.4, d2 = 0.4 - 0.1 = 0.3, d3 = 1.0 - 0.4 = 0.6
# Row 1: V = [0, 0, 0, 0], r = -1.0  ->  deltas [0, 0, 0, -1]
VALUES = torch.tensor([[0.2, 0.5, 0.1, 0.4], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
REWARDS = torch.tensor([1.0, -1.0], dtype=torch.float64)


def test_td_errors_hand_example() -> None:
    expected = torch.tensor([[0.3, -0.4, 0.3, 0.6], [0.0, 0.0, 0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(td_errors(VALUES, REWARDS), expected)


def test_gae_lambda_zero_is_one_step_td() -> None:
    # lambda = 0: A_k = d_k.  returns = A + V: row 0 [0.3+0.2, -0.4+0.5, 0.3+0.1, 0.6+0.4].
    adv, ret = gae(VALUES, REWARDS, lam=0.0)
    expected_adv = torch.tensor([[0.3, -0.4, 0.3, 0.6], [0.0, 0.0, 0.0, -1.0]], dtype=torch.float64)
    expected_ret = torch.tensor([[0.5, 0.1, 0.4, 1.0], [0.0, 0.0, 0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, expected_ret)
    torch.testing.assert_close(one_step_advantages(VALUES, REWARDS), expected_adv)


def test_gae_lambda_one_is_reward_minus_value() -> None:
    # lambda = 1: A_k = r - V_k: row 0 [1-0.2, 1-0.5, 1-0.1, 1-0.4]; returns are r everywhere.
    adv, ret = gae(VALUES, REWARDS, lam=1.0)
    expected_adv = torch.tensor(
        [[0.8, 0.5, 0.9, 0.6], [-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64
    )
    expected_ret = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0] * 4], dtype=torch.float64)
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, expected_ret)
    torch.testing.assert_close(dpok_advantages(VALUES, REWARDS), expected_adv)


def test_gae_lambda_half_hand_example() -> None:
    # lambda = 0.5, backwards from the last step:
    #   row 0: A3 = 0.6; A2 = 0.3 + 0.5*0.6 = 0.6; A1 = -0.4 + 0.5*0.6 = -0.1;
    #          A0 = 0.3 + 0.5*(-0.1) = 0.25.   returns = A + V = [0.45, 0.4, 0.7, 1.0]
    #   row 1: A3 = -1; A2 = -0.5; A1 = -0.25; A0 = -0.125 (returns equal, V = 0)
    adv, ret = gae(VALUES, REWARDS, lam=0.5)
    expected_adv = torch.tensor(
        [[0.25, -0.1, 0.6, 0.6], [-0.125, -0.25, -0.5, -1.0]], dtype=torch.float64
    )
    expected_ret = torch.tensor(
        [[0.45, 0.4, 0.7, 1.0], [-0.125, -0.25, -0.5, -1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, expected_ret)


def test_gae_outputs_are_detached() -> None:
    values = VALUES.clone().requires_grad_(True)
    adv, ret = gae(values, REWARDS, lam=0.9)
    assert not adv.requires_grad and not ret.requires_grad


def _random_batch(seed: int, batch: int = 5, steps: int = 7) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, steps, generator=gen, dtype=torch.float64)
    rewards = torch.randn(batch, generator=gen, dtype=torch.float64)
    log_rhos = 1.2 * torch.randn(batch, steps, generator=gen, dtype=torch.float64)
    return values, rewards, log_rhos


def _rllib_episode_inputs(
    values: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our terminal-reward episode in RLlib's time-major (T, B) form: the reward on the last step,
    discount 1 inside the chain and 0 after the last step (terminal), any bootstrap value."""
    steps, batch = values.shape[1], values.shape[0]
    step_rewards = torch.zeros(steps, batch, dtype=values.dtype)
    step_rewards[-1] = rewards
    discounts = torch.ones(steps, batch, dtype=values.dtype)
    discounts[-1] = 0.0
    bootstrap = torch.full((batch,), 123.0, dtype=values.dtype)  # must be ignored: terminal
    return step_rewards, discounts, bootstrap


@pytest.mark.parametrize("rho_bar", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vtrace_matches_rllib_at_lambda_one(rho_bar: float, seed: int) -> None:
    """RLlib's torch V-trace has no lambda and fixes c_bar = 1, so compare there."""
    vtrace_rllib = pytest.importorskip("ray.rllib.algorithms.impala.vtrace_torch")
    from ray.rllib.algorithms.impala.torch.vtrace_torch_v2 import vtrace_torch

    values, rewards, log_rhos = _random_batch(seed)
    ratios = log_rhos.exp()
    assert (ratios > max(rho_bar, 1.0)).any() and (ratios < min(rho_bar, 1.0)).any()

    ours_vs, ours_pg = vtrace(values, rewards, log_rhos, lam=1.0, rho_bar=rho_bar, c_bar=1.0)

    step_rewards, discounts, bootstrap = _rllib_episode_inputs(values, rewards)
    old_stack = vtrace_rllib.from_importance_weights(
        log_rhos=log_rhos.T.contiguous(),
        discounts=discounts,
        rewards=step_rewards,
        values=values.T.contiguous(),
        bootstrap_value=bootstrap,
        clip_rho_threshold=rho_bar,
        clip_pg_rho_threshold=rho_bar,
    )
    # The old-stack helper casts float64 inputs to float32 (convert_to_torch_tensor).
    torch.testing.assert_close(ours_vs.float(), old_stack.vs.T)
    torch.testing.assert_close(ours_pg.float(), old_stack.pg_advantages.T)

    new_vs, new_pg = vtrace_torch(
        target_action_log_probs=log_rhos.T.contiguous(),
        behaviour_action_log_probs=torch.zeros_like(log_rhos.T),
        discounts=discounts,
        rewards=step_rewards,
        values=values.T.contiguous(),
        bootstrap_values=bootstrap,
        clip_rho_threshold=rho_bar,
        clip_pg_rho_threshold=rho_bar,
    )
    torch.testing.assert_close(ours_vs, new_vs.T)
    torch.testing.assert_close(ours_pg, new_pg.T)


def _vtrace_reference(
    values: torch.Tensor,
    rewards: torch.Tensor,
    log_rhos: torch.Tensor,
    lam: float,
    rho_bar: float,
    c_bar: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IMPALA eq. (1) written as its explicit sum, one element at a time (no recursion):
    vs_s = V_s + sum_{t>=s} (prod_{s<=i<t} c_i) rho_t (r_t + V_{t+1} - V_t), gamma = 1,
    with r_t = 0 except r at the last step and V_K = 0 (episode ends)."""
    batch, steps = values.shape
    vs = torch.zeros_like(values)
    pg = torch.zeros_like(values)
    for b in range(batch):
        v = [float(x) for x in values[b]] + [0.0]
        r = [0.0] * (steps - 1) + [float(rewards[b])]
        ratio = [float(x) for x in log_rhos[b].exp()]
        for s in range(steps):
            total = v[s]
            for t in range(s, steps):
                trace = 1.0
                for i in range(s, t):
                    trace *= lam * min(c_bar, ratio[i])
                total += trace * min(rho_bar, ratio[t]) * (r[t] + v[t + 1] - v[t])
            vs[b, s] = total
    for b in range(batch):
        for s in range(steps):
            nxt = float(vs[b, s + 1]) if s + 1 < steps else 0.0
            r_s = float(rewards[b]) if s == steps - 1 else 0.0
            ratio_s = float(log_rhos[b, s].exp())
            pg[b, s] = min(rho_bar, ratio_s) * (r_s + nxt - float(values[b, s]))
    return vs, pg


@pytest.mark.parametrize(
    ("lam", "rho_bar", "c_bar"),
    [(0.9, 1.0, 1.0), (0.5, 1.5, 0.8), (0.0, 1.0, 1.0), (1.0, 2.0, 3.0)],
)
def test_vtrace_matches_loop_reference_with_lambda(
    lam: float, rho_bar: float, c_bar: float
) -> None:
    values, rewards, log_rhos = _random_batch(seed=7)
    ours_vs, ours_pg = vtrace(values, rewards, log_rhos, lam=lam, rho_bar=rho_bar, c_bar=c_bar)
    ref_vs, ref_pg = _vtrace_reference(values, rewards, log_rhos, lam, rho_bar, c_bar)
    torch.testing.assert_close(ours_vs, ref_vs)
    torch.testing.assert_close(ours_pg, ref_pg)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("trunc", [1.0, 2.5])
def test_vtrace_on_policy_equals_td_lambda(lam: float, trunc: float) -> None:
    values, rewards, _ = _random_batch(seed=3)
    vs, pg = vtrace(values, rewards, torch.zeros_like(values), lam=lam, rho_bar=trunc, c_bar=trunc)
    adv, returns = gae(values, rewards, lam)
    torch.testing.assert_close(vs, returns)
    # IMPALA's pg advantage bootstraps on vs_{i+1}: delta_i + A_{i+1}; equal to GAE at lam = 1.
    next_adv = torch.cat([adv[:, 1:], torch.zeros_like(adv[:, :1])], dim=1)
    torch.testing.assert_close(pg, td_errors(values, rewards) + next_adv)
    if lam == 1.0:
        torch.testing.assert_close(pg, adv)


def test_vtrace_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="log_rhos"):
        vtrace(VALUES, REWARDS, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="rewards"):
        gae(VALUES, torch.zeros(3, dtype=torch.float64), lam=0.5)


def test_monte_carlo_and_terminal_broadcast_reward() -> None:
    expected = torch.tensor([[1.0] * 3, [-2.0] * 3])
    torch.testing.assert_close(monte_carlo_targets(torch.tensor([1.0, -2.0]), 3), expected)
    torch.testing.assert_close(terminal_advantages(torch.tensor([1.0, -2.0]), 3), expected)


def test_value_targets_dispatch() -> None:
    values, rewards, log_rhos = _random_batch(seed=11)
    torch.testing.assert_close(
        value_targets("mc", values, rewards), rewards[:, None].expand_as(values)
    )
    torch.testing.assert_close(
        value_targets("td_lambda", values, rewards, lam=0.7), gae(values, rewards, 0.7)[1]
    )
    torch.testing.assert_close(
        value_targets("vtrace", values, rewards, lam=0.7, log_rhos=log_rhos, rho_bar=1.0),
        vtrace(values, rewards, log_rhos, lam=0.7)[0],
    )
    with pytest.raises(ValueError, match="log_rhos"):
        value_targets("vtrace", values, rewards)
    with pytest.raises(ValueError, match="unknown"):
        value_targets("nope", values, rewards)  # type: ignore[arg-type]


def test_step_advantages_dispatch() -> None:
    values, rewards, log_rhos = _random_batch(seed=12)
    torch.testing.assert_close(
        step_advantages("terminal", rewards, 7), rewards[:, None].expand(-1, 7)
    )
    torch.testing.assert_close(
        step_advantages("gae", rewards, 7, values=values, lam=0.3), gae(values, rewards, 0.3)[0]
    )
    with pytest.raises(ValueError, match="values"):
        step_advantages("gae", rewards, 7)


def test_normalize_and_clip() -> None:
    gen = torch.Generator().manual_seed(0)
    adv = 3.0 + 5.0 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    normed = normalize_and_clip(adv, clip=None)
    torch.testing.assert_close(normed.mean(), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(normed.std(correction=0), torch.tensor(1.0, dtype=torch.float64))
    clipped = normalize_and_clip(adv, clip=0.5)
    assert clipped.abs().max() <= 0.5
    torch.testing.assert_close(clipped, normed.clamp(-0.5, 0.5))
    # A constant batch (or a single element) gives zeros, not NaN.
    assert torch.equal(normalize_and_clip(torch.ones(1, 3), clip=5.0), torch.zeros(1, 3))


def test_vtrace_advantage_for_ppo_carries_no_importance_weight() -> None:
    """PPO multiplies by pi/mu itself: the advantage it gets is r_i + vs_{i+1} - V_i, unweighted.

    Hand-computed on one trajectory of K = 2 (lam = 1, rho_bar = c_bar = 1): V = (0.2, 0.5),
    r = 1, log ratios (log 0.5, 0): rho = (0.5, 1), delta = (0.3, 0.5),
    vs_1 = 0.5 + 1 * 0.5 = 1.0, vs_0 = 0.2 + 0.5 * 0.3 + 0.5 * 0.5 = 0.6,
    advantage_0 = vs_1 - V_0 = 0.8 (not 0.5 * 0.8 = 0.4), advantage_1 = r - V_1 = 0.5.
    """
    values = torch.tensor([[0.2, 0.5]], dtype=torch.float64)
    rewards = torch.tensor([1.0], dtype=torch.float64)
    log_rhos = torch.log(torch.tensor([[0.5, 1.0]], dtype=torch.float64))
    adv = step_advantages("vtrace", rewards, 2, values=values, log_rhos=log_rhos)
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5]], dtype=torch.float64))
    vs, weighted = vtrace(values, rewards, log_rhos)
    torch.testing.assert_close(vs, torch.tensor([[0.6, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(weighted, torch.tensor([[0.4, 0.5]], dtype=torch.float64))


def test_normalize_uses_only_trained_entries() -> None:
    """Mean and std come from the masked (trained) entries: those come out mean 0, std 1."""
    adv = torch.tensor([[1.0, 3.0, 100.0], [5.0, 7.0, -100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    normed = normalize_and_clip(adv, clip=None, mask=mask)
    trained = normed[mask]
    torch.testing.assert_close(trained.mean(), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(trained.std(correction=0), torch.tensor(1.0, dtype=torch.float64))
    # by hand: mean 4, population std sqrt(5)
    torch.testing.assert_close(normed[0, 0], torch.tensor(-3.0 / 5.0**0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="no entry"):
        normalize_and_clip(adv, clip=None, mask=torch.zeros_like(mask))
