"""replay.keep_buffers: fresh multi-MB buffers per record reuse warm heap pages, no page faults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

CHILD = """
import json, resource, sys
from critic_unlearn.replay.allocator import keep_large_buffers
applied = keep_large_buffers() if sys.argv[1] == "keep" else None
src = bytes(1_600_000)
def record():  # the encoded record, the copy sent, the copy read back: new buffers each time
    bufs = [bytes(memoryview(src)) for _ in range(3)]
    del bufs
for _ in range(5):  # warm up: the first buffers fault in whatever they touch
    record()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    record()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults_per_record": faults / 100}))
"""


def faults_per_record(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc's")
def test_kept_buffers_stop_the_page_faults_of_fresh_records():
    default = faults_per_record("default")
    kept = faults_per_record("keep")
    assert kept["applied"] is True
    # default glibc: freeing 4.8 MB at the heap's top trims it (its dynamic trim threshold is
    # 2x the largest mmap freed), so the next record faults its ~1,170 pages in again
    assert default["faults_per_record"] > 100, default
    assert kept["faults_per_record"] < 5, kept


def test_keep_buffers_is_a_config_switch():
    from critic_unlearn.config import ReplayConfig

    assert ReplayConfig().keep_buffers is True
    assert ReplayConfig(keep_buffers=False).keep_buffers is False
