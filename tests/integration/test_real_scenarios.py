"""The real-model scenarios in configs/ (SD-1.5, ViT-L/14, NudeNet) run end to end on CPU.

Each scenario file validates as written (`critic-unlearn config show`), then trains for two
learner steps through the `critic-unlearn train` command with the tiny random model standing in
for SD-1.5 and a tiny random open_clip folder for ViT-L/14 (everything else as in the file: the
reward, the prompts, LoRA, dtype, the critic), and the church run is evaluated the way a real run
is: zero-shot CLIP UA / IRA (no judge) and FID / KID on the FID Inception's layout (random
weights, loaded from a safetensors file like the real ones).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from critic_unlearn.cli import app
from critic_unlearn.config import load_config
from critic_unlearn.evaluation import evaluate_run
from critic_unlearn.evaluation.fidelity import random_inception_state
from critic_unlearn.rewards.openclip_loading import ClipLoadError
from critic_unlearn.training.metrics import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SCENARIOS = ["sd_forget_church", "sd_forget_van_gogh", "sd_forget_nudity"]
MODELS = {**dict.fromkeys(SCENARIOS, "stable-diffusion-v1-5/stable-diffusion-v1-5"),
          "sd3_forget_church": "stabilityai/stable-diffusion-3.5-medium"}


def _needs(name: str) -> None:
    if name == "sd_forget_nudity":
        pytest.importorskip("nudenet", reason="the [nudity] extra (NudeNet, AGPL-3.0) is not "
                            "installed: pip install -c constraints.txt -e '.[nudity]'")


def tiny_overrides(model_dir: Path, clip_dir: Path, run_dir: Path, name: str) -> list[str]:
    """Stand-ins for the models and a CPU-sized run; the scenario's own settings stay."""
    return [
        f"model.pretrained={model_dir}", f"reward.clip_model={clip_dir}",
        "reward.clip_pretrained=null",
        "sampler.num_steps=3", "sampler.keep_steps=2", "sampler.batch_size=4",
        "learner.batch_size=4", "learner.minibatch_size=2", "learner.train_steps=2",
        "learner.max_steps=2", "learner.checkpoint_every=2", "learner.min_train_std=0",
        "critic.warmup_steps=0", "critic.hidden=16", "critic.timestep_dim=16",
        "replay.min_size_to_sample=4", "replay.capacity=32", "replay.error_buffer=4",
        "runtime.kind=local", "runtime.device=cpu", f"runtime.run_dir={run_dir}",
        f"runtime.run_name={name}",
        f"eval.zero_shot.clip_model={clip_dir}", "eval.zero_shot.clip_pretrained=null",
        "eval.images_per_prompt=1", "eval.batch_size=16",
    ]


@pytest.mark.parametrize("name", list(MODELS))
def test_scenario_validates_as_written(name: str) -> None:
    result = CliRunner().invoke(app, ["config", "show", str(CONFIGS / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["scenario"] == name
    assert shown["model"]["pretrained"] == MODELS[name]
    assert (shown["reward"]["clip_model"], shown["reward"]["clip_pretrained"]) == (
        "ViT-L-14", "openai")
    assert shown["eval"]["judge"] is None and shown["eval"]["zero_shot"]["neighbours"]
    assert shown["eval"]["fidelity"]["enabled"] is True
    cfg = load_config(CONFIGS / f"{name}.yaml")
    if cfg.reward.name == "clip_concept":  # the anchor swaps the concept inside every prompt
        assert all(cfg.reward.prompts.concept in p for p in cfg.reward.prompts.forget)


def test_a_scenario_without_its_clip_here_stops_with_what_to_do(
    tiny_model_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    """ViT-L-14 / openai cannot be downloaded here: the run stops at start, saying how to fix it."""
    args = [a for a in tiny_overrides(tiny_model_dir, clip_dir, tmp_path, "noclip")
            if not a.startswith("reward.clip")]
    result = CliRunner().invoke(app, ["train", str(CONFIGS / "sd_forget_church.yaml"), *args])
    assert isinstance(result.exception, ClipLoadError), result.output
    assert re.search(r"open_clip model 'ViT-L-14' with pretrained='openai'.*save_open_clip",
                     str(result.exception))
    assert not (tmp_path / "noclip" / "metrics.jsonl").exists()  # stopped before any step


@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_trains_two_learner_steps_on_the_tiny_model(
    name: str, tiny_model_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    _needs(name)
    args = tiny_overrides(tiny_model_dir, clip_dir, tmp_path, name)
    result = CliRunner().invoke(app, ["train", str(CONFIGS / f"{name}.yaml"), *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["learner_steps"] == 2 and summary["version"] == 2
    run = Path(summary["run_dir"])
    saved = load_config(run / "config.yaml")
    assert saved.scenario == name and saved.model.dtype == "bfloat16"  # the scenario's own
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    rewards = [r["actor/forget_reward_mean"] for r in rows]
    # finite (a NaN or inf is logged as null): the scenario's reward scored them
    assert all(isinstance(r, float) and math.isfinite(r) for r in rewards), rewards
    assert (run / "adapter" / "adapter.safetensors").is_file()

    if name != "sd_forget_church":
        return
    weights = tmp_path / "fid-inception.safetensors"
    save_file(random_inception_state(0), str(weights))
    cfg = load_config(run / "config.yaml", [f"eval.fidelity.weights={weights}",
                                            "eval.fidelity.kid_subsets=5",
                                            "eval.templates=['a picture of a {}']"])
    out = evaluate_run(run, cfg, grids=False)
    assert out["settings"]["ua_source"] == "zero_shot"
    zs = out["zero_shot"]
    assert zs["classes"][0] == "church" and len(zs["classes"]) == 10
    for key in ("ua", "ira", "base_ua", "base_ira"):
        assert 0.0 <= zs[key] <= 1.0 and out[key] == zs[key], key
    fd = out["fidelity"]
    assert fd["images"] == 9  # retain prompts x 1 eval template x 1 image
    assert fd["fid"] == fd["fid"] and fd["kid"] == fd["kid"]
    table = (run / "eval" / "eval.md").read_text()
    assert "zero-shot CLIP over 10 classes" in table and "| FID to base images" in table
    assert "judged" not in table.split("Per prompt")[0]  # no judge rows without a judge


@pytest.mark.slow
def test_the_sd3_scenario_trains_two_learner_steps_and_exports_for_stock_diffusers(
    tiny_sd3_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    """configs/sd3_forget_church.yaml through `critic-unlearn train` on the tiny SD3-class model
    (flow matching, 16-channel latents): two learner steps, the critic on, the adapter written
    with diffusers' `transformer.` keys (stock loading is pinned in tests/unit/test_sd3_policy)."""
    from safetensors import safe_open

    args = tiny_overrides(tiny_sd3_dir, clip_dir, tmp_path, "sd3")
    result = CliRunner().invoke(app, ["train", str(CONFIGS / "sd3_forget_church.yaml"), *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["learner_steps"] == 2 and summary["version"] == 2
    run = Path(summary["run_dir"])
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["policy/loss"]) for r in rows)
    assert any(k.startswith("critic/ev_t") for k in rows[-1])  # the critic read flow states
    with safe_open(run / "adapter" / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any(".attn.add_q_proj." in k for k in keys)  # the text stream is adapted too
