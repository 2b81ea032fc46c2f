"""docker-compose.yml as real containers: `make compose-smoke` (deploy/compose_smoke.py) builds
the image from deploy/Dockerfile, brings redis, ray-head and ray-worker up through the compose
client, runs the toy scenario through the `submit` service to its end, checks the run folder and
brings everything down with the volumes. Skipped, with the reason on one line, where no container
engine works (docker with a daemon and compose v2, or podman with podman-compose).

The first run builds the base images and the dependency layer (several minutes); later runs reuse
them from the engine's storage and rebuild only the code layer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "deploy" / "compose_smoke.py"


def _probe() -> tuple[bool, str]:
    r = subprocess.run(
        [sys.executable, str(SMOKE), "--probe"], capture_output=True, text=True, timeout=180
    )
    line = (r.stdout.strip() or r.stderr.strip()).splitlines()[-1:] or ["probe printed nothing"]
    return r.returncode == 0, line[0]


@pytest.mark.slow
@pytest.mark.container
def test_compose_smoke_in_real_containers():
    ok, line = _probe()
    if not ok:
        pytest.skip(line)
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(SMOKE)], capture_output=True, text=True, timeout=1800, cwd=ROOT
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    for phase in ("build", "up", "job", "checks", "down"):
        assert any(ln.startswith(f"{phase} ") and " ok " in ln for ln in out.splitlines()), out
    print(f"{line}\n{r.stdout}compose smoke test: {time.monotonic() - t0:.0f} s")
