"""The commands a user runs first: --help and `sample`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from critic_unlearn.codec import decode_trajectory
from critic_unlearn.config import load_config


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critic_unlearn.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_help_lists_the_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("sample", "config", "demo"):
        assert command in proc.stdout


@pytest.mark.slow  # a fresh interpreter: ~6 s of importing torch and diffusers
def test_sample_writes_grid_trajectories_and_config(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = cli(
        "sample",
        str(tiny_model_dir),
        "--prompt",
        "a red circle",
        "--prompt",
        "a cat",
        "--num",
        "3",
        "--out",
        str(out),
        "sampler.num_steps=4",
        "sampler.keep_steps=2",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trajectories"] == 6
    assert Image.open(out / "grid.png").size[0] > 0
    files = sorted((out / "trajectories").glob("*.safetensors"))
    assert len(files) == 6
    traj = decode_trajectory(files[4].read_bytes())
    assert traj.prompt == "a cat" and traj.num_kept == 2 and traj.sampler.num_steps == 4
    assert load_config(out / "config.yaml").sampler.keep_steps == 2


@pytest.mark.slow  # a fresh interpreter: ~6 s of importing torch and diffusers
def test_sample_with_a_missing_model_fails_cleanly(tmp_path):
    proc = cli("sample", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr
