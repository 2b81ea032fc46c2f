"""Evaluation: UA/IRA arithmetic on judged labels, and evaluate_run end to end (reduced world)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from critic_unlearn.codec import encode_state_dict
from critic_unlearn.config import load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.lora import attach_lora, get_adapter_state
from critic_unlearn.evaluation import EvaluationError, evaluate_run
from critic_unlearn.evaluation.judging import (
    concept_attributes,
    judge_vocabulary,
    prompt_attributes,
    shows,
)
from critic_unlearn.io_utils import atomic_write_bytes
from critic_unlearn.toyworld import ENV_VAR, judge_dir, pipeline_dir
from critic_unlearn.toyworld.build import build_world
from critic_unlearn.toyworld.build_config import BuildConfig


def test_concepts_and_prompts_parse_into_judge_attributes() -> None:
    words = judge_vocabulary(judge_dir())  # the toy world's judge names its classes' synonyms
    assert concept_attributes("red", words) == {"colour": "red"}
    assert concept_attributes("circle", words) == {"shape": "circle"}
    assert concept_attributes("scarlet disc", words) == {"colour": "red", "shape": "circle"}
    assert prompt_attributes("an image of a blue square", words) == {"colour": "blue",
                                                                     "shape": "square"}
    assert prompt_attributes("a dog", words) == {}
    with pytest.raises(EvaluationError, match="names no colour or shape the judge knows"):
        concept_attributes("a dog", words)
    with pytest.raises(EvaluationError, match="several colour classes"):
        prompt_attributes("a red and blue circle", words)


def test_shows_needs_every_named_attribute() -> None:
    labels = {"colour": ["red", "red", "blue", "none"], "shape": ["circle", "square", "circle",
                                                                  "none"]}
    assert shows(labels, {"colour": "red"}).tolist() == [True, True, False, False]
    both = shows(labels, {"colour": "red", "shape": "circle"})
    assert both.tolist() == [True, False, False, False]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("evalworld") / "world"
    build_world(out, BuildConfig.reduced())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, str(out))
        yield out


def _cfg(**extra: str):
    overrides = [
        "model.pretrained=toyworld", "reward.clip_model=toyworld", "runtime.device=cpu",
        "reward.prompts.concept=red", "reward.prompts.forget=[red circle, crimson square]",
        "reward.prompts.retain=[blue circle]", "reward.prompts.templates=['a {}']",
        "eval.templates=['an image of a {}']", "eval.images_per_prompt=3", "eval.grid_images=2",
        "sampler.num_steps=2", "lora.rank=2",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def _adapter(cfg) -> dict[str, torch.Tensor]:
    comps = load_components(str(pipeline_dir()))
    attach_lora(comps.unet, cfg.lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in comps.unet.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)  # a visibly different policy
    return get_adapter_state(comps.unet)


def test_evaluate_run_writes_json_table_and_grids(world, tmp_path: Path) -> None:
    cfg = _cfg()
    result = evaluate_run(tmp_path, cfg, _adapter(cfg))
    for key in ("ua", "ira", "base_ua", "base_ira"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["images"] == 2 * 3 * 3  # (base + unlearned) x 3 prompts x 3 seeds
    assert set(result["forget_attribute_accuracy"]) == {"shape"}  # colour is the concept
    texts = [r["prompt"] for r in result["per_prompt"]]
    assert texts == ["an image of a red circle", "an image of a crimson square",
                     "an image of a blue circle"]
    out = tmp_path / "eval"
    assert json.loads((out / "eval.json").read_text())["ua"] == result["ua"]
    table = (out / "eval.md").read_text()
    assert "| UA: forget images not judged \"red\" |" in table
    for row in result["per_prompt"]:
        assert (out / row["grid"]).is_file()
    assert (out / "base_images.safetensors").is_file()
    # beside the mean IRA: the one retain prompt is the worst, its drop read from its row
    retain = result["per_prompt"][2]
    assert result["worst_retain_prompt"] == retain["prompt"] == "an image of a blue circle"
    drop = 100 * (retain["base_rate"] - retain["rate"])
    assert result["worst_retain_drop_pts"] == pytest.approx(drop, abs=1e-6)
    assert (result["worst_retain_base"], result["worst_retain_after"]) == (
        retain["base_rate"], retain["rate"])
    assert result["retain_share_below_10"] == (1.0 if drop > 10 + 1e-6 else 0.0)
    assert f"| worst retain prompt, judged right: \"{retain['prompt']}\" |" in table
    assert f"({-result['worst_retain_drop_pts']:+.1f} points, paired sign test p = " in table
    assert "| retain prompts more than 10 points below base | - |" in table
    # the paired sign test: on retain rows only; 3 seeds can never reach Holm's 5% (p >= 1/8)
    assert result["worst_retain_p"] == retain["p_below_base"]
    assert 1 / 8 <= retain["p_below_base"] <= 1.0
    assert [r["p_below_base"] for r in result["per_prompt"][:2]] == [None, None]
    assert result["retain_significantly_below"] == []
    assert "| retain prompts significantly below base (paired, Holm 5%) | - | 0 |" in table


def test_exported_adapter_is_found_and_base_images_are_cached(world, tmp_path: Path) -> None:
    cfg = _cfg()
    state = _adapter(cfg)
    first = evaluate_run(tmp_path, cfg, state, grids=False)
    cache = tmp_path / "eval" / "base_images.safetensors"
    stamp = cache.stat().st_mtime_ns
    atomic_write_bytes(tmp_path / "adapter" / "adapter.safetensors", encode_state_dict(state, {}))
    second = evaluate_run(tmp_path, cfg, grids=False)
    assert cache.stat().st_mtime_ns == stamp  # base not sampled again
    for key in ("ua", "ira", "base_ua", "base_ira", "clip_score", "base_clip_score"):
        assert second[key] == pytest.approx(first[key]), key
    evaluate_run(tmp_path, _cfg(**{"eval.seeds_offset": "7"}), state, grids=False)
    assert cache.stat().st_mtime_ns != stamp  # other seeds: other base images


def test_a_run_without_adapter_is_explained(world, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no adapter"):
        evaluate_run(tmp_path, _cfg())


def test_eval_command_reads_the_run_config_and_prints_json(world, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from critic_unlearn.config import dump_config
    from critic_unlearn.evaluation.cli import eval_command

    cfg = _cfg()
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    atomic_write_bytes(tmp_path / "adapter" / "adapter.safetensors",
                       encode_state_dict(_adapter(cfg), {}))
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # two commands: "eval" stays a sub-command name
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "eval.images_per_prompt=2"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(line) >= {"ua", "ira", "base_ua", "base_ira", "worst_retain_prompt",
                         "worst_retain_drop_pts", "retain_share_below_10"}
    assert line["worst_retain_prompt"] == "an image of a blue circle"
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["images"] == 2 * 3 * 2


def test_curve_judges_every_snapshot_like_evaluate_run(world, tmp_path: Path) -> None:
    from critic_unlearn.evaluation.curve import evaluate_curve, trajectories_to
    from critic_unlearn.training.plots import plot_curve
    from critic_unlearn.training.snapshots import list_snapshots, save_snapshot

    cfg = _cfg()
    moved = _adapter(cfg)
    zero = {k: torch.zeros_like(v) for k, v in moved.items()}  # LoRA B = A = 0: the base model
    save_snapshot(tmp_path, 20, 640, moved, {"version": 20})
    save_snapshot(tmp_path, 10, 320, zero, {"version": 10})
    assert [(s.step, s.trajectories) for s in list_snapshots(tmp_path)] == [(10, 320), (20, 640)]
    curve = evaluate_curve(tmp_path, cfg, images_per_prompt=3)
    first, second = curve["points"]
    assert (first["step"], second["step"]) == (10, 20)
    assert (first["ua"], first["ira"]) == (curve["base"]["ua"], curve["base"]["ira"])
    full = evaluate_run(tmp_path, cfg, moved, grids=False)
    assert (second["ua"], second["ira"]) == (full["ua"], full["ira"])  # same seeds and images
    assert curve["base"]["ua"] == full["base_ua"]
    # per retain prompt: the zero adapter is the base model (drop 0), the moved one agrees with
    # evaluate_run's per-prompt rows and retain drift
    retain = {r["prompt"]: (r["base_rate"], r["rate"]) for r in full["per_prompt"]
              if r["role"] == "retain"}
    assert curve["base"]["retain_per_prompt"] == {t: b for t, (b, _) in retain.items()}
    assert first["retain_per_prompt"] == curve["base"]["retain_per_prompt"]
    assert (first["worst_retain_drop_pts"], first["retain_share_below_10"]) == (0.0, 0.0)
    assert second["retain_per_prompt"] == {t: a for t, (_, a) in retain.items()}
    for key in ("worst_retain_prompt", "worst_retain_drop_pts", "retain_share_below_10"):
        assert second[key] == full[key], key
    assert json.loads((tmp_path / "eval" / "curve.json").read_text()) == curve
    assert trajectories_to(curve, 1.1) is None
    assert trajectories_to(curve, -1.0) == 320
    assert plot_curve(tmp_path, curve).is_file()


def test_final_evaluation_judges_only_the_last_snapshot_at_its_own_size(world,
                                                                       tmp_path: Path) -> None:
    from critic_unlearn.evaluation.curve import evaluate_curve, evaluate_final
    from critic_unlearn.training.snapshots import save_snapshot

    cfg = _cfg()
    moved = _adapter(cfg)
    zero = {k: torch.zeros_like(v) for k, v in moved.items()}
    save_snapshot(tmp_path, 10, 320, moved, {"version": 10})
    save_snapshot(tmp_path, 20, 640, zero, {"version": 20})  # the last one is the base model
    curve = evaluate_curve(tmp_path, cfg, images_per_prompt=2)
    final = evaluate_final(tmp_path, cfg, images_per_prompt=4)
    (point,) = final["points"]
    assert (point["step"], point["trajectories"], final["images_per_prompt"]) == (20, 640, 4)
    assert (point["ua"], point["ira"]) == (final["base"]["ua"], final["base"]["ira"])
    assert point["worst_retain_drop_pts"] == 0.0
    assert final["base"]["retain_per_prompt"].keys() == curve["base"]["retain_per_prompt"].keys()
    # its own files: the curve's json and base-image cache are left as they were
    assert json.loads((tmp_path / "eval" / "curve.json").read_text()) == curve
    assert json.loads((tmp_path / "eval" / "final_eval.json").read_text()) == final
    assert (tmp_path / "eval" / "final_base_images.safetensors").is_file()
    assert (tmp_path / "eval" / "curve_base_images.safetensors").is_file()


def test_ablation_bench_adds_the_final_evaluation_to_a_finished_run(world, tmp_path: Path) -> None:
    """A run judged before --final-images existed gets its final evaluation without retraining;
    one already judged at that size, or whose snapshots are gone, is left alone."""
    from argparse import Namespace

    from bench.experiments.sample_efficiency import Cell, finalize_cell, needs_final
    from critic_unlearn.training.snapshots import save_snapshot

    cfg = _cfg()
    run = tmp_path / "s0"
    cell = Cell("toy", "critic", 0, cfg, run, {}, "done")
    run.mkdir()
    judged = {"base": {"ua": 0.1, "ira": 0.9},
              "points": [{"step": 10, "trajectories": 320, "ua": 0.5, "ira": 0.9},
                         {"step": 20, "trajectories": 640, "ua": 0.95, "ira": 0.9}]}
    (run / "result.json").write_text(json.dumps(
        {"arm": "critic", "trajectories": 640, "target_ua": 0.9, "curve": judged}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": k, "time_s": 3.0 * k}) + "\n"
                                               for k in range(1, 21)))
    assert not needs_final(cell, 4)  # no snapshots left to judge
    save_snapshot(run, 20, 640, _adapter(cfg), {"version": 20})
    assert needs_final(cell, 4) and not needs_final(cell, 0)
    r = finalize_cell(cell, Namespace(final_images=4))
    assert r["final_eval"]["images_per_prompt"] == 4 and r["final_eval"]["step"] == 20
    assert json.loads((run / "result.json").read_text()) == r
    assert r["trajectories"] == 640  # the rest of the result is kept
    assert r["wall_s_to_target"] == 60.0  # from before it was recorded: read from the metrics
    assert not needs_final(cell, 4) and needs_final(cell, 8)
    assert not needs_final(Cell("toy", "critic", 0, cfg, run, {}, "fresh"), 4)


def test_curve_without_snapshots_is_explained(world, tmp_path: Path) -> None:
    from critic_unlearn.evaluation.curve import evaluate_curve

    with pytest.raises(FileNotFoundError, match="no adapter snapshots"):
        evaluate_curve(tmp_path, _cfg())
