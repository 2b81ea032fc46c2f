"""Reward and UA curves of a run as PNG files, from its metrics.jsonl (matplotlib, no screen)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from critic_unlearn.training.metrics import read_metrics  # noqa: E402

CURVES = {
    "reward.png": [
        ("actor/reward_mean", "mean reward of the latest actor batch"),
        ("actor/forget_reward_mean", "... of its forget prompts"),
    ],
    "ua_proxy.png": [
        ("actor/ua_proxy", "UA proxy (forget images the reward CLIP no longer matches)")
    ],
    "critic.png": [
        ("critic/value_error", "|V - r| over stored states"),
        ("critic/loss", "critic loss"),
    ],
}


def plot_run(run_dir: Path) -> list[Path]:
    """Write one PNG per curve group that has data; x axis: trajectories sampled."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    written = []
    for name, series in CURVES.items():
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        drawn = False
        for key, label in series:
            pts = [
                (r["actor/trajectories"], r[key])
                for r in rows
                if r.get(key) is not None and r.get("actor/trajectories") is not None
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label)
                drawn = True
        if drawn:
            ax.set_xlabel("trajectories sampled")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = Path(run_dir) / "plots" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
            written.append(path)
        plt.close(fig)
    return written


def plot_curve(run_dir: Path, curve: dict) -> Path:
    """plots/ua_curve.png: the judge's UA and IRA at each snapshot, base model's as dashed lines."""
    pts = curve["points"]
    x = [p["trajectories"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label, colour in (("ua", "UA (forget prompts)", "C3"), ("ira", "IRA (retain)", "C0")):
        ys = [p[key] for p in pts]
        if all(y is not None for y in ys):
            ax.plot(x, ys, marker="o", ms=3, label=label, color=colour)
        if curve["base"].get(key) is not None:
            ax.axhline(curve["base"][key], ls="--", lw=1, color=colour, label=f"base {key.upper()}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("trajectories sampled")
    ax.set_title("judged on held-out seeds and templates", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / "plots" / "ua_curve.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
