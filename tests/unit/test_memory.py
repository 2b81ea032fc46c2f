"""PeakRss sees memory held by child processes, not only by this one."""

from __future__ import annotations

import subprocess
import sys
import time

from critic_unlearn.training.memory import PeakRss, tree_rss_bytes


def test_peak_includes_a_child_process_memory() -> None:
    import psutil

    alone = tree_rss_bytes(psutil.Process())
    hold = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; " \
           "time.sleep(3)"
    with PeakRss(interval_s=0.05) as m:
        child = subprocess.Popen([sys.executable, "-c", hold])
        time.sleep(2.0)
        child.wait(timeout=30)
    assert m.peak_bytes >= alone + 300 * 2**20  # the child's 300 MiB were counted
