"""The ablation grid's pure aggregation (bench/experiments/_ablation.py) on hand-made results: no
training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import REPO
from bench.experiments._ablation import (
    ARMS,
    METRICS,
    RESULT,
    SETTINGS,
    aligned_band,
    cell_settings,
    cell_state,
    critic_ev_by_timestep,
    load_results,
    make_result,
    markdown_table,
    median_range,
    median_to_target,
    point_at_target,
    ratio,
    run_overrides,
    settings_note,
    summarize,
    summary_json,
    wall_s_at_step,
)
from critic_unlearn.evaluation.drift import retain_drift

NO_DRIFT = {"max_worst_retain_drop_pts": None, "worst_retain_prompt": None,
            "median_worst_retain_drop_pts": None, "median_retain_share_below_10": None}
SETTINGS_A = cell_settings(100, 10, 8, run_overrides("critic", 0, 100, 10, []))


def curve(uas: list[float], per_snapshot: int = 320, base_ua: float = 0.1,
          ira: float = 0.9, base_ira: float = 0.95) -> dict:
    """A judged curve: one point per snapshot, `per_snapshot` trajectories apart."""
    pts = [{"step": 10 * (i + 1), "trajectories": per_snapshot * (i + 1), "ua": u, "ira": ira,
            "forget_attribute_accuracy": 1.0} for i, u in enumerate(uas)]
    return {"base": {"ua": base_ua, "ira": base_ira, "forget_attribute_accuracy": 1.0},
            "points": pts}


def result(arm: str, seed: int, uas: list[float], scenario: str = "toy_forget_red",
           critic_init: dict | None = None, **kw) -> dict:
    return make_result(arm, scenario, seed, SETTINGS_A, train_s=100.0 + seed,
                       trajectories=320 * len(uas), curve=curve(uas, **kw), target=0.9,
                       resumed=False, critic_init=critic_init)


def test_make_result_records_curve_target_and_final_numbers() -> None:
    init = {"path": "c.safetensors", "trajectories": 2048, "wall_s": 60.0, "cached": False}
    r = result("critic", 1, [0.2, 0.95, 0.97], ira=0.85, critic_init=init)
    assert r["trajectories_to_target"] == 640
    assert (r["final_ua"], r["final_ira"], r["base_ira"]) == (0.97, 0.85, 0.95)
    assert r["critic_init"] == init
    assert len(r["curve"]["points"]) == 3
    assert "critic_init" not in result("ddpo", 1, [0.2])
    json.dumps(r)  # result.json must serialize


BASE_RATES = {"a blue circle": 0.9375, "a green S": 1.0, "a yellow S": 0.875}


def drifted(arm: str, seed: int, after: dict[str, float], **kw) -> dict:
    """A result whose last snapshot judged each retain prompt (`after`) as evaluate_curve does:
    retain_per_prompt and its retain drift against BASE_RATES."""
    c = curve([0.95])
    c["base"]["retain_per_prompt"] = BASE_RATES
    c["points"][-1] |= {"retain_per_prompt": after, **retain_drift(after, BASE_RATES).summary()}
    return make_result(arm, "toy_forget_red", seed, SETTINGS_A, train_s=100.0, trajectories=320,
                       curve=c, target=0.9, resumed=False, critic_init=None, **kw)


def test_retain_drift_per_seed_and_over_seeds_beside_the_ira() -> None:
    results = [
        # seed 0: 'a blue circle' 93.75 -> 81.25 (12.5 points) and 'a green S' 100 -> 87.5
        drifted("critic", 0, {"a blue circle": 0.8125, "a green S": 0.875, "a yellow S": 0.875}),
        # seed 1: 'a yellow S' 87.5 -> 81.25 (6.25 points), none > 10
        drifted("critic", 1, {"a blue circle": 0.9375, "a green S": 1.0, "a yellow S": 0.8125}),
        # seed 2: every prompt as good or better: worst drop 0 ('a green S', unchanged)
        drifted("critic", 2, {"a blue circle": 1.0, "a green S": 1.0, "a yellow S": 0.9375}),
    ]
    r = results[0]
    assert (r["worst_retain_prompt"], r["worst_retain_drop_pts"]) == ("a blue circle", 12.5)
    assert (r["worst_retain_base"], r["worst_retain_after"]) == (0.9375, 0.8125)
    assert r["retain_share_below_10"] == pytest.approx(2 / 3)
    assert make_result("critic", "x", 0, SETTINGS_A, 1.0, 1, curve([0.5]), 0.9, False,
                       None)["worst_retain_prompt"] is None  # a curve from before: no drift
    summary = summarize(results, 0.9, ["toy_forget_red"], ["critic", "ddpo"])
    c = summary["toy_forget_red"]["critic"]
    assert c["worst_retain_drop"] == (6.25, 0.0, 12.5)
    assert c["worst_retain"] == {"prompt": "a blue circle", "seed": 0, "drop_pts": 12.5}
    assert c["retain_share_below"] == 0.0  # shares 2/3, 0, 0
    arms = summary_json(summary, 0.9, "o")["scenarios"]["toy_forget_red"]["arms"]
    assert arms["critic"] == {"median_trajectories_to_target": 320, "reached": 3, "seeds": 3,
                              "max_worst_retain_drop_pts": 12.5,
                              "worst_retain_prompt": "a blue circle",
                              "median_worst_retain_drop_pts": 6.25,
                              "median_retain_share_below_10": 0.0}
    assert arms["ddpo"]["max_worst_retain_drop_pts"] is None
    md = markdown_table(summary, 0.9, 3)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 6.2 [0.0, 12.5]; max \"a blue circle\" (s0) | 0.0% |" in rows["critic"]
    assert "| — | — |" in rows["ddpo"]
    head = rows["arm"].split("|")
    assert head.index(" final IRA ") + 1 == head.index(" worst retain drop, pts ")


def final(after: dict[str, float], ua: float, ira: float, n: int = 32) -> dict:
    """evaluate_final's output: the last snapshot at n images per prompt against its base."""
    base = {"ua": 0.1, "ira": 0.96, "retain_per_prompt": BASE_RATES}
    point = {"step": 60, "trajectories": 1920, "ua": ua, "ira": ira, "retain_per_prompt": after,
             **retain_drift(after, BASE_RATES).summary()}
    return {"base": base, "points": [point], "images_per_prompt": n}


