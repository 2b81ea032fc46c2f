"""The fenced code blocks of a Markdown file, their markers, and running a shell block verbatim.

A marker is an HTML comment on the line right before a fence (readers of the rendered Markdown
do not see it):

    <!-- runnable: test_docs_runnable::test_NAME -->      the test that runs this block
    <!-- not-runnable: needs a GPU -->                    why no test runs it here

A block is identified by the hash of its text (`Block.digest`), so a test can tell when a block
changed since someone last checked it.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

SHELL_LANGS = frozenset({"bash", "sh", "shell", "console", "zsh"})
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*(?P<kind>runnable|not-runnable)\s*:\s*(?P<value>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str  # the info string's first word ("" when none)
    text: str  # the block's content, exactly, with a final newline
    marker: str | None  # "runnable" / "not-runnable" / None
    marker_value: str  # the test ("test_docs_runnable::test_x") or the reason

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGS

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def extract_blocks(root: Path, rel: str) -> list[Block]:
    """Every fenced block of `root / rel`, in order (CommonMark fences: ``` or ~~~, at most three
    spaces of indentation; a block closes at a fence of the same character at least as long)."""
    lines = (root / rel).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            body.append(lines[i])
            i += 1
        else:
            raise ValueError(f"{rel}:{start + 1}: a code fence that is never closed")
        marker, value = None, ""
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and (mm := MARKER.match(lines[before].strip())):
            marker, value = mm["kind"], mm["value"]
        blocks.append(
            Block(
                rel,
                start + 1,
                info.split()[0] if info else "",
                "".join(f"{ln}\n" for ln in body),
                marker,
                value,
            )
        )
        i += 1
    return blocks


def substitute(text: str, table: Mapping[str, str]) -> str:
    """Replace each placeholder of `table` that the text uses, as a whole word (TOKEN does not
    touch RAY_AUTH_TOKEN). Nothing else of the text changes."""
    out = text
    for placeholder, value in table.items():
        pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(placeholder)}(?![A-Za-z0-9_])")
        out = pattern.sub(lambda _m, v=value: v, out)
    return out


def unknown_placeholders(text: str, table: Mapping[str, str]) -> list[str]:
    """Placeholders of `table` still in `text` (a substitution that was forgotten)."""
    return [
        p for p in table if re.search(rf"(?<![A-Za-z0-9_]){re.escape(p)}(?![A-Za-z0-9_])", text)
    ]


@dataclass
class ShellRun:
    """A block running under `bash -e` in its own process group, its output merged in a file."""

    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> Iterator[str]:
        yield from self.output().splitlines()

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the block's process group (the shell and what it started), by its PID."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def start_shell(script: str, *, cwd: Path, env: Mapping[str, str], log_dir: Path) -> ShellRun:
    """Run `script` as written, with `bash -e` (the first failing command fails the block)."""
    fd, path = tempfile.mkstemp(prefix="block-", suffix=".sh", dir=log_dir)
    with os.fdopen(fd, "w") as f:
        f.write(script)
    log = Path(path).with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "-e", path],
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ShellRun(proc, log)


def run_shell(
    script: str, *, cwd: Path, env: Mapping[str, str], log_dir: Path, timeout_s: float
) -> tuple[int, str]:
    run = start_shell(script, cwd=cwd, env=env, log_dir=log_dir)
    try:
        rc = run.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return 124, run.output() + f"\n[timed out after {timeout_s} s]"
    return rc, run.output()
