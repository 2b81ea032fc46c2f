"""The policy step against diffusers' DDIMScheduler.step, and its log-probability."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from critic_unlearn.diffusion.ddim_logprob import ddim_step_with_logprob
from critic_unlearn.diffusion.tiny import sd_ddim_scheduler


def make_scheduler(set_alpha_to_one: bool, prediction_type: str = "epsilon") -> DDIMScheduler:
    s = sd_ddim_scheduler(set_alpha_to_one=set_alpha_to_one, prediction_type=prediction_type)
    s.set_timesteps(10)
    return s


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("index", [0, 4, 9])  # first, middle, last step
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_step_equals_diffusers(set_alpha_to_one, prediction_type, index, eta):
    sched = make_scheduler(set_alpha_to_one, prediction_type)
    g = torch.Generator().manual_seed(index)
    x = torch.randn(3, 4, 8, 8, generator=g)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    t = sched.timesteps[index]
    ref = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    ours = ddim_step_with_logprob(sched, eps, t, x, eta, variance_noise=noise)
    torch.testing.assert_close(ours.prev_sample, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.prev_sample, ours.mean + ours.std * noise, rtol=0, atol=1e-6)


def test_per_sample_timesteps_equal_scalar_calls():
    sched = make_scheduler(False)
    g = torch.Generator().manual_seed(1)
    x, eps, prev = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    ts = sched.timesteps[[0, 5, 9]]
    batched = ddim_step_with_logprob(sched, eps, ts, x, 1.0, prev_sample=prev)
    for i, t in enumerate(ts):
        single = ddim_step_with_logprob(
            sched, eps[i : i + 1], t, x[i : i + 1], 1.0, prev_sample=prev[i : i + 1]
        )
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)
        torch.testing.assert_close(batched.mean[i : i + 1], single.mean)


def test_log_prob_is_the_gaussian_density_and_rescoring_reproduces_it():
    sched = make_scheduler(False)
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = sched.timesteps[3]
    out = ddim_step_with_logprob(sched, eps, t, x, 1.0, generator=g)
    normal = torch.distributions.Normal(out.mean.double(), out.std.double().expand_as(out.mean))
    expected = normal.log_prob(out.prev_sample.double()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob.double(), expected, rtol=1e-5, atol=1e-3)
    again = ddim_step_with_logprob(sched, eps, t, x, 1.0, prev_sample=out.prev_sample)
    assert torch.equal(again.log_prob, out.log_prob)  # ratio exactly 1
    mean_red = ddim_step_with_logprob(
        sched, eps, t, x, 1.0, prev_sample=out.prev_sample, reduction="mean"
    )
    torch.testing.assert_close(mean_red.log_prob, out.log_prob / (4 * 8 * 8))


def test_a_deterministic_last_step_has_zero_log_prob():
    sched = make_scheduler(True)  # abar_prev = 1 at the last step: sigma = 0
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    out = ddim_step_with_logprob(sched, eps, sched.timesteps[-1], x, 1.0)
    assert torch.all(out.std == 0)
    assert torch.equal(out.log_prob, torch.zeros(2))
    assert torch.isfinite(out.prev_sample).all()


def test_eta_zero_is_refused_with_a_clear_error():
    sched = make_scheduler(False)
    with pytest.raises(ValueError, match="eta = 0.*no log-probability"):
        ddim_step_with_logprob(
            sched, torch.zeros(1, 4, 8, 8), sched.timesteps[0], torch.zeros(1, 4, 8, 8), 0.0
        )


def test_sigma_matches_the_formula_in_algorithm_md():
    sched = make_scheduler(False)
    t = int(sched.timesteps[2])
    prev = t - 1000 // 10
    a_t, a_p = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[prev])
    sigma = 0.7 * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    out = ddim_step_with_logprob(sched, torch.zeros(1, 4, 8, 8), t, torch.zeros(1, 4, 8, 8), 0.7)
    assert out.std.item() == pytest.approx(sigma, rel=1e-5)


def test_step_std_matches_the_step():
    from critic_unlearn.diffusion.ddim_logprob import step_std

    sched = make_scheduler(False)
    stds = step_std(sched, sched.timesteps, 0.8)
    for t, expected in zip(sched.timesteps, stds, strict=True):
        out = ddim_step_with_logprob(
            sched, torch.zeros(1, 4, 8, 8), t, torch.zeros(1, 4, 8, 8), 0.8
        )
        assert out.std.item() == pytest.approx(expected.item(), rel=1e-6)
