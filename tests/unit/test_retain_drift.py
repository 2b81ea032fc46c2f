"""The worst retain prompt and the share below base (evaluation/drift.py): hand-computed."""

from __future__ import annotations

import pytest

from critic_unlearn.evaluation.drift import (
    drift_of_rows,
    empty_summary,
    noise_floor,
    paired_drop_p,
    retain_drift,
    share_key,
    significantly_below,
)

BASE = {"a blue circle": 0.9375, "a green square": 1.0, "a yellow cross": 0.75,
        "a blue square": 0.5}


def test_worst_prompt_its_drop_in_points_and_the_share_below_ten() -> None:
    after = {"a blue circle": 0.8125,   # 93.75 -> 81.25: 12.5 points
             "a green square": 0.875,   # 100 -> 87.5: 12.5 points (tie, after the first)
             "a yellow cross": 0.6875,  # 75 -> 68.75: 6.25 points
             "a blue square": 0.5625}   # improved: -6.25 points
    d = retain_drift(after, BASE)
    assert (d.worst_prompt, d.base, d.after, d.drop_pts) == ("a blue circle", 0.9375, 0.8125, 12.5)
    assert (d.below, d.prompts) == (2, 4) and d.share_below == 0.5
    assert d.summary() == {"worst_retain_prompt": "a blue circle", "worst_retain_base": 0.9375,
                           "worst_retain_after": 0.8125, "worst_retain_drop_pts": 12.5,
                           "retain_share_below_10": 0.5}
    assert set(d.summary()) == set(empty_summary())


def test_a_tie_goes_to_the_first_prompt_in_the_after_order() -> None:
    after = {"a green square": 0.875, "a blue circle": 0.8125, "a yellow cross": 0.75,
             "a blue square": 0.5}
    assert retain_drift(after, BASE).worst_prompt == "a green square"
    assert retain_drift(dict(reversed(after.items())), BASE).worst_prompt == "a blue circle"


def test_when_every_prompt_improved_the_worst_is_the_smallest_gain() -> None:
    after = {"a blue circle": 1.0, "a green square": 1.0, "a yellow cross": 1.0,
             "a blue square": 0.625}
    d = retain_drift(after, BASE)
    # gains: 6.25, 0 (no change: drop 0), 25, 12.5 -> the unchanged prompt is the worst
    assert (d.worst_prompt, d.drop_pts, d.below) == ("a green square", 0.0, 0)
    d = retain_drift({"a blue square": 0.75}, {"a blue square": 0.5})
    assert (d.drop_pts, d.share_below) == (-25.0, 0.0)


