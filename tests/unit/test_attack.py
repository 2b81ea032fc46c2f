"""The learned-prompt attack's parts on the embedded toy world: soft tokens, the differentiable
sampler (equal to the policy's), and the optimisation itself."""

import pytest
import torch

from critic_unlearn.adversarial.learn import AttackSettings, learn_prompt, sample_images
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.policy import encode_prompts
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.diffusion.soft_prompt import SoftPromptError, encode_soft, word_embeddings
from critic_unlearn.rewards.openclip_loading import load_open_clip
from critic_unlearn.types import SamplerSettings


@pytest.fixture(scope="module")
def toy():
    return load_components("toyworld")


@pytest.fixture(scope="module")
def clip():
    return load_open_clip("toyworld", None, device="cpu")


def test_soft_tokens_equal_the_words_they_embed(toy) -> None:
    """Soft tokens set to the embedding rows of 'crimson' condition exactly like the text."""
    vectors = word_embeddings(toy.tokenizer, toy.text_encoder, "crimson")
    with torch.no_grad():
        soft = encode_soft(toy.tokenizer, toy.text_encoder, ["a circle"], vectors)
    plain = encode_prompts(toy.tokenizer, toy.text_encoder, ["crimson a circle"])
    assert torch.equal(soft, plain)
    other = encode_prompts(toy.tokenizer, toy.text_encoder, ["azure a circle"])
    assert not torch.allclose(soft, other)


def test_too_many_soft_tokens_is_a_clear_error(toy) -> None:
    vectors = torch.zeros(12, toy.text_encoder.get_input_embeddings().embedding_dim)
    with pytest.raises(SoftPromptError, match="attack.num_tokens"):
        encode_soft(toy.tokenizer, toy.text_encoder, ["a red circle on a plain background"],
                    vectors)


def test_differentiable_sampler_gives_the_policy_images(toy) -> None:
    cond = encode_prompts(toy.tokenizer, toy.text_encoder, ["a red circle"] * 2)
    with torch.no_grad():
        ours = sample_images(toy, cond, [5, 6], 4, 1.0, 1.5)
    trajs = sample_trajectories(toy, [PromptSpec("p", "a red circle", "forget")] * 2, [5, 6],
                                SamplerSettings(4, 1.0, 1.5, "sum"), keep_steps=1)
    ours_u8 = (ours * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(ours_u8, torch.stack([t.image for t in trajs]))


def test_learn_prompt_moves_only_the_tokens_and_is_reproducible(toy, clip) -> None:
    s = AttackSettings(num_tokens=2, steps=2, lr=0.05, batch_size=2, seed=3, init="random",
                       num_steps=3, eta=1.0, guidance_scale=1.5)
    texts = ["an image of a red circle"]
    classes = [["an image of a red circle", "an image of a green circle"]]
    before = {n: p.clone() for n, p in toy.unet.named_parameters()}
    a = learn_prompt(toy, clip, texts, classes, "red", s)
    b = learn_prompt(toy, clip, texts, classes, "red", s)
    assert a.vectors.shape == (2, toy.text_encoder.get_input_embeddings().embedding_dim)
    assert torch.equal(a.vectors, b.vectors) and a.losses == b.losses
    s0 = AttackSettings(**{**s.__dict__, "steps": 1})
    one = learn_prompt(toy, clip, texts, classes, "red", s0)
    assert not torch.equal(one.vectors, a.vectors)  # the second step moved the tokens
    assert all(torch.equal(p, before[n]) for n, p in toy.unet.named_parameters())
    assert len(a.losses) == 2 and all(0 <= q <= 1 for q in a.concept_prob)
