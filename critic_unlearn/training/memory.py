"""Peak memory of a run's whole process tree, sampled in a background thread (psutil).

The demo's memory target covers the driver, the Ray processes it started (GCS, raylet, the actor
and learner workers: all descendants of the driver when Ray is started here) and the private
Redis server. Summing RSS counts shared pages (torch's libraries) once per process, so the figure
is an upper bound on what the machine really used.
"""

from __future__ import annotations

import threading

import psutil


def tree_rss_bytes(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # a process that ended between the listing and the read
    return total


class PeakRss:
    """`with PeakRss() as m: ...` then `m.peak_bytes`, `m.peak_gb`: the largest sampled total."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._root = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self._root))
            if self._stop.wait(self.interval_s):
                return

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 2**30

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self._root))