def test_final_evaluation_has_its_own_table_and_never_mixes_image_counts() -> None:
    results = [
        drifted("critic", 0, BASE_RATES,
                final_eval=final({"a blue circle": 0.8125, "a green S": 1.0,
                                  "a yellow S": 0.875}, 1.0, 0.90)),
        drifted("critic", 1, BASE_RATES,
                final_eval=final({"a blue circle": 0.9375, "a green S": 0.96875,
                                  "a yellow S": 0.875}, 0.96875, 0.96)),
        # an older, smaller final evaluation is left out, not averaged in
        drifted("critic", 2, BASE_RATES, final_eval=final(BASE_RATES, 0.5, 0.5, n=4)),
        drifted("ddpo", 0, BASE_RATES),
    ]
    r = results[0]["final_eval"]
    assert (r["images_per_prompt"], r["ua"], r["ira"], r["base_ira"]) == (32, 1.0, 0.90, 0.96)
    assert (r["worst_retain_prompt"], r["worst_retain_drop_pts"]) == ("a blue circle", 12.5)
    json.dumps(results[0])
    summary = summarize(results, 0.9, ["toy_forget_red"], ["critic", "ddpo"])
    f = summary["toy_forget_red"]["critic"]["final_eval"]
    assert (f["images_per_prompt"], f["seeds"]) == (32, 2)
    assert f["ua"] == (0.984375, 0.96875, 1.0)
    assert f["ira_pct_of_base"] == pytest.approx((96.875, 93.75, 100.0))
    assert f["worst_retain_drop"] == (7.8125, 3.125, 12.5)
    assert f["worst_retain"] == {"prompt": "a blue circle", "seed": 0, "drop_pts": 12.5}
    assert summary["toy_forget_red"]["ddpo"]["final_eval"] is None
    arms = summary_json(summary, 0.9, "o")["scenarios"]["toy_forget_red"]["arms"]
    assert arms["critic"]["final_eval"] == {
        "images_per_prompt": 32, "seeds": 2, "max_worst_retain_drop_pts": 12.5,
        "worst_retain_prompt": "a blue circle", "median_worst_retain_drop_pts": 7.8125,
        "median_retain_share_below_10": pytest.approx(1 / 6)}
    assert "final_eval" not in arms["ddpo"]
    md = markdown_table(summary, 0.9, 3).split("Final evaluation")[1]
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 32 | 2 | 0.984 [0.969, 1.000] | 96.9% [93.8, 100.0] |" in rows["critic"]
    assert "7.8 [3.1, 12.5]; max \"a blue circle\" (s0)" in rows["critic"]
    assert "ddpo" not in rows


