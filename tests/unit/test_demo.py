"""The demo's summary helpers."""

from __future__ import annotations

from critic_unlearn.demo import worst_retain_drop


def test_worst_retain_drop_picks_the_largest_fall_among_retain_prompts() -> None:
    rows = [
        {"prompt": "a red S", "role": "forget", "base_rate": 1.0, "rate": 0.0},
        {"prompt": "a yellow cross", "role": "retain", "base_rate": 0.938, "rate": 0.688},
        {"prompt": "a blue S", "role": "retain", "base_rate": 0.9, "rate": 1.0},
        {"prompt": "a green S", "role": "retain", "base_rate": 1.0, "rate": 0.95},
    ]
    worst = worst_retain_drop(rows)
    assert worst == {"prompt": "a yellow cross", "base": 0.938, "after": 0.688, "drop": 0.25}
    assert worst_retain_drop([{**r, "rate": None} for r in rows]) is None


def test_the_last_json_line_keeps_its_keys_and_adds_the_worst_retain_prompt() -> None:
    from critic_unlearn.demo import demo_summary
    from critic_unlearn.evaluation.run import retain_drift_summary, retain_significance

    rows = [
        {"prompt": "a red S", "role": "forget", "base_rate": 1.0, "rate": 0.0,
         "p_below_base": None},
        {"prompt": "an image of a blue circle", "role": "retain", "base_rate": 0.9375,
         "rate": 0.8125, "p_below_base": 0.125},  # -12.5 points
        {"prompt": "a blue S", "role": "retain", "base_rate": 0.875, "rate": 0.8125,
         "p_below_base": 0.001},  # -6.25 points, but every changed seed was lost
        {"prompt": "a green S", "role": "retain", "base_rate": 1.0, "rate": 1.0,
         "p_below_base": 1.0},
    ]
    ev = {"ua": 1.0, "ira": 0.875, "base_ua": 0.0, "base_ira": 0.9375,
          **retain_drift_summary(rows), **retain_significance(rows)}  # as in eval.json
    line = demo_summary(ev, 512.34, 4800, "runs/x")
    assert list(line)[:7] == ["ua", "ira", "base_ua", "base_ira", "unlearn_wall_s",
                              "trajectories", "run_dir"]
    assert (line["unlearn_wall_s"], line["run_dir"]) == (512.3, "runs/x")
    assert line["worst_retain_prompt"] == "an image of a blue circle"
    assert line["worst_retain_drop_pts"] == 12.5
    assert line["retain_share_below_10"] == 1 / 3
    assert line["worst_retain_p"] == 0.125  # the worst prompt's own p, not the smallest
    assert line["retain_significantly_below"] == ["a blue S"]  # 0.001 <= 0.05 / 3
    assert worst_retain_drop(rows)["drop"] == 0.125  # demo.json's older key: a fraction
    unjudged = demo_summary({**ev, **retain_drift_summary(
        [{**r, "rate": None, "base_rate": None} for r in rows])}, 1.0, 1, "r")
    assert unjudged["worst_retain_prompt"] is None and unjudged["retain_share_below_10"] is None
