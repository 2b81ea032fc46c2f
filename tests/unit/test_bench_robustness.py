"""The robustness grid's bookkeeping (bench/experiments/robustness.py) on hand-made results: no
training."""

from __future__ import annotations

from bench.experiments.robustness import loop_attack, summarize, summary_json
from critic_unlearn.training.metrics import MetricsLogger


def test_loop_attack_reads_the_in_loop_attacks_of_a_run(tmp_path) -> None:
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(1, {"policy/loss": 0.1})
    log.log(10, {"adversarial/concept_prob": 0.2, "adversarial/attack_s_total": 9.5})
    log.log(20, {"adversarial/concept_prob": 0.4, "adversarial/attack_s_total": 19.25})
    log.close()
    assert loop_attack(tmp_path / "metrics.jsonl") == {"loop_attack_s": 19.2,
                                                       "loop_concept_prob": [0.2, 0.4]}
    plain = tmp_path / "plain"
    plain.mkdir()
    MetricsLogger(plain, tensorboard=False).close()
    assert loop_attack(plain / "metrics.jsonl") == {}  # no attack in the loop: nothing to add


def test_each_adversarial_arm_gets_its_wall_ratio_over_plain() -> None:
    rows = [{"scenario": "s", "arm": a, "seed": i, "train_s": t}
            for a, ts in (("plain", [100, 120, 110]), ("adversarial", [150, 180, 170]),
                          ("adversarial_warm", [120, 130, 125]))
            for i, t in enumerate(ts)]
    out = summary_json(summarize(rows))["s"]
    assert out["wall_ratio_adversarial_over_plain"] == 1.545  # 170 / 110
    assert out["wall_ratio_adversarial_warm_over_plain"] == 1.136  # 125 / 110
    assert out["plain"]["loop_attack_s"] is None


def test_the_worst_retain_prompt_is_reported_beside_the_mean_ira() -> None:
    from bench.experiments.robustness import markdown_table

    rows = [{"scenario": "s", "arm": "plain", "seed": i, "ira": ira, "base_ira": 0.95,
             "train_s": 100.0, "worst_retain_prompt": p, "worst_retain_drop_pts": d,
             "retain_share_below_10": sh}
            for i, (ira, p, d, sh) in enumerate([(0.94, "a blue circle", 6.25, 0.0),
                                                 (0.90, "a green S", 18.75, 0.25),
                                                 (0.93, "a blue circle", 12.5, 0.125)])]
    rows.append({"scenario": "s", "arm": "adversarial", "seed": 0, "ira": 0.9, "train_s": 150.0,
                 "worst_retain_prompt": None, "worst_retain_drop_pts": None,
                 "retain_share_below_10": None})  # judged without a judge: no drift
    summary = summarize(rows)
    plain = summary_json(summary)["s"]["plain"]
    assert plain["worst_retain_drop_pts"] == 12.5  # median over seeds
    assert plain["retain_share_below_10"] == 0.125
    assert (plain["max_worst_retain_drop_pts"], plain["worst_retain_prompt"]) == (18.75,
                                                                                  "a green S")
    adv = summary_json(summary)["s"]["adversarial"]
    assert adv["max_worst_retain_drop_pts"] is None and adv["worst_retain_drop_pts"] is None
    table = markdown_table(summary).splitlines()
    head = table[0].split("|")
    assert head.index(" IRA (base) ") + 1 == head.index(" worst retain drop, pts ")
    line = next(t for t in table if "| plain |" in t)
    assert '| 12.5 [6.2, 18.8]; max "a green S" (s1) | 12.5% [0, 25] |' in line
    assert '| - | - |' in next(t for t in table if "| adversarial |" in t)
