"""docker-compose.yml's commands, run for real as local processes: Redis, a Ray head, a Ray worker
joined with `ray start --address`, and the submitter's `ray job submit` of a tiny training job,
which must succeed on the two-node cluster.

Mapping from the compose file to this machine (done by tests/integration/_compose_local.py):
  service names      -> 127.0.0.1 (every *_HOST variable; RAY_NODE_IP too)
  ports              -> free ports (every *_PORT variable; each gets its own)
  named volumes      -> folders under tmp_path/volumes (mount paths rewritten)
  TRAIN_CONFIG       -> a tiny config (tiny random SD + tiny CLIP, 3 learner steps, 2 actors
                        at 0.5 CPU each, learner at 0.5 CPU) instead of the toy scenario
  the image          -> this checkout's .venv (first on PATH), the repository root as cwd
  the network        -> a private network namespace with only loopback
  + RAY_TMPDIR (a private Ray temp dir, so no other Ray on this machine is touched)
Everything else, every argument and every environment variable, comes from the file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration._compose_local import LocalCompose, loopback_mapping, netns_available
from tests.unit._clip_fixtures import tiny_clip_folder

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(
        not netns_available(),
        reason="needs a network namespace (root or user namespaces) to keep Ray on loopback",
    ),
]


def tiny_job_config(model_dir: Path, clip_dir: Path) -> dict:
    """tests/integration/test_local_trainer.py's tiny run, on the Ray runtime with two actors."""
    return {
        "scenario": "compose-smoke",
        "model": {"pretrained": str(model_dir)},
        "reward": {
            "clip_model": str(clip_dir),
            "prompts": {
                "forget": ["a red circle", "a red square"],
                "retain": ["a blue circle", "a blue square"],
                "concept": "red",
                "anchor": "a shape",
            },
        },
        "sampler": {"num_steps": 4, "batch_size": 4, "guidance_scale": 3.0},
        "learner": {
            "batch_size": 4,
            "minibatch_size": 2,
            "train_steps": 2,
            "max_steps": 3,
            "checkpoint_every": 2,
        },
        "critic": {"warmup_steps": 1, "hidden": 16, "timestep_dim": 16},
        "replay": {
            "min_size_to_sample": 4,
            "samples_per_insert": 1,
            "capacity": 32,
            "error_buffer": 4,
        },
        "actors": {"num": 2, "cpus_per_actor": 0.5},
        "runtime": {
            "device": "cpu",
            "run_name": "compose",
            "num_threads": 1,
            "learner_cpus": 0.5,
            "progress_every_s": 2,
        },
    }


def test_compose_services_run_as_local_processes(tiny_model_dir, tmp_path):
    t0 = time.monotonic()
    config = tmp_path / "job.yaml"
    clip_dir = tiny_clip_folder(tmp_path / "clip")
    config.write_text(yaml.safe_dump(tiny_job_config(tiny_model_dir, clip_dir)))
    variables = loopback_mapping(COMPOSE.read_text(), TRAIN_CONFIG=str(config))
    assert {"RAY_HEAD_HOST", "REDIS_HOST", "RAY_GCS_PORT", "REDIS_PORT"} <= set(variables)

    # A short temp dir: Ray's unix sockets live under it and must stay below 108 characters.
    ray_tmp = Path(os.environ.get("CU_RAY_TMP_ROOT", "/tmp")) / f"cu-compose-{os.getpid()}"
    ray_tmp.mkdir()
    extra_env = {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_TMPDIR": str(ray_tmp),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    compose = LocalCompose(COMPOSE, variables, tmp_path, ROOT, extra_env)
    submit = compose.services["submit"]["command"][-1]
    assert "ray-head" not in submit and "redis://redis" not in submit  # no service name is left
    assert "--address=http://127.0.0.1:" in submit and "redis://127.0.0.1:" in submit

    compose.open()
    try:
        order = compose.order()
        assert order.index("redis") < order.index("submit")
        assert order.index("ray-head") < order.index("ray-worker") < order.index("submit")
        for name in order:
            compose.wait_dependencies(name)
            if name == "submit":
                _wait_for_nodes(compose, 2)
            compose.start(name)
        rc = compose.procs["submit"].wait(timeout=240)
        out = compose.tail("submit", 400)
    except Exception as e:
        raise AssertionError(f"{e}\n--- Ray's own logs:\n{_ray_log_tails(ray_tmp)}") from e
    finally:
        killed = compose.stop()
        if not os.environ.get("CU_KEEP_RAY_TMP"):  # keep Ray's logs for a post-mortem
            shutil.rmtree(ray_tmp, ignore_errors=True)

    assert rc == 0, f"submit exited {rc}:\n{out}\n--- head:\n{compose.tail('ray-head')}"
    assert "succeeded" in out
    summary = json.loads([line for line in out.splitlines() if line.startswith('{"run_dir"')][-1])
    assert summary["learner_steps"] == 4 and summary["version"] == 3  # + 1 warm-up step
    run_dir = compose.volumes["runs"] / "compose"
    assert Path(summary["run_dir"]) == run_dir  # the driver wrote into the head's `runs` volume
    assert (run_dir / "metrics.jsonl").exists() and (run_dir / "adapter").is_dir()
    token = compose.volumes["ray-auth"] / "token"
    assert token.stat().st_mode & 0o077 == 0 and len(token.read_text()) == 64
    assert compose.stragglers() == [], "processes of this run outlived stop()"
    print(f"compose-as-processes run: {time.monotonic() - t0:.1f} s; SIGKILLed {killed}")


def _count_nodes(stdout: str) -> int:
    """Nodes in `ray list nodes --format json` output; 0 while the head answers with no JSON yet
    (seen once on a loaded box: exit 0 and an empty stdout)."""
    try:
        return len(json.loads(stdout))
    except json.JSONDecodeError:
        return 0


def _wait_for_nodes(compose: LocalCompose, n: int, timeout_s: float = 60) -> None:
    """The worker has joined: the head lists `n` alive nodes (asked through the Jobs API host)."""
    port = compose.services["ray-head"]["command"][-1].split("--dashboard-port=")[1].split()[0]
    argv = [
        "ray",
        "list",
        "nodes",
        "--address",
        f"http://127.0.0.1:{port}",
        "--format",
        "json",
        "--filter",
        "state=ALIVE",
    ]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        compose.check_alive("ray-worker")
        r = compose.run(argv, "submit", timeout=30)
        if r.returncode == 0 and _count_nodes(r.stdout) >= n:
            return
        time.sleep(1)
    raise TimeoutError(
        f"fewer than {n} Ray nodes after {timeout_s} s:\n{r.stderr}\n{compose.tail('ray-worker')}"
    )


def _ray_log_tails(ray_tmp: Path, lines: int = 15) -> str:
    """The end of GCS's and the raylets' logs, for a failure message."""
    logs = sorted(ray_tmp.glob("ray/session_*/logs/*"))
    picked = [p for p in logs if p.name.startswith(("gcs_server", "raylet")) and p.is_file()]
    return "\n".join(
        f"== {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
        for p in picked
    )
