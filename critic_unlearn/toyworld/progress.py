"""Progress for the build: a rich bar on a terminal, a log line every tenth of a stage otherwise.

The full build runs for tens of minutes, often under nohup into a log file, where an animated bar
would print nothing useful; both cases get the step, the loss and the elapsed time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class StageProgress:
    """Counts steps of one stage; `update(loss=...)` after each step."""

    def __init__(self, name: str, total: int, progress: Progress | None) -> None:
        self.name, self.total, self.done = name, total, 0
        self.t0 = time.perf_counter()
        self._progress = progress
        self._task = progress.add_task(name, total=total, info="") if progress else None
        self._next_log = max(1, total // 10)

    def update(self, **info: float) -> None:
        self.done += 1
        text = " ".join(f"{k} {v:.4g}" for k, v in info.items())
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, info=text)
        elif self.done >= self._next_log or self.done == self.total:
            self._next_log += max(1, self.total // 10)
            console.print(
                f"{self.name}: {self.done}/{self.total} {text} ({self.elapsed:.0f} s)",
                highlight=False,
            )

    def note(self, text: str) -> None:
        """A line in the log that stays (periodic evaluations, for instance)."""
        console.print(f"{self.name}: {text}", highlight=False)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


@contextmanager
def stage(name: str, total: int) -> Iterator[StageProgress]:
    """A progress bar (or log lines) for `total` steps of the stage `name`."""
    if console.is_terminal:
        columns = (
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            yield StageProgress(name, total, progress)
    else:
        console.print(f"{name}: {total} steps", highlight=False)
        yield StageProgress(name, total, None)
