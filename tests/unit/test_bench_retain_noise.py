"""The retain-noise bench's arithmetic (bench/experiments/retain_noise.py) on hand-made hits."""

from __future__ import annotations

import pytest

from bench.experiments.retain_noise import floor_row, parse_args, table

T, F = True, False


def test_floor_row_summarises_every_pair_of_groups() -> None:
    # groups of 2: circle 2/2, 1/2, 2/2; square 2/2, 2/2, 0/2
    hits = {"a blue circle": [T, T, T, F, T, T], "a blue square": [T, T, T, T, F, F]}
    r = floor_row(hits, 2)
    assert (r["pairs"], r["retain_prompts"]) == (6, 2)
    assert r["base_ira"] == pytest.approx(9 / 12)
    # worst drops over the 6 ordered (base, after) pairs: (0,1) 50, (0,2) 100, (1,0) 0,
    # (1,2) 100, (2,0) 0, (2,1) 50
    assert (r["worst_drop_min"], r["worst_drop_median"], r["worst_drop_max"]) == (0, 50, 100)
    assert r["p_worst_above_10"] == pytest.approx(4 / 6)
    assert r["share_below_10_median"] == 0.5
    md = table([{"scenario": "toy", **r}])
    assert "| toy | 2 | 6 | 0.750 | 50.0 [0.0, 100.0] | 0.67 | 50.0% |" in md


def test_too_few_seeds_for_two_groups_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--images", "32", "--per-prompt", "48"])
    assert "--per-prompt 48 is less than twice the largest --images (32)" in capsys.readouterr().err
