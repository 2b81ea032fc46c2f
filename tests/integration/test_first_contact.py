"""First contact fails fast, and no address means a fresh local cluster.

A wrong model folder, an unreachable Redis (replay.url) or a Ray address where nothing listens
(runtime.ray_address / RAY_ADDRESS) is a one-line error naming the setting, its value and what
to do, within seconds of the check (the CLI's own start, imports mostly, comes on top), before
a run folder, critic pretraining or Ray. With neither runtime.ray_address nor RAY_ADDRESS set,
the runtime starts its own cluster even when Ray's temp folder records a dead one
(`ray_current_cluster`, as a `ray start` head that died without `ray stop` leaves it).

Everything binds 127.0.0.1; Ray's temp folder is a private one (RAY_TMPDIR), never the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from critic_unlearn.config import RunConfig, load_config
from critic_unlearn.diffusion.loading import ModelLoadError
from critic_unlearn.io_utils import run_folder_line
from critic_unlearn.replay import ReplayConnectionError
from critic_unlearn.replay.server import free_port
from critic_unlearn.runtime import RuntimeFailure
from critic_unlearn.runtime.cluster import check_first_contact, check_ray_address

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIG = REPO / "configs/toy_forget_red.yaml"  # the README's command: critic.init=auto, ray
FAST_S = 5.0  # the check itself
CLI_S = 60.0  # the whole CLI on a loaded 2-core box, imports included (a retry loop: minutes)


def _cfg(*overrides: str) -> RunConfig:
    return load_config(CONFIG, ["critic.init=null", *overrides])


def _timed(fn) -> tuple[Exception, float]:
    t0 = time.monotonic()
    with pytest.raises(Exception) as err:
        fn()
    return err.value, time.monotonic() - t0


@pytest.fixture
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """A private Ray temp folder (short: Ray's unix sockets live there); afterwards, any process
    still running from it (ours) is killed by PID."""
    root = Path(tempfile.mkdtemp(prefix="cu-rt-", dir="/tmp"))
    yield root
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(root) in a for a in p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    shutil.rmtree(root, ignore_errors=True)


def _stale_record(root: Path) -> str:
    """Record a dead head as Ray's current cluster, as `ray start` would have (`ray/` under
    RAY_TMPDIR, see ray._common.utils.get_ray_address_file)."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    (root / "ray").mkdir(parents=True, exist_ok=True)
    (root / "ray" / "ray_current_cluster").write_text(dead)
    return dead


# -- the checks, in process -------------------------------------------------------------------
def test_missing_model_folder_fails_at_once(tmp_path, no_ray_address):
    missing = tmp_path / "no-model"
    err, took = _timed(lambda: check_first_contact(_cfg(f"model.pretrained={missing}")))
    assert isinstance(err, ModelLoadError) and took < FAST_S
    msg = str(err)
    assert f"model.pretrained: model folder '{missing}' does not exist; point model." in msg
    assert "\n" not in msg


def test_unreachable_redis_fails_at_once_without_retries(no_ray_address, caplog):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cfg = _cfg(f"replay.url={url}", "replay.retry_deadline_s=600")
    err, took = _timed(lambda: check_first_contact(cfg))
    assert isinstance(err, ReplayConnectionError) and took < FAST_S
    msg = str(err)
    assert f"replay.url = '{url}'" in msg and "fix replay.url" in msg and "\n" not in msg
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


@pytest.mark.parametrize("where", ["runtime.ray_address", "RAY_ADDRESS"])
def test_ray_address_with_nothing_there_fails_at_once(where, monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
        cfg = _cfg()
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        cfg = _cfg(f"runtime.ray_address={address}")
    err, took = _timed(lambda: check_first_contact(cfg))
    assert isinstance(err, RuntimeFailure) and took < FAST_S
    msg = str(err)
    assert f"no Ray cluster answers at {where} = '{address}'" in msg, msg
    assert f"fix {where}" in msg and "unset to start a fresh local cluster" in msg
    assert "\n" not in msg


def test_other_wrong_ray_addresses_are_one_line_each(ray_tmpdir, monkeypatch):
    with pytest.raises(RuntimeFailure, match=r"RAY_ADDRESS = 'http://127.0.0.1:8265' is an HTTP"):
        check_ray_address("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(RuntimeFailure, match=r"'nohostport' is not a Ray address; use HOST:PORT"):
        check_ray_address("runtime.ray_address", "nohostport")
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir))
    dead = _stale_record(ray_tmpdir)
    err, took = _timed(lambda: check_ray_address("RAY_ADDRESS", "auto"))
    assert took < FAST_S and "no Ray cluster answers at RAY_ADDRESS = 'auto -> " in str(err)
    assert dead.split(":")[1] in str(err)
    check_ray_address("RAY_ADDRESS", "local")  # Ray's own word for "start one here"