def test_median_range_and_not_reached() -> None:
    assert median_range([640.0, 960.0, 320.0]) == (640.0, 320.0, 960.0)
    assert median_range([]) is None
    med, lo, hi = median_range([640.0, math.inf, math.inf])
    assert math.isinf(med) and lo == 640.0 and math.isinf(hi)


def test_summary_counts_reached_seeds_and_takes_medians() -> None:
    results = [
        result("critic", 0, [0.5, 0.92]),        # reaches at 640
        result("critic", 1, [0.95, 0.96]),       # reaches at 320
        result("critic", 2, [0.3, 0.5, 0.91]),   # reaches at 960
        result("ddpo", 0, [0.2, 0.4, 0.6]),      # never
        result("ddpo", 1, [0.2, 0.4, 0.93]),     # 960
    ]
    s = summarize(results, 0.9, ["toy_forget_red"], ["critic", "ddpo"])["toy_forget_red"]
    c, d = s["critic"], s["ddpo"]
    assert (c["seeds"], c["reached"]) == (3, 3)
    assert c["to_target"] == (640, 320, 960)
    assert median_to_target(c) == 640
    assert c["final_ua"] == pytest.approx(0.92)
    assert c["ira_pct_of_base"] == pytest.approx(100 * 0.9 / 0.95)
    assert c["train_s"] == 101.0
    # two seeds, one never reached: the median is the mean of 960 and +inf, i.e. not reached
    assert (d["seeds"], d["reached"]) == (2, 1)
    assert median_to_target(d) is None
    assert math.isinf(d["to_target"][2]) and d["to_target"][1] == 960


def test_another_target_is_recomputed_from_the_curves() -> None:
    results = [result("critic", 0, [0.5, 0.92]), result("critic", 1, [0.55, 0.6])]
    s = summarize(results, 0.5, ["toy_forget_red"], ["critic"])["toy_forget_red"]["critic"]
    assert s["reached"] == 2 and median_to_target(s) == 320


def test_ratio_needs_both_medians() -> None:
    assert ratio(1280, 640) == 2.0
    assert ratio(1000, 3000) == pytest.approx(0.333)
    assert ratio(None, 640) is None
    assert ratio(1280, None) is None


def test_summary_json_and_missing_cells() -> None:
    results = [result("critic", s, [0.95]) for s in (0, 1)]
    results += [result("ddpo", s, [0.5, 0.5, 0.95]) for s in (0, 1)]
    results += [result("critic", 0, [0.1], scenario="toy_forget_red_circle")]
    summary = summarize(results, 0.9, ["toy_forget_red", "toy_forget_red_circle"],
                        ["critic", "x0_pred", "ddpo"])
    out = summary_json(summary, 0.9, "runs/x")
    red = out["scenarios"]["toy_forget_red"]
    assert red["arms"]["critic"] == {"median_trajectories_to_target": 320, "reached": 2,
                                     "seeds": 2, **NO_DRIFT}
    assert red["arms"]["x0_pred"] == {"median_trajectories_to_target": None, "reached": 0,
                                      "seeds": 0, **NO_DRIFT}
    assert red["median_ratio_ddpo_over_critic"] == 3.0
    circle = out["scenarios"]["toy_forget_red_circle"]
    assert circle["median_ratio_ddpo_over_critic"] is None  # ddpo missing, critic not reached
    assert circle["arms"]["ddpo"]["seeds"] == 0
    assert out["target_ua"] == 0.9 and out["out"] == "runs/x"
    json.dumps(out)


def test_markdown_table_shows_the_numbers() -> None:
    init = {"path": "c", "trajectories": 2048, "wall_s": 61.0, "cached": True}
    results = [result("critic", 0, [0.5, 0.92], critic_init=init),
               result("critic", 1, [0.95]),
               result("ddpo", 0, [0.2, 0.3, 0.4, 0.91]), result("ddpo", 1, [0.2]),
               result("no_timestep", 0, [0.5])]
    arms = ["critic", "x0_pred", "no_timestep", "ddpo"]
    summary = summarize(results, 0.9, ["toy_forget_red"], arms)
    md = markdown_table(summary, 0.9, 3, settings_note(results))
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "480 [320, 640] (2/2 reached)" in rows["critic"]
    assert "| 2/3 |" in rows["critic"]
    assert "2,048 traj, 61 s (cached)" in rows["critic"]
    assert "not reached [1,280, not reached] (1/2 reached)" in rows["ddpo"]
    assert "| not reached (0/1 reached) |" in rows["no_timestep"]
    assert "missing" in rows["x0_pred"] and "| 0/3 |" in rows["x0_pred"]
    assert "94.7% of base" in rows["critic"]
    assert "## toy_forget_red" in md and "steps=100, every=10, images/prompt=8" in md
    assert "DDPO / critic" in md and "—" in md.split("DDPO / critic")[1].splitlines()[0]


