"""bench.experiments.demo_seeds: the per-seed target checks and the worst-of-seeds summary the
README's demo row reports, on hand-made demo JSON lines."""

from __future__ import annotations

import json

from bench.experiments import demo_seeds


def row(ua=1.0, ira=0.94, base_ira=0.94, drop=0.0, wall=500.0,
        prompt="an image of a blue circle"):
    return {"ua": ua, "ira": ira, "base_ira": base_ira, "base_ua": 0.1, "unlearn_wall_s": wall,
            "trajectories": 4864, "run_dir": "runs/x", "worst_retain_prompt": prompt,
            "worst_retain_drop_pts": drop,
            "retain_share_below_10": None if drop is None else float(drop > 10)}


def test_each_target_is_checked_at_its_bound():
    assert demo_seeds.checks(row()) == {"ua": True, "ira_of_base": True,
                                        "worst_retain_drop_pts": True, "unlearn_wall_s": True}
    edge = row(ua=0.95, ira=0.95 * 0.94, drop=10.0, wall=600.0)
    assert all(demo_seeds.checks(edge).values())
    bad = demo_seeds.checks(row(ua=0.94, ira=0.85, drop=12.5, wall=601.0))
    assert bad == {"ua": False, "ira_of_base": False, "worst_retain_drop_pts": False,
                   "unlearn_wall_s": False}
    assert demo_seeds.checks(row(drop=None))["worst_retain_drop_pts"] is None  # no judge


def test_the_worst_of_the_seeds_names_its_seed(tmp_path):
    rows = {0: row(), 1: row(ira=0.90, drop=12.5, prompt="an image of a red square"),
            2: row(ua=0.97, wall=610.0)}
    w = demo_seeds.worst_of(rows)
    assert w["ua"] == {"value": 0.97, "seed": 2}
    assert w["ira_of_base"]["seed"] == 1 and abs(w["ira_of_base"]["value"] - 0.90 / 0.94) < 1e-12
    assert w["unlearn_wall_s"] == {"value": 610.0, "seed": 2}
    assert w["worst_retain_drop_pts"] == {"value": 12.5, "seed": 1,
                                          "prompt": "an image of a red square"}
    assert w["all_targets_met"] is False
    assert demo_seeds.worst_of({0: row(), 1: row(wall=550.0)})["all_targets_met"] is True
    for seed, r in rows.items():
        (tmp_path / f"s{seed}.json").write_text(json.dumps(r))
    assert demo_seeds.read_rows(tmp_path) == rows
    text = demo_seeds.table(rows)
    assert "12.5 pts ('an image of a red square') ✗" in text and "Worst of 3" in text
