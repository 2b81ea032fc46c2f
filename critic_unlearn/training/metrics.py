"""Metrics to the run directory: one JSON object a line (metrics.jsonl) and TensorBoard scalars.

Keys are namespaced (`actor/…`, `learner/…`, `replay/…`, `eval/…`). Each JSONL line is written
whole and flushed, so a crash loses at most the line being written, never corrupts earlier ones.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tensorboardX import SummaryWriter

from critic_unlearn.io_utils import atomic_write_text


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.tb = SummaryWriter(str(run_dir / "tb")) if tensorboard else None
        self.t0 = time.time()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()
        }
        row = {"step": step, "time_s": round(time.time() - self.t0, 3), **clean}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def rewind(self, step: int) -> None:
        """Drop the rows after `step`: a run resumed from an earlier checkpoint does those steps
        again, and each step is logged once."""
        self.file.close()
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        atomic_write_text(self.path, "".join(kept))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """All complete lines of a metrics.jsonl (a torn last line is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def timestep_metrics(row: dict, prefix: str) -> dict[int, float]:
    """{t: value} of one metrics row's keys named `prefix` + tNNNN (the per-timestep
    diagnostics, e.g. critic/ev_t0901); None values are left out."""
    return {int(k[len(prefix):]): v for k, v in row.items()
            if k.startswith(prefix) and v is not None}