def test_settings_note_flags_mixed_settings() -> None:
    other = dict(result("critic", 1, [0.9]), settings=cell_settings(40, 10, 4, []))
    assert settings_note([result("critic", 0, [0.9])]).startswith("Settings:")
    assert settings_note([result("critic", 0, [0.9]), other]).startswith("WARNING")


def test_cell_state_decides_from_result_json(tmp_path: Path) -> None:
    run = tmp_path / "toy_forget_red" / "critic" / "s0"
    assert cell_state(run, SETTINGS_A) == "fresh"
    run.mkdir(parents=True)
    (run / SETTINGS).write_text(json.dumps(SETTINGS_A))
    assert cell_state(run, SETTINGS_A) == "resume"
    assert cell_state(run, cell_settings(40, 10, 4, SETTINGS_A["overrides"])) == "conflict"
    (run / RESULT).write_text(json.dumps(result("critic", 0, [0.95])))
    assert cell_state(run, SETTINGS_A) == "done"
    assert cell_state(run, cell_settings(100, 10, 4, SETTINGS_A["overrides"])) == "conflict"
    more = cell_settings(100, 10, 8, [*SETTINGS_A["overrides"], "learner.lr=2e-3"])
    assert cell_state(run, more) == "conflict"
    (run / RESULT).write_text("{half a fi")  # unreadable: not done, the started run continues
    assert cell_state(run, SETTINGS_A) == "resume"
    assert [r["seed"] for r in load_results(tmp_path)] == []


def test_load_results_finds_the_grid_layout(tmp_path: Path) -> None:
    for arm, seed in (("critic", 0), ("ddpo", 1)):
        d = tmp_path / "toy_forget_red" / arm / f"s{seed}"
        d.mkdir(parents=True)
        (d / RESULT).write_text(json.dumps(result(arm, seed, [0.95])))
    (tmp_path / "table.md").write_text("not a result")
    assert sorted((r["arm"], r["seed"]) for r in load_results(tmp_path)) == [
        ("critic", 0), ("ddpo", 1)]


def test_aligned_band_cuts_to_shortest_and_spans_seeds() -> None:
    a = curve([0.5, 0.9, 1.0], base_ua=0.1)
    b = curve([0.3, 0.7], per_snapshot=300, base_ua=0.2)
    xs, med, lo, hi = aligned_band([a, b])
    assert xs == [0, 310, 620]
    assert med == pytest.approx([0.15, 0.4, 0.8])
    assert lo == pytest.approx([0.1, 0.3, 0.7]) and hi == pytest.approx([0.2, 0.5, 0.9])
    assert aligned_band([]) == ([], [], [], [])


def test_run_overrides_set_both_seeds_and_put_user_overrides_last() -> None:
    ovr = run_overrides("critic_spi4", 2, 40, 10, ["replay.samples_per_insert=2"])
    assert "runtime.seed=2" in ovr and "learner.seed=2" in ovr
    assert "learner.max_steps=40" in ovr and "learner.checkpoint_every=10" in ovr
    assert ovr.index("replay.samples_per_insert=4") < ovr.index("replay.samples_per_insert=2")
    assert "critic.enabled=false" in ARMS["ddpo"]


@pytest.mark.parametrize("scenario", ["toy_forget_red", "toy_forget_red_circle"])
def test_every_arm_is_a_valid_config(scenario: str) -> None:
    from critic_unlearn.config import load_config

    for arm in ARMS:
        cfg = load_config(REPO / "configs" / f"{scenario}.yaml", run_overrides(arm, 1, 40, 10, []))
        assert cfg.learner.seed == 1 and cfg.runtime.seed == 1
        assert cfg.critic.enabled == (not arm.startswith("ddpo"))
        assert (cfg.critic.kind == "oracle") == (arm == "oracle")
    for arm in ("critic_spi4", "ddpo_spi4"):  # the same reuse, with a bound that fits it
        spi = load_config(REPO / "configs" / f"{scenario}.yaml", run_overrides(arm, 0, 40, 10, []))
        assert spi.replay.samples_per_insert == 4 and spi.replay.error_buffer == 64
        assert spi.replay.max_staleness == 6
    assert load_config(REPO / "configs" / f"{scenario}.yaml",
                       ARMS["x0_pred"]).critic.input == "x0_pred"


