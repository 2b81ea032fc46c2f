"""LoRA through peft: a no-op at init, the base model exactly when disabled, state round-trips."""

from __future__ import annotations

import pytest
import torch

from critic_unlearn.config import LoraConfig
from critic_unlearn.diffusion.lora import (
    attach_lora,
    base_policy,
    get_adapter_state,
    lora_config_hash,
    set_adapter_state,
)


def unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    enc = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=enc).sample


@pytest.mark.parametrize("init", ["gaussian", "default"])
def test_lora_at_init_leaves_outputs_unchanged(tiny_components, init):
    unet = tiny_components.unet
    before = unet_out(unet)
    names = attach_lora(unet, LoraConfig(rank=4, init=init))
    assert names and all("lora_" in n for n in names)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(names)
    torch.testing.assert_close(unet_out(unet), before, rtol=0, atol=0)


def test_disabled_adapters_give_the_base_model_exactly(tiny_components):
    unet = tiny_components.unet
    before = unet_out(unet)
    attach_lora(unet, LoraConfig(rank=2))
    state = {k: torch.randn_like(v) * 0.1 for k, v in get_adapter_state(unet).items()}
    set_adapter_state(unet, state)
    changed = unet_out(unet)
    assert not torch.allclose(changed, before)
    with base_policy(unet):
        assert torch.equal(unet_out(unet), before)
    assert torch.equal(unet_out(unet), changed)  # re-enabled afterwards


def test_adapter_state_round_trips_and_rejects_mismatches(tiny_components):
    unet = tiny_components.unet
    attach_lora(unet, LoraConfig(rank=2))
    state = {k: torch.randn_like(v) for k, v in get_adapter_state(unet).items()}
    set_adapter_state(unet, state)
    back = get_adapter_state(unet)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="does not match this UNet's LoRA"):
        set_adapter_state(unet, {k: v for k, v in list(state.items())[1:]})
    k0 = next(iter(state))
    with pytest.raises(ValueError, match="has shape .* another lora.rank"):
        set_adapter_state(unet, {**state, k0: torch.zeros(3, 3)})
    assert torch.equal(get_adapter_state(unet)[k0], state[k0])  # nothing half-applied


def test_bad_target_modules_name_the_field(tiny_components):
    with pytest.raises(ValueError, match="lora.target_modules"):
        attach_lora(tiny_components.unet, LoraConfig(target_modules=["no_such_layer"]))


def test_config_hash_tracks_the_adapter_shape():
    assert lora_config_hash(LoraConfig(rank=4)) == lora_config_hash(LoraConfig(rank=4))
    assert lora_config_hash(LoraConfig(rank=4)) != lora_config_hash(LoraConfig(rank=8))
