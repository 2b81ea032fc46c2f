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
