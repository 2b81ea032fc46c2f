"""On CUDA in fp32, the policy re-scores its own samples: the PPO ratio of a fresh batch is 1.

tests/unit/test_sampling.py checks the same on CPU (bit for bit); here the sampler and the
learner's `policy_step` run on the GPU, where a mismatch (a timestep broadcast differently, a
dtype cast, a device copy of the noise) would make every first PPO ratio differ from 1.
"""

from __future__ import annotations

import pytest
import torch

from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.policy import encode_prompts, policy_step
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.types import Batch, SamplerSettings

pytestmark = pytest.mark.gpu

SETTINGS = SamplerSettings(num_steps=6, eta=1.0, guidance_scale=4.0)


def test_rescoring_on_cuda_fp32_gives_ratio_one(tiny_model_dir, cuda_fp32) -> None:
    c = load_components(str(tiny_model_dir), dtype="float32", device=cuda_fp32)
    specs = [PromptSpec(f"p{i}", t) for i, t in enumerate(["a red circle", "a blue square",
                                                            "a green cross"])]
    trajs = sample_trajectories(c, specs, [0, 1, 2], SETTINGS)
    assert all(t.log_probs.dtype == torch.float32 for t in trajs)
    batch = Batch.from_trajectories(trajs)
    cond = encode_prompts(c.tokenizer, c.text_encoder, batch.prompts)
    uncond = encode_prompts(c.tokenizer, c.text_encoder, [""]).expand_as(cond)
    c.scheduler.set_timesteps(SETTINGS.num_steps, device=cuda_fp32)
    for k in range(batch.timesteps.shape[1]):
        with torch.no_grad():
            out = policy_step(
                c.unet,
                c.scheduler,
                batch.latents[:, k].to(cuda_fp32),
                batch.timesteps[:, k].to(cuda_fp32),
                cond,
                uncond,
                guidance_scale=SETTINGS.guidance_scale,
                eta=SETTINGS.eta,
                prev_sample=batch.next_latents[:, k].to(cuda_fp32),
            )
        assert out.log_prob.device.type == "cuda"
        ratio = torch.exp(out.log_prob.cpu() - batch.log_probs[:, k])
        # same kernels on the same shapes: equal up to float32 rounding of the log-density
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5,
                                   msg=lambda m, k=k: f"step {k}: {m}")
