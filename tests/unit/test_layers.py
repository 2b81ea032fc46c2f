"""Layers point down: the import contracts in pyproject.toml ([tool.importlinter]) hold.

`lint-imports` checks static imports (only runtime imports ray, only replay imports redis, the core
imports no runtime / workers / training / evaluation / toy world, the learner process no
evaluation, the upper half's layer order, no cycles). An import by name (importlib) is invisible
to it, so the core's sources must not even name a higher layer's module, and what a process
really loads is checked in a fresh interpreter.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("diffusion", "learner", "rewards", "adversarial", "actors")
HIGHER = ("runtime", "workers", "training", "evaluation", "toyworld")


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


def _loaded_by(code: str) -> list[str]:
    """The critic_unlearn modules and ray a fresh interpreter holds after running `code`."""
    probe = code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [m for m in proc.stdout.split() if m.startswith(("critic_unlearn.", "ray"))]


def test_the_learner_process_loads_no_judging_generation_or_reports() -> None:
    """The Ray learner worker (and the Ray-free one under it, with the adversarial loop) loads
    nothing of evaluation: no judge, no generation, no report writers."""
    loaded = _loaded_by("import critic_unlearn.runtime.learner_worker")
    assert {"critic_unlearn.workers.learner", "critic_unlearn.adversarial.loop"} <= set(loaded)
    assert not [m for m in loaded if m.startswith("critic_unlearn.evaluation")], loaded


def test_the_entry_point_and_the_local_runtime_load_no_ray() -> None:
    """`runtime.train` picks the runtime; choosing the local one must not import Ray (a run of it
    is tests/integration/test_local_trainer.py's)."""
    loaded = _loaded_by("from critic_unlearn.runtime import train\n"
                        "import critic_unlearn.runtime.local\n"
                        "import critic_unlearn.cli, critic_unlearn.demo")
    assert "critic_unlearn.workers.actor" in loaded and "critic_unlearn.runtime.local" in loaded
    assert "ray" not in loaded and "critic_unlearn.runtime.driver" not in loaded, loaded


BACKBONE_NAMES = re.compile(
    r"UNet2DConditionModel|SD3Transformer2DModel|FluxTransformer2DModel|\.unet\b|\.transformer\b"
)


def test_only_diffusion_names_a_backbone() -> None:
    """The policy contract (diffusion/contract.py) is the one seam to a backbone: outside
    diffusion/ (and the toy world's builder, which trains a UNet) no module names a UNet or
    transformer class or reaches into a pipeline's `.unet` / `.transformer`."""
    allowed = (ROOT / "critic_unlearn" / "diffusion", ROOT / "critic_unlearn" / "toyworld")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "critic_unlearn").rglob("*.py"))
        if not any(path.is_relative_to(a) for a in allowed)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if BACKBONE_NAMES.search(line)
    ]
    assert not offenders, "a backbone named outside diffusion/:\n" + "\n".join(offenders)
