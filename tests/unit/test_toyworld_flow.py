"""The flow toy world's build path, reduced (a 1-block MMDiT, 8 steps): every file it writes loads
through the code a real run uses, the shared parts are the UNet world's, and the source name
"toyworld-flow" resolves to it. The reduced world's gates fail, as its card says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from critic_unlearn.diffusion.backbones import load_policy
from critic_unlearn.diffusion.contract import POLICY_SETTINGS
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.diffusion.sd3 import SD3Policy
from critic_unlearn.toyworld import FLOW_ENV_VAR, WorldMissingError, flow_world_dir, world_dir
from critic_unlearn.toyworld.flow import FlowConfig, build_flow_world, projected_text_encoder
from critic_unlearn.types import SamplerSettings


@pytest.fixture(scope="module")
def reduced_flow_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toyworld") / "flow"
    return out, build_flow_world(out, world_dir(), FlowConfig.reduced())


def test_the_reduced_flow_build_writes_a_pipeline_and_an_honest_card(reduced_flow_world):
    out, card = reduced_flow_world
    for part in ("pipeline/model_index.json", f"pipeline/{POLICY_SETTINGS}", "model_card.json",
                 "README.md", "samples.png"):
        assert (out / part).is_file(), part
    assert not out.with_name("flow.building").exists()
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    on_disk = json.loads((out / "model_card.json").read_text())
    assert on_disk["backbone"] == "flow" and on_disk["config"]["name"] == "reduced"
    assert on_disk["gates_passed"] == all(g["passed"] for g in on_disk["gates"].values())
    assert len(on_disk["training_curve"]) == 1 and on_disk["size_bytes"] > 0


def test_the_flow_world_loads_as_an_sd3_policy_and_samples(reduced_flow_world, monkeypatch):
    out, _ = reduced_flow_world
    monkeypatch.setenv(FLOW_ENV_VAR, str(out))
    policy = load_policy("toyworld-flow")
    assert isinstance(policy, SD3Policy) and policy.max_sequence_length == 0
    assert policy.encode(["a red circle"]).shape[1] == 16 + 1  # 16 CLIP tokens + the pooled row
    trajs = sample_trajectories(policy, [PromptSpec("p", "a red circle", "forget")], [3],
                                SamplerSettings(2, 0.7, 1.5))
    assert trajs[0].image.shape == (32, 32, 3) and torch.isfinite(trajs[0].log_probs).all()
    # the stock pipeline loads the folder too (no T5, T5 tokens 0, as the card says)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(out / "pipeline"), text_encoder_3=None,
                                                    tokenizer_3=None)
    x = policy.initial_noise(policy.latent_shape(), [torch.Generator().manual_seed(1)])
    ref = pipe(prompt="a red circle", latents=x.clone(), num_inference_steps=2,
               guidance_scale=1.5, output_type="latent", max_sequence_length=0).images
    y = x
    for t in policy.set_timesteps(2):
        y = policy.step(y, t, policy.encode(["a red circle"]), policy.empty_condition(),
                        guidance_scale=1.5, eta=0.0).prev_sample
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


def test_the_text_encoders_are_the_unet_worlds(reduced_flow_world):
    """Same weights, identity projection: the pooled embedding is the UNet world's EOS feature."""
    from critic_unlearn.diffusion.loading import load_components
    from critic_unlearn.toyworld import pipeline_dir

    base = load_components(str(pipeline_dir()))
    projected = projected_text_encoder(base.text_encoder)
    ids = base.tokenizer(["a red circle"], padding="max_length", max_length=16,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        want = base.text_encoder(ids)
        got = projected(ids)
    torch.testing.assert_close(got.text_embeds, want.pooler_output, rtol=0, atol=1e-6)


def test_a_missing_flow_world_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv(FLOW_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(WorldMissingError, match="toyworld build --backbone flow"):
        flow_world_dir()


def test_the_packaged_flow_world_is_the_codes_recipe_and_passed_its_gates():
    """The shipped weights match FlowConfig() (change one, rebuild the other) and the card says
    every gate passed; the package stays small."""
    from dataclasses import asdict

    from critic_unlearn.toyworld import PACKAGED_FLOW_WORLD
    from critic_unlearn.toyworld.flow import json_ready

    card = json.loads((PACKAGED_FLOW_WORLD / "model_card.json").read_text())
    assert card["config"] == json_ready(asdict(FlowConfig()))
    assert card["gates_passed"] is True and all(g["passed"] for g in card["gates"].values())
    assert card["size_bytes"] < 30e6
    settings = json.loads((PACKAGED_FLOW_WORLD / "pipeline" / POLICY_SETTINGS).read_text())
    assert settings == {"max_sequence_length": 0}
