"""The adversarial soft-prompt pool: bounded, exact over bytes, one conditioning for all."""

import pytest
import torch

from critic_unlearn.adversarial.loop import refresh_pool
from critic_unlearn.adversarial.pool import SoftPromptPool, encode_mixed
from critic_unlearn.codec import CodecError
from critic_unlearn.config import load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.lora import attach_lora
from critic_unlearn.diffusion.policy import encode_prompts
from critic_unlearn.diffusion.soft_prompt import encode_soft
from critic_unlearn.rewards.openclip_loading import load_open_clip


@pytest.fixture(scope="module")
def toy():
    return load_components("toyworld")


def test_pool_drops_the_oldest_and_keeps_ids_stable() -> None:
    pool = SoftPromptPool(2)
    a = pool.add("a red circle", torch.ones(2, 4))
    b = pool.add("a red square", torch.ones(2, 4))
    c = pool.add("a red circle", torch.full((2, 4), 2.0))
    assert len(pool) == 2 and a.id not in pool and b.id in pool and c.id in pool
    assert pool.add("a red square", torch.ones(2, 4)).id == b.id  # same text+vectors, same id
    with pytest.raises(KeyError, match="attack.pool_size"):
        pool.get(a.id)


def test_pool_round_trips_exactly_and_refuses_tampering() -> None:
    pool = SoftPromptPool(3)
    pool.add("a red circle", torch.randn(3, 64, generator=torch.Generator().manual_seed(0)))
    pool.add("a red cross", torch.randn(3, 64, generator=torch.Generator().manual_seed(1)))
    back = SoftPromptPool.from_bytes(pool.to_bytes())
    assert [p.id for p in back.prompts] == [p.id for p in pool.prompts]
    assert all(torch.equal(x.vectors, y.vectors) for x, y in
               zip(back.prompts, pool.prompts, strict=True))
    blob = bytearray(pool.to_bytes())
    blob[-3] ^= 1
    with pytest.raises(CodecError):
        SoftPromptPool.from_bytes(bytes(blob))


def test_mixed_batch_conditions_pool_prompts_with_their_tokens(toy) -> None:
    pool = SoftPromptPool(4)
    entry = pool.add("a red circle", torch.randn(2, 64, generator=torch.Generator().manual_seed(2)))
    cond = encode_mixed(toy.tokenizer, toy.text_encoder, ["forget-x", entry.id],
                        ["a red square", entry.text], pool)
    plain = encode_prompts(toy.tokenizer, toy.text_encoder, ["a red square"])
    with torch.no_grad():
        soft = encode_soft(toy.tokenizer, toy.text_encoder, [entry.text], entry.vectors)
    assert torch.equal(cond[0], plain[0]) and torch.equal(cond[1], soft[0])
    again = SoftPromptPool.from_bytes(pool.to_bytes())  # what a learner would hold
    assert torch.equal(encode_mixed(toy.tokenizer, toy.text_encoder, [entry.id], [entry.text],
                                    again), cond[1:])


def test_refresh_pool_adds_one_entry_per_forget_prompt(toy) -> None:
    cfg = load_config("configs/toy_forget_red.yaml", [
        "reward.prompts.forget=[red circle, red square]", "reward.prompts.templates=['a {}']",
        "attack.steps=1", "attack.batch_size=2", "attack.sample_steps=2", "attack.pool_size=3"])
    attach_lora(toy.unet, cfg.lora)
    clip = load_open_clip("toyworld", None, device="cpu")
    pool = SoftPromptPool(cfg.attack.pool_size)
    m = refresh_pool(pool, toy, clip, cfg, step=10)
    assert len(pool) == 2 and {p.text for p in pool.prompts} == {"a red circle", "a red square"}
    refresh_pool(pool, toy, clip, cfg, step=20)  # other seeds: new tokens, the oldest dropped
    assert len(pool) == 3 and m["adversarial/attack_s"] > 0


def test_a_warm_started_in_loop_attack_continues_from_the_newest_tokens(toy) -> None:
    cfg = load_config("configs/toy_forget_red.yaml", [
        "reward.prompts.forget=[red circle]", "reward.prompts.templates=['a {}']",
        "attack.steps=5", "attack.in_loop_steps=1", "attack.lr=0.01", "attack.batch_size=2",
        "attack.sample_steps=2", "attack.num_tokens=2"])
    if not hasattr(toy.unet, "peft_config"):  # the fixture is shared: attach once
        attach_lora(toy.unet, cfg.lora)
    clip = load_open_clip("toyworld", None, device="cpu")
    dim = toy.text_encoder.get_input_embeddings().embedding_dim
    far = torch.full((2, dim), 3.0)  # no word embeds near here (toy rows have norm ~0.16)

    def next_tokens(warm: bool) -> tuple[torch.Tensor, dict[str, float]]:
        pool = SoftPromptPool(4)
        pool.add("a red circle", far)
        c = cfg.model_copy(update={"attack": cfg.attack.model_copy(
            update={"in_loop_warm_start": warm})})
        m = refresh_pool(pool, toy, clip, c, step=10)
        return pool.prompts[-1].vectors, m

    warm, m = next_tokens(True)
    assert m["adversarial/attack_steps"] == 1  # in_loop_steps, not attack.steps
    assert (warm - far).abs().max() <= 0.0101  # one Adam step of lr 0.01 from the newest tokens
    cold, _ = next_tokens(False)
    assert (cold - far).abs().min() > 2.0  # from the concept words, as `attack` starts
