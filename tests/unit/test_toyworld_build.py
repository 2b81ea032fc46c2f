"""A reduced build (tiny models, a few steps) proves the whole build path end to end.

The reduced world is useless as a world (its gates fail, as the card says), but every file it
writes must load through the same code paths the real world uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from critic_unlearn import sources
from critic_unlearn.diffusion.loading import check_model_source, load_components
from critic_unlearn.evaluation.judging import judge_vocabulary
from critic_unlearn.rewards.classifier import load_classifier
from critic_unlearn.rewards.openclip_loading import load_open_clip
from critic_unlearn.toyworld import ENV_VAR, judge_dir, pipeline_dir, reward_clip_dir, world_dir
from critic_unlearn.toyworld.build import build_world
from critic_unlearn.toyworld.build_config import BuildConfig
from critic_unlearn.toyworld.gates import THRESHOLDS


@pytest.fixture(scope="module")
def reduced_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toyworld") / "world"
    card = build_world(out, BuildConfig.reduced())
    return out, card


def test_reduced_build_writes_every_part_and_an_honest_card(reduced_world) -> None:
    out, card = reduced_world
    for part in ("pipeline/model_index.json", "reward_clip/open_clip_config.json",
                 "judge/classifier.json", "model_card.json", "README.md", "samples.png"):
        assert (out / part).is_file(), part
    assert not out.with_name("world.building").exists()
    on_disk = json.loads((out / "model_card.json").read_text())
    assert on_disk["config"] == BuildConfig.reduced().to_json()
    assert set(on_disk["gates"]) == set(THRESHOLDS)
    assert on_disk["gates_passed"] == all(g["passed"] for g in on_disk["gates"].values())
    assert on_disk["wall_s"]["total"] > 0 and on_disk["size_bytes"] > 0
    assert len(on_disk["training_curve"]) == 1
    assert "## Quality gates" in (out / "README.md").read_text()


def test_weights_are_fp16_but_load_as_float32_pipelines(reduced_world) -> None:
    out, _ = reduced_world
    with safe_open(str(out / "pipeline/unet/diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    comps = load_components(str(out / "pipeline"))
    assert comps.unet.dtype == torch.float32 and comps.default_size == 32
    assert comps.tokenizer.model_max_length == 16
    pipe = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"))
    image = pipe("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)


def test_reward_clip_and_judge_load_through_the_library_loaders(reduced_world) -> None:
    out, _ = reduced_world
    clip = load_open_clip(str(out / "reward_clip"))
    tokens = clip.tokenizer(["a red circle"])
    assert tokens.shape == (1, 16)
    assert clip.model.encode_image(torch.rand(2, 3, 32, 32)).shape == (2, clip.embed_dim)
    judge = load_classifier(out / "judge")
    heads = judge(torch.rand(3, 3, 32, 32))
    assert heads["colour"].shape == (3, 5) and heads["shape"].shape == (3, 5)
    words = judge_vocabulary(out / "judge")  # the build writes how prompts name the classes
    assert words.read("a crimson plus sign") == {"colour": "red", "shape": "cross"}


def test_env_var_points_the_toyworld_names_at_a_built_world(reduced_world, monkeypatch) -> None:
    out, _ = reduced_world
    monkeypatch.setenv(ENV_VAR, str(out))
    assert world_dir() == out and pipeline_dir() == out / "pipeline"
    assert judge_dir() == out / "judge"
    assert load_open_clip("toyworld").name == str(reward_clip_dir())
    assert sources.resolve("model", "toyworld") == check_model_source("toyworld") == str(
        out / "pipeline")
    assert sources.resolve("judge", "toyworld") == str(out / "judge")


def test_a_missing_world_says_how_to_build_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="critic-unlearn toyworld build"):
        world_dir()
    with pytest.raises(FileNotFoundError, match="critic-unlearn toyworld build"):
        check_model_source("toyworld")  # the loaders resolve the name through the world


def test_saved_tokenizer_matches_clip_bpe(reduced_world) -> None:
    from transformers import CLIPTokenizer

    from critic_unlearn.diffusion.tiny import clip_tokenizer

    out, _ = reduced_world
    saved = CLIPTokenizer.from_pretrained(str(out / "pipeline"), subfolder="tokenizer")
    text = ["a crimson plus sign on a grey background", "an azure disc", ""]
    assert saved(text).input_ids == clip_tokenizer(16)(text).input_ids
    assert saved.model_max_length == 16


def test_cli_builds_a_reduced_world(tmp_path) -> None:
    from typer.testing import CliRunner

    from critic_unlearn.toyworld.cli import app

    result = CliRunner().invoke(app, ["build", "--out", str(tmp_path / "w"), "--reduced"])
    assert result.exit_code == 0, result.output  # reduced builds never fail on gates
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(tmp_path / "w") and summary["gates_passed"] is False
    assert (tmp_path / "w" / "model_card.json").is_file()
