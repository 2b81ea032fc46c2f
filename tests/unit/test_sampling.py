"""The sampling loop: parity with StableDiffusionPipeline, exact re-scoring, kept steps."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from critic_unlearn.diffusion.policy import encode_prompts, policy_step
from critic_unlearn.diffusion.sampling import PromptSpec, choose_kept_steps, sample_trajectories
from critic_unlearn.types import Batch, SamplerSettings

SETTINGS = SamplerSettings(num_steps=6, eta=1.0, guidance_scale=4.0)


def specs(n: int) -> list[PromptSpec]:
    texts = ["a red circle", "a blue square", "a green cross"]
    return [PromptSpec(f"p{i}", texts[i % 3], "forget" if i % 2 else "retain") for i in range(n)]


def test_final_latents_equal_the_diffusers_pipeline(tiny_components, tiny_model_dir):
    trajs = sample_trajectories(tiny_components, specs(2), [3, 4], SETTINGS)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.scheduler = tiny_components.scheduler  # the same DDIM config
    ref = pipe(
        [s.text for s in specs(2)],
        num_inference_steps=6,
        guidance_scale=4.0,
        eta=1.0,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
        output_type="latent",
    ).images
    ours = torch.stack([t.latents[-1] for t in trajs])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_rescoring_stored_transitions_gives_ratio_exactly_one(tiny_components):
    c = tiny_components
    trajs = sample_trajectories(c, specs(3), [0, 1, 2], SETTINGS)
    batch = Batch.from_trajectories(trajs)
    cond = encode_prompts(c.tokenizer, c.text_encoder, batch.prompts)
    uncond = encode_prompts(c.tokenizer, c.text_encoder, [""]).expand_as(cond)
    c.scheduler.set_timesteps(SETTINGS.num_steps)
    for k in range(batch.timesteps.shape[1]):
        with torch.no_grad():
            out = policy_step(
                c.unet,
                c.scheduler,
                batch.latents[:, k],
                batch.timesteps[:, k],
                cond,
                uncond,
                guidance_scale=SETTINGS.guidance_scale,
                eta=SETTINGS.eta,
                prev_sample=batch.next_latents[:, k],
            )
        ratio = torch.exp(out.log_prob - batch.log_probs[:, k])
        assert torch.equal(ratio, torch.ones_like(ratio)), (k, ratio)


def test_a_trajectory_depends_on_its_seed_not_its_batch(tiny_components):
    alone = sample_trajectories(tiny_components, specs(1), [7], SETTINGS)[0]
    mixed = sample_trajectories(tiny_components, specs(3), [5, 7, 9], SETTINGS)
    other = mixed[1]
    assert other.prompt == "a blue square" and alone.prompt == "a red circle"
    again = sample_trajectories(tiny_components, [specs(3)[1]], [7], SETTINGS)[0]
    # same noise; only float reduction order differs between batch sizes
    torch.testing.assert_close(again.latents, other.latents, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(alone.latents[-1], other.latents[-1])  # the prompt matters


def test_keep_k_of_s_steps_is_seeded_and_consistent(tiny_components):
    a = sample_trajectories(tiny_components, specs(2), [11, 12], SETTINGS, keep_steps=3)
    b = sample_trajectories(tiny_components, specs(2), [11, 12], SETTINGS, keep_steps=3)
    full = sample_trajectories(tiny_components, specs(2), [11, 12], SETTINGS)
    assert [t.steps.tolist() for t in a] == [t.steps.tolist() for t in b]
    assert a[0].steps.tolist() != a[1].steps.tolist()  # seeds 11 and 12 pick other steps
    for kept, whole in zip(a, full, strict=True):
        assert kept.num_kept == 3 and whole.num_kept == SETTINGS.num_steps
        assert whole.latents.shape[0] == SETTINGS.num_steps + 1  # x_T .. x_0
        before, after = kept.transitions()
        wb, wa = whole.transitions()
        torch.testing.assert_close(before, wb[kept.steps], rtol=0, atol=0)
        torch.testing.assert_close(after, wa[kept.steps], rtol=0, atol=0)
        torch.testing.assert_close(kept.log_probs, whole.log_probs[kept.steps], rtol=0, atol=0)
        assert torch.equal(kept.timesteps, whole.timesteps[kept.steps])


def test_kept_steps_are_a_sorted_seeded_subset_that_varies_with_the_seed():
    stochastic = [0, 1, 2, 3, 4, 5, 6, 7]
    picks = [choose_kept_steps(stochastic, 3, seed) for seed in range(40)]
    assert all(len(p) == 3 and p == sorted(set(p)) and set(p) <= set(stochastic) for p in picks)
    assert picks == [choose_kept_steps(stochastic, 3, seed) for seed in range(40)]
    assert len({tuple(p) for p in picks}) >= 20  # 56 subsets: seeds must spread over them
    assert {s for p in picks for s in p} == set(stochastic)  # every step can be kept
    assert choose_kept_steps(stochastic, None, 1) == stochastic
    assert choose_kept_steps(stochastic, 8, 1) == choose_kept_steps(stochastic, 99, 1) == stochastic


def test_images_are_decoded_uint8(tiny_components):
    t = sample_trajectories(tiny_components, specs(1), [0], SETTINGS)[0]
    assert t.image.dtype == torch.uint8 and t.image.shape == (16, 16, 3)
    assert torch.isnan(torch.tensor(t.reward))  # not scored yet
    assert t.sampler == SETTINGS