def _write_metrics(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn": ')


def test_critic_explained_variance_per_timestep_from_the_runs_metrics(tmp_path: Path) -> None:
    # three learner steps: medians 0.5 at t=901 and 0.2 at t=1; NaN (a constant batch) skipped
    rows = [{"step": 1, "critic/ev_t0901": 0.1, "critic/ev_t0001": 0.2, "policy/loss": 1.0},
            {"step": 2, "critic/ev_t0901": 0.5, "critic/ev_t0001": float("nan")},
            {"step": 3, "critic/ev_t0901": 0.9, "critic/ev_t0001": 0.2}]
    _write_metrics(tmp_path / "m.jsonl", rows)
    assert critic_ev_by_timestep(tmp_path / "m.jsonl") == {"1": 0.2, "901": 0.5}
    _write_metrics(tmp_path / "ddpo.jsonl", [{"step": 1, "policy/loss": 1.0}])
    assert critic_ev_by_timestep(tmp_path / "ddpo.jsonl") is None
    assert critic_ev_by_timestep(tmp_path / "missing.jsonl") is None

    # load_results fills it in from the run folder for results written without it
    run = tmp_path / "grid" / "toy_forget_red" / "critic" / "s0"
    _write_metrics(run / METRICS, rows)
    (run / RESULT).write_text(json.dumps(result("critic", 0, [0.5, 0.95])))
    (loaded,) = load_results(tmp_path / "grid")
    assert loaded["critic_ev"] == {"1": 0.2, "901": 0.5}


def test_ev_table_medians_over_seeds_noisiest_first() -> None:
    a = {**result("critic", 0, [0.95]), "critic_ev": {"1": 0.6, "901": 0.0}}
    b = {**result("critic", 1, [0.95]), "critic_ev": {"1": 0.4, "901": 0.2}}
    c = {**result("critic", 2, [0.95])}  # its run folder is gone: counted out of the EV row
    d = result("ddpo", 0, [0.95])
    summary = summarize([a, b, c, d], 0.9, ["toy_forget_red"], ["critic", "ddpo"])
    cell = summary["toy_forget_red"]["critic"]
    assert cell["critic_ev"] == {"1": 0.5, "901": 0.1} and cell["ev_seeds"] == 2
    assert summary["toy_forget_red"]["ddpo"]["critic_ev"] is None
    text = markdown_table(summary, 0.9, 3)
    assert "| arm | seeds | t=901 | t=1 |" in text
    assert "| critic | 2 | 0.10 | 0.50 |" in text
    assert "| ddpo |" not in text.split("explained variance")[1]
    assert "explained variance" not in markdown_table(
        summarize([d], 0.9, ["toy_forget_red"], ["ddpo"]), 0.9, 3)


def test_ira_and_wall_time_where_each_seed_first_reached_the_target(tmp_path: Path) -> None:
    metrics = tmp_path / METRICS
    metrics.write_text("".join(json.dumps({"step": k, "time_s": 7.5 * k}) + "\n"
                               for k in range(1, 31)))
    assert wall_s_at_step(metrics, 20) == 150.0
    assert wall_s_at_step(metrics, 99) is None and wall_s_at_step(metrics, None) is None
    assert wall_s_at_step(tmp_path / "none.jsonl", 20) is None
    c = curve([0.5, 0.95, 0.99], ira=0.9)
    c["points"][1]["ira"] = 0.76  # IRA at the first snapshot at the target, not the final one
    assert point_at_target(c, 0.9)["step"] == 20 and point_at_target(c, 1.0) is None
    r0 = make_result("critic", "toy_forget_red", 0, SETTINGS_A, 100.0, 960, c, 0.9, False, None)
    r0["wall_s_to_target"] = 150.0
    r1 = result("critic", 1, [0.95], ira=0.95, base_ira=0.95)
    r1["wall_s_to_target"] = 50.0
    cell = summarize([r0, r1, result("ddpo", 0, [0.1])], 0.9, ["toy_forget_red"],
                     ["critic", "ddpo"])["toy_forget_red"]
    assert cell["critic"]["ira_pct_at_target"] == pytest.approx((80.0 + 100.0) / 2)
    assert cell["critic"]["wall_s_to_target"] == 100.0
    assert cell["ddpo"]["ira_pct_at_target"] is None and cell["ddpo"]["wall_s_to_target"] is None
    md = markdown_table({"toy_forget_red": cell}, 0.9, 2)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "(2/2 reached) | 100 | 90.0% | 0.970 |" in rows["critic"]
    assert "(0/1 reached) | — | — | 0.100 |" in rows["ddpo"]
