"""The same `critic-unlearn train` command against a cluster started by `ray start --head` in a
separate process: submitted with `ray job submit` (the job succeeds, its logs show progress), and
run as a driver that is SIGKILLed after a checkpoint and then rerun (it resumes from it).

Token authentication is on, set the same way on every side: RAY_AUTH_MODE=token and the token
in RAY_AUTH_TOKEN for `ray start`, `ray job submit` and the drivers (nothing is written to
~/.ray). Every port is a free one on 127.0.0.1; the head is stopped by the PID this test holds.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from critic_unlearn.config import dump_config
from critic_unlearn.learner.checkpoint import load_checkpoint
from critic_unlearn.replay import RedisServer
from critic_unlearn.replay.server import free_port
from critic_unlearn.training.loop import CHECKPOINT
from critic_unlearn.training.metrics import read_metrics
from tests._tiny_run import tiny_run_config
from tests.integration.test_runtime_local import runtime_overrides

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Head:
    """A `ray start --head --block` process and how to reach it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.temp_dir = tempfile.mkdtemp(prefix="cu-ray-", dir="/tmp")  # short: unix sockets
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        args = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(self.gcs_port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--include-dashboard",
            "true",
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--node-manager-port",
            str(free_port()),
            "--object-manager-port",
            str(free_port()),
            "--num-cpus",
            "2",
            "--temp-dir",
            self.temp_dir,
            "--disable-usage-stats",
        ]
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def wait_ready(self, timeout_s: float = 120) -> None:
        req = urllib.request.Request(
            f"{self.dashboard}/api/version",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.tail()}")
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the Ray head did not answer in {timeout_s} s: {self.tail()}")

    def job_log(self, job_id: str) -> str:
        """The job's log as the Jobs API stores it: the entrypoint's stdout and stderr."""
        req = urllib.request.Request(
            f"{self.dashboard}/api/jobs/{job_id}/logs",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["logs"]

    def tail(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "ray-start.log").read_text()[-3000:]

    def stop(self) -> None:
        """SIGTERM the `ray start` PID (it stops its own processes); then SIGKILL, by PID,
        whatever it started that is still alive."""
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _, alive = psutil.wait_procs(family, timeout=15)
        for p in alive:
            p.kill()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PATH=f"{BIN}:{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def head(cluster_env) -> Iterator[Head]:
    h = Head(cluster_env)
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def write_config(path: Path, model_dir: Path, clip_dir: Path, run_dir: Path, *extra: str) -> Path:
    cfg = tiny_run_config(model_dir, clip_dir, run_dir, *extra)
    path.write_text(dump_config(cfg))
    return path


@pytest.mark.slow
def test_ray_job_submit_runs_train_and_logs_progress(
    head, cluster_env, tiny_model_dir, clip_dir, redis, tmp_path
):
    cfg = write_config(
        tmp_path / "job.yaml",
        tiny_model_dir,
        clip_dir,
        tmp_path,
        *runtime_overrides(
            redis.url,
            "runtime.run_name=job",
            "learner.max_steps=4",
        ),
    )
    job_id = f"cu-test-{secrets.token_hex(4)}"
    submit = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            head.dashboard,
            "--submission-id",
            job_id,
            "--runtime-env",
            "deploy/runtime_env.yaml",
            "--",
            "critic-unlearn",
            "train",
            str(cfg),
        ],
        cwd=REPO,
        env=cluster_env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out[-4000:] + head.tail()
    assert "succeeded" in out, out[-3000:]
    logs = subprocess.run(
        [str(BIN / "ray"), "job", "logs", "--address", head.dashboard, job_id],
        env=cluster_env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "progress: step" in logs and "staleness" in logs, logs[-3000:]
    # the job's own log (without `ray job logs`' client lines): after the two lines Ray's job
    # manager writes first ("Runtime env is setting up.", "Running entrypoint for job ..."),
    # the driver's output starts and ends with where the run is, as an absolute path
    log = head.job_log(job_id).strip().splitlines()
    start = next(i for i, ln in enumerate(log) if ln.startswith("Running entrypoint for job"))
    assert start <= 1, log[:4]
    lines = log[start + 1 :]
    assert lines[0] == f"run folder: {tmp_path / 'job'}", log[:4]
    summary = json.loads(lines[-1])
    assert summary["run_dir"] == str(tmp_path / "job")
    assert summary["learner_steps"] == 5 and summary["version"] == 4  # + 1 warm-up step
    run_dir = Path(summary["run_dir"])
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert (run_dir / "adapter/adapter.safetensors").exists()


@pytest.mark.slow
def test_sigkilled_driver_rerun_resumes_from_last_checkpoint(
    head, cluster_env, tiny_model_dir, clip_dir, redis, tmp_path
):
    cfg = write_config(
        tmp_path / "resume.yaml",
        tiny_model_dir,
        clip_dir,
        tmp_path,
        *runtime_overrides(
            redis.url,
            "runtime.run_name=resume",
            "learner.max_steps=60",
        ),
    )
    env = {**cluster_env, "RAY_ADDRESS": head.gcs}
    cmd = [str(BIN / "critic-unlearn"), "train", str(cfg)]
    run_dir = tmp_path / "resume"
    ckpt = run_dir / CHECKPOINT
    first_log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=first_log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt)["learner"]["steps"] >= 4:
            break
        time.sleep(0.2)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    first_log.close()
    state = load_checkpoint(ckpt)
    saved_steps, saved_traj = state["learner"]["steps"], state["trajectories"]
    saved_version = state["learner"]["version"]
    assert saved_steps < 60

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert (
        f"resumed from {ckpt} at learner step {saved_steps}, version {saved_version}, "
        f"{saved_traj} trajectories" in second.stderr.replace("\n", " ")
    ), second.stderr[-3000:]
    out = second.stdout.strip().splitlines()
    assert out[0] == f"run folder: {run_dir}"  # first and last lines: the run folder
    summary = json.loads(out[-1])
    assert summary["run_dir"] == str(run_dir)
    assert summary["learner_steps"] == 61 and summary["updates"] == 60  # the budget continued
    # versions the killed driver's learner published after the checkpoint are not reused
    assert summary["version"] >= 60
    rows = read_metrics(run_dir / "metrics.jsonl")
    resumed = [r for r in rows if r["step"] > saved_steps]
    # the rerun logged every step after the checkpoint once more; counting resumed from the
    # checkpoint's number, not from zero and not from what the killed driver had reached
    assert [r["step"] for r in resumed][-(61 - saved_steps) :] == list(range(saved_steps + 1, 62))
    rerun_rows = resumed[-(61 - saved_steps) :]
    # before its first step the rerun can insert at most the limiter's window (2 * error_buffer
    # / samples_per_insert = 16) plus one batch per actor (2 x 4)
    assert saved_traj <= rerun_rows[0]["actor/trajectories"] <= saved_traj + 16 + 8
    assert summary["trajectories"] == rerun_rows[-1]["actor/trajectories"]
    with open(run_dir / "runtime.json") as f:
        assert json.load(f)["steps"] == 61  # 60 policy updates + 1 warm-up step


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_last_step_and_stops_everything(
    cluster_env, tiny_model_dir, clip_dir, redis, tmp_path
):
    """Ctrl-C as a terminal sends it: SIGINT to the driver's whole process group, here with a
    local cluster that the driver started itself (ray.init)."""
    cfg = write_config(
        tmp_path / "int.yaml",
        tiny_model_dir,
        clip_dir,
        tmp_path,
        *runtime_overrides(
            redis.url,
            "runtime.run_name=int",
            "learner.max_steps=500",
            "runtime.ray_num_cpus=2",
        ),
    )
    env = {**cluster_env, "RAY_AUTH_MODE": "disabled"}  # the driver's own cluster, no token
    run_dir = tmp_path / "int"
    err = open(tmp_path / "err.log", "w")  # noqa: SIM115
    driver = subprocess.Popen(
        [str(BIN / "critic-unlearn"), "train", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
        # a shell without job control starts background jobs with SIGINT ignored, and children
        # inherit that (python then installs no KeyboardInterrupt handler): give Ctrl-C back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            path = run_dir / "metrics.jsonl"
            if path.exists() and len(read_metrics(path)) >= 3:
                break
            time.sleep(0.2)
        family = psutil.Process(driver.pid).children(recursive=True)
        os.killpg(driver.pid, signal.SIGINT)
        rc = driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        err.close()
    log = (tmp_path / "err.log").read_text()
    assert rc == 130, log[-3000:]  # click's exit status for Ctrl-C
    assert "interrupted: finishing the learner step, writing a checkpoint" in log
    last_logged = read_metrics(run_dir / "metrics.jsonl")[-1]["step"]
    assert load_checkpoint(run_dir / CHECKPOINT)["learner"]["steps"] == last_logged < 500
    assert f"checkpoint at step {last_logged}; rerun to resume" in log
    _, alive = psutil.wait_procs(family, timeout=30)  # the cluster went with its driver
    for p in alive:
        p.kill()
    assert not alive, [p.pid for p in alive]
