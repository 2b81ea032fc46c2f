"""bench.harness, the microbenchmarks' timing loop: call order, warm-up, what is timed, the JSON
last line."""

from __future__ import annotations

import json
import time

import pytest

from bench.harness import alternate, emit, print_runs, timed_call


def test_warmup_rounds_then_timed_rounds_alternate_in_the_order_given() -> None:
    calls: list[str] = []
    sides = {"base": lambda: calls.append("base"), "ours": lambda: calls.append("ours")}
    timings = alternate(sides, repeats=3, warmup=2)
    assert calls == ["base", "ours"] * 5  # 2 warm-up rounds, then 3 timed ones
    assert {k: len(v) for k, v in timings.times.items()} == {"base": 3, "ours": 3}
    assert set(timings.first) == {"base", "ours"}
    assert timings.peak_bytes == {"base": 0, "ours": 0}  # no CUDA: no allocator peak


def test_no_warmup_leaves_first_empty_and_zero_repeats_only_warms_up() -> None:
    n = {"calls": 0}

    def side() -> None:
        n["calls"] += 1

    cold = alternate({"x": side}, repeats=2, warmup=0)
    assert cold.first == {} and len(cold.times["x"]) == 2 and n["calls"] == 2
    warm = alternate({"x": side}, repeats=0, warmup=1)
    assert warm.times == {"x": []} and set(warm.first) == {"x"} and n["calls"] == 3


def test_a_call_is_timed_around_the_whole_of_it() -> None:
    inside: list[float] = []

    def work() -> None:
        t0 = time.perf_counter()
        sum(i * i for i in range(20_000))
        inside.append(time.perf_counter() - t0)

    call = timed_call(work)
    assert call.seconds >= inside[0] > 0
    timings = alternate({"work": work}, repeats=3, warmup=0)
    assert all(t >= i for t, i in zip(timings.times["work"], inside[1:], strict=True))
    assert min(inside[1:]) <= timings.median("work")


@pytest.mark.parametrize(("sides", "repeats", "warmup", "word"),
                         [({}, 1, 1, "no sides"), ({"x": print}, -1, 1, "repeats=-1"),
                          ({"x": print}, 1, -2, "warmup=-2")])
def test_bad_counts_or_no_sides_are_refused_by_name(sides, repeats, warmup, word) -> None:
    with pytest.raises(ValueError, match=word):
        alternate(sides, repeats, warmup=warmup)


def test_runs_are_printed_and_the_result_is_the_last_line(capsys) -> None:
    timings = alternate({"a": lambda: None, "b": lambda: None}, repeats=2, warmup=0)
    print_runs(timings)
    emit({"ratio": 1.5, "nested": {"k": [1, 2]}})
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0].strip() for line in lines[:2]] == ["a", "b"]
    assert json.loads(lines[-1]) == {"ratio": 1.5, "nested": {"k": [1, 2]}}
