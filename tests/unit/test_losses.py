"""Policy and critic losses: PPO clipping gradients, closed-form Gaussian KL, MSE and Huber."""

from __future__ import annotations

import math

import pytest
import torch

from critic_unlearn.learner.losses import gaussian_kl_same_sigma, ppo_clipped_loss, value_loss

CLIP = 0.2


def _ppo_grad(ratios: list[float], advantages: list[float]) -> tuple[torch.Tensor, dict]:
    old = torch.tensor([-3.0, -1.0, 0.5, 2.0, -0.2, 1.1], dtype=torch.float64)[: len(ratios)]
    log_prob = (old + torch.tensor(ratios, dtype=torch.float64).log()).requires_grad_(True)
    loss, info = ppo_clipped_loss(
        log_prob, old, torch.tensor(advantages, dtype=torch.float64), CLIP
    )
    loss.backward()
    return log_prob.grad, info


def test_ppo_gradient_zero_where_clipped_in_advantage_direction() -> None:
    # steps 0, 1: clipped in the advantage's direction (1.5 > 1.2 with A > 0; 0.5 < 0.8, A < 0)
    # steps 2, 3: outside the range but against the advantage: the unclipped term is the min
    # steps 4, 5: inside the range
    ratios = [1.5, 0.5, 1.5, 0.5, 1.05, 0.95]
    advantages = [1.0, -1.0, -1.0, 1.0, 2.0, -0.5]
    grad, info = _ppo_grad(ratios, advantages)
    n = len(ratios)
    # d/dlogp of -(ratio * A) / N is -A * ratio / N
    expected = [0.0, 0.0] + [-a * r / n for r, a in zip(ratios[2:], advantages[2:], strict=True)]
    assert grad[0].item() == 0.0 and grad[1].item() == 0.0
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(info["clip_fraction"], torch.tensor(4 / 6, dtype=torch.float64))


def test_ppo_equals_policy_gradient_at_ratio_one() -> None:
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(16, generator=gen, dtype=torch.float64)
    advantages = torch.randn(16, generator=gen, dtype=torch.float64)
    log_prob = old.clone().requires_grad_(True)
    loss, info = ppo_clipped_loss(log_prob, old, advantages, CLIP)
    loss.backward()

    log_prob_pg = old.clone().requires_grad_(True)
    (-(advantages * log_prob_pg).mean()).backward()

    torch.testing.assert_close(log_prob.grad, log_prob_pg.grad)
    torch.testing.assert_close(loss, -advantages.mean())
    assert info["approx_kl"].item() == 0.0
    assert info["clip_fraction"].item() == 0.0
    assert info["ratio_mean"].item() == 1.0


def test_ppo_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        ppo_clipped_loss(torch.zeros(3), torch.zeros(3), torch.zeros(4), CLIP)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_clipped_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.0)


def test_kl_zero_when_means_equal() -> None:
    mean = torch.randn(3, 4, 8, 8)
    kl = gaussian_kl_same_sigma(mean, mean.clone(), torch.tensor(0.3))
    assert torch.equal(kl, torch.zeros(3))


def test_kl_hand_computed_sum_and_mean() -> None:
    # sample 0: every one of 4 elements differs by 0.5, sigma 0.5: 0.25 / (2 * 0.25) = 0.5 each
    #           -> sum 2.0, mean 0.5
    # sample 1: one element differs by 1.0, sigma 2.0: 1 / (2 * 4) = 0.125 -> sum 0.125,
    #           mean 0.125 / 4 = 0.03125
    base = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    theta = base.clone()
    theta[0] += 0.5
    theta[1, 0, 0, 0] = 1.0
    std = torch.tensor([0.5, 2.0], dtype=torch.float64).view(2, 1, 1, 1)
    torch.testing.assert_close(
        gaussian_kl_same_sigma(theta, base, std, "sum"),
        torch.tensor([2.0, 0.125], dtype=torch.float64),
    )
    torch.testing.assert_close(
        gaussian_kl_same_sigma(theta, base, std, "mean"),
        torch.tensor([0.5, 0.03125], dtype=torch.float64),
    )


def test_kl_sum_matches_torch_distributions_and_is_positive() -> None:
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    base = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    sigma = 0.7
    kl = gaussian_kl_same_sigma(theta, base, sigma, "sum")
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(theta, sigma), torch.distributions.Normal(base, sigma)
    ).sum(dim=(1, 2, 3))
    torch.testing.assert_close(kl, reference)
    assert (kl > 0).all()
    kl.sum().backward()
    torch.testing.assert_close(theta.grad, (theta - base).detach() / sigma**2)


def test_kl_rejects_bad_std_shape() -> None:
    with pytest.raises(ValueError, match="std"):
        gaussian_kl_same_sigma(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(4, 2, 3))


def test_value_loss_mse_and_huber_hand_example() -> None:
    pred = torch.zeros(3, dtype=torch.float64)
    target = torch.tensor([0.5, 2.0, -3.0], dtype=torch.float64)
    # MSE: (0.25 + 4 + 9) / 3
    torch.testing.assert_close(value_loss(pred, target, "mse"), torch.tensor(13.25 / 3).double())
    # Huber, delta 1: 0.5 * 0.25 = 0.125; |2| -> 1 * (2 - 0.5) = 1.5; |3| -> 3 - 0.5 = 2.5
    #   mean = 4.125 / 3 = 1.375
    torch.testing.assert_close(value_loss(pred, target, "huber"), torch.tensor(1.375).double())
    # delta 2: 0.125; 0.5 * 4 = 2.0; 2 * (3 - 1) = 4.0 -> 6.125 / 3
    huber2 = value_loss(pred, target, "huber", huber_delta=2.0)
    assert math.isclose(huber2.item(), 6.125 / 3)


def test_value_loss_does_not_backprop_into_target() -> None:
    pred = torch.zeros(2, requires_grad=True)
    target = torch.ones(2, requires_grad=True)
    value_loss(pred, target).backward()
    assert target.grad is None
    torch.testing.assert_close(pred.grad, torch.tensor([-1.0, -1.0]))
