"""The precision policy on CUDA: actor and learner in fp16/bf16 (and fp32) under the same autocast
state, the learner re-scoring in other batch shapes than the actor sampled in.

tests/unit/test_precision.py measures the same on CPU (exactly 0 in the actor's shapes, fp32
round-off in the learner's where the BLAS is not batch-invariant). CUDA kernels may pick
other algorithms for other batch shapes, so on a GPU the UNet's low-precision rounding can differ
between the actor's batch and the learner's minibatch; this measures what that costs, prints it,
and holds it to the issue's target, |log ratio| < 1e-3 per step with reduction = sum.
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_precision import TOLERANCE, actor_and_learner, log_ratios

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("size", [None, 128], ids=["tiny-latents", "sd15-latents-64x64"])
def test_low_precision_log_ratio_on_cuda(tiny_model_dir, dtype, size):
    cfg, actor, learner = actor_and_learner(tiny_model_dir, dtype, device="cuda")
    batch, lr = log_ratios(cfg, actor, learner, size)
    print(f"cuda {dtype} max |log ratio| = {lr.abs().max().item():.3g} "
          f"(mean {lr.abs().mean().item():.3g}, |log p| ~ {batch.log_probs.abs().mean():.3g})")
    assert lr.abs().max() < TOLERANCE


def test_fp32_log_ratio_on_cuda(tiny_model_dir, cuda_fp32):
    cfg, actor, learner = actor_and_learner(tiny_model_dir, "float32", device=cuda_fp32)
    _, lr = log_ratios(cfg, actor, learner)
    print(f"cuda float32 max |log ratio| = {lr.abs().max().item():.3g}")
    assert lr.abs().max() < TOLERANCE


def test_a_bf16_learner_step_trains_fp32_lora_on_cuda(tiny_model_dir):
    cfg, actor, learner = actor_and_learner(tiny_model_dir, "bfloat16", device="cuda")
    batch, _ = log_ratios(cfg, actor, learner)
    before = [p.detach().clone() for p in learner.lora_params]
    metrics = learner.step(batch)
    assert torch.isfinite(torch.tensor(metrics["policy/loss"]))
    assert all(p.dtype == torch.float32 for p in learner.lora_params)
    assert any(not torch.equal(a, p) for a, p in zip(before, learner.lora_params, strict=True))
