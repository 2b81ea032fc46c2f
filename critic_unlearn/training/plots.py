"""Reward and UA curves of a run as PNG files, from its metrics.jsonl (matplotlib, no screen)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from critic_unlearn.training.metrics import read_metrics, timestep_metrics  # noqa: E402

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


def _save(fig, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
            written.append(_save(fig, Path(run_dir) / "plots" / name))
        else:
            plt.close(fig)
    diag = plot_critic_diagnostics(run_dir)
    if diag is not None:
        written.append(diag)
    return written


def worst_retain_series(curve: dict) -> tuple[str, list[float | None], float] | None:
    """The retain prompt that is worst at the curve's last snapshot (its `worst_retain_prompt`,
    from `evaluation.drift`), its judged accuracy at every snapshot and its base accuracy; None
    for a curve without per-prompt retain accuracy (written before it was recorded)."""
    pts = curve["points"]
    name = pts[-1].get("worst_retain_prompt") if pts else None
    base = (curve["base"].get("retain_per_prompt") or {}).get(name)
    if name is None or base is None:
        return None
    return name, [(p.get("retain_per_prompt") or {}).get(name) for p in pts], base


def plot_curve(run_dir: Path, curve: dict) -> Path:
    """plots/ua_curve.png: the judge's UA and mean IRA at each snapshot and the accuracy of the
    retain prompt worst at the end (its drop below base, not the mean, is the over-erasure
    target), base model's as dashed lines."""
    pts = curve["points"]
    x = [p["trajectories"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label, colour in (("ua", "UA (forget prompts)", "C3"),
                               ("ira", "IRA (retain, mean)", "C0")):
        ys = [p[key] for p in pts]
        if all(y is not None for y in ys):
            ax.plot(x, ys, marker="o", ms=3, label=label, color=colour)
        if curve["base"].get(key) is not None:
            ax.axhline(curve["base"][key], ls="--", lw=1, color=colour, label=f"base {key.upper()}")
    worst = worst_retain_series(curve)
    if worst is not None:
        name, ys, base = worst
        drop = pts[-1]["worst_retain_drop_pts"]
        ax.plot(x, [float("nan") if y is None else y for y in ys], marker="s", ms=3, color="C2",
                label=f"worst retain prompt: {name!r} ({-drop:+.1f} pts at end)")
        ax.axhline(base, ls=":", lw=1, color="C2", label="its base")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("trajectories sampled")
    ax.set_title("judged on held-out seeds and templates", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(run_dir) / "plots" / "ua_curve.png")


def _by_timestep(rows: list[dict], prefix: str) -> dict[int, list[tuple[float, float]]]:
    """{timestep: [(trajectories, value), ...]} for the metrics named `prefix` + tNNNN."""
    series: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        x = r.get("actor/trajectories")
        if x is None:
            continue
        for t, v in timestep_metrics(r, prefix).items():
            series.setdefault(t, []).append((x, v))
    return series


def plot_critic_diagnostics(run_dir: Path) -> Path | None:
    """plots/critic_timesteps.png: per timestep, the critic's explained variance of the final
    reward and the share of advantage variance, over the run (None without a critic)."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    ev = _by_timestep(rows, "critic/ev_t")
    share = _by_timestep(rows, "advantage/var_share_t")
    if not ev and not share:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    cmap = plt.get_cmap("viridis")
    for ax, series, title in ((axes[0], ev, "explained variance of r by V(x_t)"),
                              (axes[1], share, "share of advantage variance")):
        ts = sorted(series, reverse=True)
        for n, t in enumerate(ts):
            ax.plot(*zip(*series[t], strict=True), lw=1, color=cmap(n / max(1, len(ts) - 1)),
                    label=f"t={t}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("trajectories sampled")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-1.0, 1.0)
    axes[1].legend(fontsize=7, ncol=2)
    return _save(fig, Path(run_dir) / "plots" / "critic_timesteps.png")


def plot_ev_by_timestep(path: Path, held_out: dict[str, float], train: dict[str, float]) -> Path:
    """A pretrained critic's explained variance per timestep (noisiest left), held out and train."""
    ts = sorted((int(t) for t in held_out), reverse=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(range(len(ts)), [held_out[str(t)] for t in ts], marker="o", label="held out")
    ax.plot(range(len(ts)), [train[str(t)] for t in ts], marker=".", ls="--", label="train")
    ax.set_xticks(range(len(ts)), [str(t) for t in ts], fontsize=7)
    ax.set_xlabel("timestep t (sampling order: noisy -> clean)")
    ax.set_ylabel("explained variance of r")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))