def test_run_folder_line_is_absolute_and_warns_inside_rays_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_folder_line(Path("runs/x")) == f"run folder: {tmp_path / 'runs/x'}"
    copy = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_1/runs/x"
    line = run_folder_line(copy)
    assert line.startswith(f"run folder: {copy} (inside Ray's temporary copy")
    assert "set runtime.run_dir to an absolute path" in line


# -- the CLI, as a user runs it ---------------------------------------------------------------
def _train(tmp_path: Path, *overrides: str, **env: str) -> tuple[subprocess.CompletedProcess,
                                                                 float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    clean.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", **env)
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "critic-unlearn"), "train", str(CONFIG), f"runtime.run_dir={tmp_path}",
         "runtime.run_name=fc", "replay.retry_deadline_s=600", *overrides],
        capture_output=True, text=True, env=clean, timeout=300,
    )
    return proc, time.monotonic() - t0


@pytest.mark.slow
def test_cli_first_contact_errors(tmp_path):
    """The README's command with each wrong input: exit 2, one line on stderr, in seconds
    (critic.init=auto is left on: the checks come before pretraining)."""
    port = free_port()  # nothing listens there
    cases = {
        "model": ((f"model.pretrained={tmp_path / 'no-model'}",), {},
                  "error: model.pretrained: model folder"),
        "redis": ((f"replay.url=redis://127.0.0.1:{port}/0",), {},
                  f"error: cannot reach Redis at replay.url = 'redis://127.0.0.1:{port}/0'"),
        "ray": ((), {"RAY_ADDRESS": f"127.0.0.1:{port}"},
                f"error: no Ray cluster answers at RAY_ADDRESS = '127.0.0.1:{port}'"),
    }
    took = {}
    for name, (overrides, env, expected) in cases.items():
        proc, took[name] = _train(tmp_path, *overrides, **env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, proc.stderr[-2000:])
        assert lines[0].startswith(expected), (name, lines[0])
        assert not (tmp_path / "fc").exists()  # nothing started, nothing left behind
    print(f"CLI time to error (s): {json.dumps({k: round(v, 1) for k, v in took.items()})}")
    assert max(took.values()) < CLI_S, took


# -- no address: a fresh local cluster ----------------------------------------------------------
_START = """
import json, sys, time
import ray
from critic_unlearn.config import load_config
from critic_unlearn.runtime.cluster import ray_cluster

t0 = time.monotonic()
with ray_cluster(load_config(None, ["runtime.ray_num_cpus=1"])):
    gcs = ray.get_runtime_context().gcs_address
    print(json.dumps({"gcs": gcs, "start_s": time.monotonic() - t0}), flush=True)
"""


@pytest.mark.slow
def test_no_address_starts_a_fresh_cluster_despite_a_stale_record(ray_tmpdir):
    """`ray.init()` without an address would attach to the recorded head and hang (minutes) on
    the dead address; the runtime starts its own cluster in seconds instead."""
    dead = _stale_record(ray_tmpdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(ray_tmpdir), RAY_AUTH_MODE="disabled")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _START], capture_output=True, text=True,
                          env=env, timeout=240, cwd=REPO)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fresh local cluster with a stale record: {out['start_s']:.1f} s to start, "
          f"{took:.1f} s in all")
    assert out["gcs"].rpartition(":")[2] != dead.rpartition(":")[2]  # not the recorded head
    assert out["start_s"] < 120
    assert (ray_tmpdir / "ray" / "ray_current_cluster").read_text() == dead  # left as it was
    assert list((ray_tmpdir / "ray").glob("session_*"))  # its session went to our temp folder