def test_exactly_ten_points_is_not_more_than_ten() -> None:
    # 0.8 - 0.7 is 0.10000000000000009 in floats: rounded, it is exactly 10 points
    d = retain_drift({"p": 0.7, "q": 0.0}, {"p": 0.8, "q": 0.1})
    assert d.drop_pts == 10.0 and d.below == 0
    d = retain_drift({"p": 0.7, "q": 0.0}, {"p": 0.8, "q": 0.1}, threshold_pts=9.99)
    assert d.below == 2 and d.share_below == 1.0
    assert share_key(5) == "retain_share_below_5" and share_key(7.5) == "retain_share_below_7.5"
    assert set(retain_drift({"p": 0.5}, {"p": 1.0}, threshold_pts=5).summary()) >= {
        "retain_share_below_5"}


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no retain prompts"):
        retain_drift({}, {})
    with pytest.raises(ValueError, match="different prompts.*'q'"):
        retain_drift({"p": 0.5, "q": 0.5}, {"p": 0.5})
    with pytest.raises(ValueError, match="base accuracy of retain prompt 'p' is 93.75"):
        retain_drift({"p": 0.5}, {"p": 93.75})  # percent given for a fraction
    with pytest.raises(ValueError, match="after-unlearning accuracy .* None"):
        retain_drift({"p": None}, {"p": 0.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="threshold_pts"):
        retain_drift({"p": 0.5}, {"p": 0.5}, threshold_pts=-1)


def test_eval_json_rows_skip_forget_prompts_and_unjudged_runs() -> None:
    rows = [
        {"prompt": "a red S", "role": "forget", "base_rate": 1.0, "rate": 0.0},  # drop 100
        {"prompt": "a yellow cross", "role": "retain", "base_rate": 0.9375, "rate": 0.6875},
        {"prompt": "a blue S", "role": "retain", "base_rate": 0.875, "rate": 1.0},
    ]
    d = drift_of_rows(rows)
    assert (d.worst_prompt, d.drop_pts, d.below, d.prompts) == ("a yellow cross", 25.0, 1, 2)
    assert drift_of_rows([{**r, "rate": None, "base_rate": None} for r in rows]) is None
    assert drift_of_rows(rows[:1]) is None  # no retain prompt


def _curve(with_per_prompt: bool = True) -> dict:
    """Two snapshots of a two-retain-prompt run: 'a blue circle' ends 12.5 points below base."""
    per = [{"a blue circle": 0.875, "a green S": 0.8125},
           {"a blue circle": 0.75, "a green S": 1.0}]
    base = {"ua": 0.0, "ira": 0.90625, "retain_per_prompt": {"a blue circle": 0.875,
                                                             "a green S": 0.9375}}
    pts = []
    for i, rates in enumerate(per):
        p = {"step": 10 * (i + 1), "trajectories": 320 * (i + 1), "ua": 0.5 * (i + 1),
             "ira": sum(rates.values()) / 2}
        if with_per_prompt:
            p |= {"retain_per_prompt": rates,
                  **retain_drift(rates, base["retain_per_prompt"]).summary()}
        pts.append(p)
    if not with_per_prompt:
        del base["retain_per_prompt"]
    return {"base": base, "points": pts}


def test_the_ua_curve_draws_the_retain_prompt_worst_at_the_end(tmp_path) -> None:
    from critic_unlearn.training.plots import plot_curve, worst_retain_series

    curve = _curve()
    # first snapshot: 'a green S' is worst (12.5 points below base); at the end 'a blue circle'
    # is (12.5 points below, 'a green S' 6.25 above), and the plot follows it over every snapshot
    assert curve["points"][0]["worst_retain_prompt"] == "a green S"
    assert curve["points"][-1]["worst_retain_prompt"] == "a blue circle"
    assert curve["points"][-1]["worst_retain_drop_pts"] == 12.5
    assert worst_retain_series(curve) == ("a blue circle", [0.875, 0.75], 0.875)
    assert plot_curve(tmp_path, curve).is_file()
    old = _curve(with_per_prompt=False)  # a curve.json from before per-prompt accuracy
    assert worst_retain_series(old) is None
    assert plot_curve(tmp_path / "old", old).is_file()


def test_the_eval_report_shows_the_worst_retain_prompt_beside_the_mean_ira() -> None:
    from critic_unlearn.evaluation.report import markdown

    rows = [{"prompt": "a red S", "role": "forget", "id": "forget-1", "base_rate": 1.0,
             "rate": 0.0},
            {"prompt": "a blue circle", "role": "retain", "id": "retain-1", "base_rate": 0.9375,
             "rate": 0.8125},
            {"prompt": "a green S", "role": "retain", "id": "retain-2", "base_rate": 1.0,
             "rate": 1.0}]
    rows = [r | {"base_clip_score": None, "clip_score": None, "grid": None} for r in rows]
    result = {"ua": 1.0, "ira": 0.90625, "base_ua": 0.0, "base_ira": 0.96875,
              "clip_score": None, "base_clip_score": None, "per_prompt": rows,
              **drift_of_rows(rows).summary(),
              "settings": {"concept": "red", "images_per_prompt": 16, "seeds_offset": 0,
                           "templates": ["a {}"]}}
    md = markdown(result)
    ira = md.index("| IRA: retain images judged right")
    assert md.index('| worst retain prompt, judged right: "a blue circle" | 93.8% | 81.2% '
                    "(-12.5 points) |") > ira
    assert "| retain prompts more than 10 points below base | - | 50.0% (1 of 2) |" in md
    unjudged = result | empty_summary()
    assert "worst retain prompt" not in markdown(unjudged)


def test_noise_floor_compares_disjoint_groups_of_the_same_models_images() -> None:
    T, F = True, False
    hits = {"a blue circle": [T, T, T, F, T, T, T, T, F, F],  # groups of 4: 3/4, 4/4 (+2 left)
            "a green square": [T, T, T, T, T, F, F, T, T]}    # 4/4, 2/4 (+1 left)
    a_vs_b, b_vs_a = noise_floor(hits, 4)  # base = group 0 then group 1, and the other way
    assert (a_vs_b.worst_prompt, a_vs_b.drop_pts, a_vs_b.below) == ("a green square", 50.0, 1)
    assert (b_vs_a.worst_prompt, b_vs_a.drop_pts, b_vs_a.below) == ("a blue circle", 25.0, 1)
    assert len(noise_floor(hits, 3)) == 6  # three groups of 3: every ordered pair
    assert noise_floor({"p": [T] * 8}, 2)[0].drop_pts == 0.0  # a sure prompt never drifts
    with pytest.raises(ValueError, match="'a green square' has 9 judged images; two groups of "
                                         "n = 5 need at least 10"):
        noise_floor(hits, 5)
    with pytest.raises(ValueError, match="n = 0"):
        noise_floor(hits, 0)


def test_paired_sign_test_counts_only_the_seeds_whose_verdict_changed() -> None:
    T, F = True, False
    # 16 seeds, 3 lost (right -> wrong), 0 gained: p = 1/8, a 18.75-point drop a re-draw explains
    base, after = [T] * 16, [F, F, F] + [T] * 13
    assert paired_drop_p(base, after) == 1 / 8
    # 4 lost, 1 gained: p = P(Bin(5, 1/2) >= 4) = (5 + 1) / 32
    assert paired_drop_p([T, T, T, T, F, T], [F, F, F, F, T, T]) == 6 / 32
    assert paired_drop_p([T, F], [T, F]) == 1.0  # nothing changed
    assert paired_drop_p([F, F], [T, T]) == 1.0  # only gains
    assert paired_drop_p([T] * 12, [F] * 12) == 1 / 4096
    with pytest.raises(ValueError, match="same seeds"):
        paired_drop_p([T], [T, F])


def test_holm_keeps_the_family_wise_level_over_every_retain_prompt() -> None:
    p = {"a": 0.001, "b": 0.02, "c": 0.012, "d": 0.5}
    # sorted: 0.001 <= 0.05/4, 0.012 <= 0.05/3, 0.02 <= 0.05/2, then 0.5 > 0.05/1 stops
    assert significantly_below(p) == ["a", "c", "b"]
    # 0.018 > 0.05/3 stops at the second: "b" (0.02) is not tried though it would pass alone
    assert significantly_below({"a": 0.001, "b": 0.02, "c": 0.018, "d": 0.5}) == ["a"]
    assert significantly_below({"x": 0.3}) == [] and significantly_below({}) == []
