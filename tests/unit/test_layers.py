"""Layers point down: the import contracts in pyproject.toml ([tool.importlinter]) hold.

`lint-imports` checks static imports (only runtime imports ray, only replay imports redis, the core
imports no runtime / training / evaluation / toy world, no cycles). An import by name (importlib)
is invisible to it, so the core's sources must not even name a higher layer's module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("diffusion", "learner", "rewards", "actors")
HIGHER = ("runtime", "training", "evaluation", "toyworld")


def _lint_imports() -> str:
    beside = Path(sys.executable).parent / "lint-imports"  # the venv running the tests
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is missing: install the dev extra (pip install -e '.[dev]')"
    return found


def test_import_contracts_are_kept() -> None:
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports failed:\n{report[-6000:]}"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    n = len(config["contracts"])
    assert n >= 5 and f"Contracts: {n} kept, 0 broken" in report, report[-3000:]


def test_core_does_not_name_higher_layers_even_by_string() -> None:
    named = re.compile(rf"critic_unlearn[./]({'|'.join(HIGHER)})\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for pkg in CORE
        for path in sorted((ROOT / "critic_unlearn" / pkg).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if named.search(line)
    ]
    assert not offenders, "the core names a higher layer:\n" + "\n".join(offenders)
