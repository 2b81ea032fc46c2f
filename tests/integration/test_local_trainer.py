"""The single-process trainer end to end on tiny models, with a private Redis server."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from critic_unlearn.codec import decode_state_dict
from critic_unlearn.config import dump_config
from critic_unlearn.runtime.local import train_local
from critic_unlearn.training.loop import CHECKPOINT
from critic_unlearn.training.metrics import read_metrics
from critic_unlearn.training.plots import plot_run
from critic_unlearn.training.snapshots import list_snapshots
from tests._tiny_run import tiny_run_config


def config(model_dir, clip_dir, run_dir, *extra):
    """configs/tiny_run.yaml in process: minibatches of 2, 3 learner steps, a smaller buffer."""
    return tiny_run_config(
        model_dir,
        clip_dir,
        run_dir,
        "learner.minibatch_size=2",
        "learner.max_steps=3",
        "replay.capacity=32",
        "replay.error_buffer=4",
        "runtime.kind=local",
        "runtime.run_name=t",
        *extra,
    )


def test_local_training_runs_logs_checkpoints_and_resumes(tiny_model_dir, clip_dir, tmp_path):
    cfg = config(tiny_model_dir, clip_dir, tmp_path)
    r = train_local(cfg)
    # max_steps counts policy updates: the warm-up step comes on top, so the critic arm gets as
    # many policy updates as a critic-off run with the same budget
    assert r.learner_steps == 4 and r.version == 3
    assert r.trajectories >= 16  # spi 1: every learner batch of 4 needs 4 new inserts
    rows = read_metrics(r.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert any(k.startswith("critic/ev_t") for k in rows[-1])  # what the critic knows, per t
    assert any(k.startswith("advantage/var_share_t") for k in rows[-1])
    assert all("critic/loss" in row and "replay/size" in row for row in rows)
    assert all(row["actor/forget_reward_mean"] == row["actor/forget_reward_mean"] for row in rows)
    assert list((r.run_dir / "tb").iterdir())  # TensorBoard event file
    assert (r.run_dir / "config.yaml").exists() and (r.run_dir / CHECKPOINT).exists()
    state, manifest = decode_state_dict((r.run_dir / "adapter/adapter.safetensors").read_bytes())
    assert manifest["version"] == "3" and any(v.abs().sum() > 0 for v in state.values())
    snaps = list_snapshots(r.run_dir)  # checkpoint_every=2, and the final checkpoint
    assert [s.step for s in snaps] == [2, 4]
    assert snaps[-1].trajectories == r.trajectories
    assert all(torch.equal(snaps[-1].load()[k], v) for k, v in state.items())

    plots = plot_run(r.run_dir)
    assert {p.name for p in plots} >= {"reward.png", "critic.png", "critic_timesteps.png"}
    assert all(p.stat().st_size > 1000 for p in plots)

    more = train_local(config(tiny_model_dir, clip_dir, tmp_path, "learner.max_steps=4"))
    assert more.learner_steps == 5 and more.version == 4  # resumed, version continues
    assert more.trajectories >= r.trajectories + 4
    rows = read_metrics(r.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]


def test_critic_off_runs_ddpo_style(tiny_model_dir, clip_dir, tmp_path):
    r = train_local(
        config(tiny_model_dir, clip_dir, tmp_path, "critic.enabled=false", "learner.max_steps=2")
    )
    assert r.version == 2
    assert "critic/loss" not in json.loads(
        (r.run_dir / "metrics.jsonl").read_text().splitlines()[0]
    )
    assert torch.isfinite(torch.tensor(r.last_metrics["policy/loss"]))


def test_off_policy_reuse_with_a_tight_staleness_bound_completes(
    tiny_model_dir, clip_dir, tmp_path
):
    # samples_per_insert 4 with max_staleness 0: after each update the stored records are too old
    # to draw while the limiter still owes them samples, and the actor's batch of 4 has no room
    # (one insert would). The learner's deadlock breaker must ask about the actor's batch, or
    # the run waits forever (a toy ablation run froze at step 5 this way).
    r = train_local(config(
        tiny_model_dir, clip_dir, tmp_path, "replay.samples_per_insert=4",
        "replay.max_staleness=0", "replay.error_buffer=8", "learner.max_steps=3",
        "runtime.stall_timeout_s=60",  # a regression fails in a minute, not in 15
    ))
    assert r.version == 3
    rows = read_metrics(r.run_dir / "metrics.jsonl")
    assert rows[-1]["replay/stale_unblocks"] >= 1


def test_the_local_runtime_reproduces_a_run_from_its_seeds(tiny_model_dir, clip_dir, tmp_path):
    # the calls come in a fixed order here, and every random choice is seeded (noise, learner
    # minibatches, which records the replay draws), so the same config learns the same numbers
    def losses(name: str) -> list[tuple[float, float]]:
        r = train_local(config(
            tiny_model_dir, clip_dir, tmp_path / name, "replay.samples_per_insert=2",
            "replay.error_buffer=8", "learner.max_steps=3",
        ))
        rows = read_metrics(r.run_dir / "metrics.jsonl")
        return [(row.get("policy/loss"), row["critic/loss"]) for row in rows]  # warm-up: None

    first = losses("a")
    assert len(first) == 4 and losses("b") == first


def test_a_local_run_through_the_entry_point_imports_no_ray(tiny_model_dir, clip_dir, tmp_path):
    """`critic_unlearn.runtime.train` (what the CLI and the demo call) with runtime.kind=local:
    the whole run, in a fresh interpreter, leaves ray out of sys.modules."""
    cfg = config(tiny_model_dir, clip_dir, tmp_path, "learner.max_steps=1")
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    code = (
        "import sys\n"
        "from critic_unlearn.config import load_config\n"
        "from critic_unlearn.runtime import train\n"
        f"r = train(load_config({str(path)!r}))\n"
        "print(r.version, 'ray' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["1", "False"], proc.stdout[-2000:]
