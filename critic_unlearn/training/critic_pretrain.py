"""Pretrain the critic as a reward predictor on noisy states, before any RL (the paper's recipe).

Base-policy trajectories are sampled by the run's own `Actor` (same prompts, sampler, reward) and
pass through the replay's codec (`encode_trajectory` / `decode_trajectory`, the bytes Redis would
hold); the critic then regresses V(x_t, t, c) on the trajectory's final reward at every stored
state (Monte Carlo targets: unbiased whatever the critic knows). They are kept in memory rather
than drawn from the Redis buffer, because a regression with a held-out split needs a fixed set,
which the buffer's with-replacement draws do not give.

Targets are the raw rewards through one fixed affine (the training split's mean and std, saved
in the critic): a target that never moves. The learner maps values through its per-prompt
standardisation when it forms advantages (learner/critic.py).

What it measures, per timestep on held-out trajectories: `ev_held_out`, the explained variance
of the raw reward (prompts differ, so part of it is the prompt's mean), and
`ev_held_out_within_prompt`, of the reward less its prompt's mean (over the pretraining set,
taken from values and rewards alike): what advantages see, since a prompt's mean cancels there. With
`reward_feature`, `ev_reward_feature_*` is the same for the reward model's own score of the
decoded state alone, and the oracle's (`ev_oracle_*`: the score of the decoded predicted x0)
where computed. `cost_ms_per_state` is the critic's input cost (decode, tower, reward feature).

Output (a folder): `critic.safetensors` (checkpoint format, no pickle: critic weights and meta),
`pretrain.json` (the same meta) and `critic_ev.png`. `critic.init = "auto"` keeps one such folder
per key under `critic.cache_dir`, so a second run with the same world and settings pays nothing.
The checkpoint is written last, whole: a reader never finds it without its pretrain.json.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from critic_unlearn import sources
from critic_unlearn.codec import decode_trajectory, encode_trajectory
from critic_unlearn.config import RunConfig
from critic_unlearn.io_utils import atomic_write_text
from critic_unlearn.learner.checkpoint import load_checkpoint, save_checkpoint
from critic_unlearn.learner.critic import (
    Critic,
    build_critic,
    make_decode,
    state_reward,
    text_embedder,
)
from critic_unlearn.learner.critic_checkpoint import ARCH_FIELDS, KIND
from critic_unlearn.learner.diagnostics import ev_by_timestep
from critic_unlearn.learner.losses import value_loss
from critic_unlearn.rewards import build_reward
from critic_unlearn.rewards.openclip_loading import load_open_clip
from critic_unlearn.training.setup import build_actor
from critic_unlearn.types import Batch

CHECKPOINT = "critic.safetensors"


@dataclass(frozen=True)
class PretrainResult:
    path: Path  # the critic checkpoint
    meta: dict  # trajectories, wall_s, ev per timestep (held out and train), key
    cached: bool  # True: found under critic.cache_dir, nothing was trained


def _folder_fingerprint(kind: str, name: str) -> str:
    """Names, sizes and JSON contents of a local folder (a named source such as "toyworld" is
    resolved to its folder first; a hub id hashes as itself)."""
    root = Path(sources.resolve(kind, name))
    if not root.is_dir():
        return name
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root)}:{f.stat().st_size}".encode())
        if f.suffix == ".json":
            h.update(f.read_bytes())
    return h.hexdigest()


def pretrain_key(cfg: RunConfig) -> str:
    """What the pretrained critic depends on: model, reward, prompts, sampler, critic, pretrain,
    and the learner settings the fit uses (gradient clipping; not the learner's batch size:
    targets are raw rewards, not standardised batch by batch)."""
    critic = cfg.critic.model_dump(mode="json", exclude={"init", "cache_dir", "warmup_steps",
                                                          "train_states", "text_cache_size",
                                                          "decode_batch_size",
                                                          "diagnostics_window"})
    parts = {
        "version": KIND,
        "max_grad_norm": cfg.learner.max_grad_norm,
        "model": _folder_fingerprint("model", cfg.model.pretrained),
        "model_cfg": cfg.model.model_dump(mode="json"),
        "clip": _folder_fingerprint("reward_clip", cfg.reward.clip_model),
        # the targets are raw rewards: the run's standardisation does not enter the fit
        "reward": cfg.reward.model_dump(mode="json", exclude={
            "standardize", "standardize_buffer", "standardize_min_count", "standardize_scale"}),
        "sampler": cfg.sampler.model_dump(mode="json"),
        "critic": critic,
        "lora": cfg.lora.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def sample_dataset(cfg: RunConfig, console: Console) -> list:
    """`critic.pretrain_trajectories` base-policy trajectories, round-tripped through the codec."""
    seeded = cfg.model_copy(
        update={"runtime": cfg.runtime.model_copy(update={"seed": cfg.critic.pretrain_seed})}
    )
    actor = build_actor(seeded, actor_id=0)
    trajs: list = []
    n = cfg.critic.pretrain_trajectories
    while len(trajs) < n:
        batch = actor.sample_batch(min(cfg.sampler.batch_size, n - len(trajs)))
        trajs += [decode_trajectory(encode_trajectory(t)) for t in batch]
        console.print(f"critic pretrain: sampled {len(trajs)}/{n} trajectories", highlight=False)
    del actor
    return trajs


def prompt_means(prompts: list[str], rewards: torch.Tensor) -> dict[str, float]:
    """Each prompt's mean reward over the whole pretraining set."""
    r = rewards.double()
    return {p: float(r[torch.tensor([q == p for q in prompts])].mean())
            for p in dict.fromkeys(prompts)}


def ev_report(values: torch.Tensor, rewards: torch.Tensor, ts: torch.Tensor,
              prompts: list[str], means: dict[str, float] | None = None
              ) -> tuple[dict[str, float], dict[str, float]]:
    """(raw, within-prompt) explained variance per timestep of `values` (N, K) for `rewards`.

    Within prompt: each prompt's mean reward (`means`, default these rewards') is subtracted
    from values and rewards alike. The residual is unchanged; the variance to explain is only
    what lies within a prompt, which is what advantages use (a prompt's mean cancels in them)."""
    means = means or prompt_means(prompts, rewards)
    m = torch.tensor([means[p] for p in prompts], dtype=torch.float64)
    return (_rounded(ev_by_timestep(values, rewards, ts)),
            _rounded(ev_by_timestep(values.double() - m[:, None], rewards.double() - m, ts)))


def _rounded(ev: dict[int, float]) -> dict[str, float]:
    """JSON keys are strings; four decimals are what pretrain.json reports."""
    return {str(t): round(v, 4) for t, v in ev.items()}


@torch.no_grad()
def _values(critic: Critic, x: torch.Tensor, ts: torch.Tensor, text: torch.Tensor,
            chunk: int) -> torch.Tensor:
    critic.eval()
    n, k = ts.shape
    xs, tf, txt = x.flatten(0, 1), ts.flatten(), text.repeat_interleave(k, 0)
    flat = torch.cat([critic.score(xs[i:i + chunk], tf[i:i + chunk], txt[i:i + chunk])
                      for i in range(0, n * k, chunk)])
    return flat.view(n, k).float()


def pretrain_critic(cfg: RunConfig, out_dir: str | Path, console: Console | None = None,
                    device: str | torch.device = "cpu") -> PretrainResult:
    """Sample, fit, measure, write `out_dir/critic.safetensors` (+ pretrain.json, critic_ev.png)."""
    from critic_unlearn.diffusion.backbones import load_policy

    console = console or Console(stderr=True)
    if not cfg.critic.enabled or cfg.critic.kind != "learned":
        raise ValueError(
            f"critic.enabled = {cfg.critic.enabled}, critic.kind = {cfg.critic.kind!r}: there is "
            "no learned critic to pretrain (the oracle needs no training)"
        )
    if cfg.runtime.num_threads:  # as the run itself: tiny models lose to thread oversubscription
        torch.set_num_threads(cfg.runtime.num_threads)
    cc = cfg.critic
    t0 = time.perf_counter()
    trajs = sample_dataset(cfg, console)
    sample_s = time.perf_counter() - t0
    device = torch.device(device)
    batch = Batch.from_trajectories(trajs)
    targets = batch.rewards.float()
    n, k = batch.timesteps.shape
    g = torch.Generator().manual_seed(cc.pretrain_seed)
    order = torch.randperm(n, generator=g)
    n_val = max(1, int(round(n * cc.pretrain_val_fraction)))
    val, train = order[:n_val], order[n_val:]

    torch.manual_seed(cc.pretrain_seed)
    clip = load_open_clip(cfg.reward.clip_model, cfg.reward.clip_pretrained, device)
    critic = build_critic(cc, clip).to(device)
    # the fixed affine of the targets: the training split's rewards, mean 0 and std 1
    critic.set_reward_affine(float(targets[train].mean()),
                             float(targets[train].std(correction=0)) + 1e-6)
    text = text_embedder(clip, cc)(batch.prompts).to(device)
    reward_model = build_reward(cfg.reward, device) if cc.reward_feature else None
    m = cfg.model
    comps = load_policy(m, device=device)
    decode = make_decode(comps)
    x0 = None
    if cc.input == "x0_pred":
        x0 = _predicted_x0(cfg, comps, batch, device)
    lat, ts = batch.latents.to(device), batch.timesteps.to(device)
    chunk = cfg.sampler.batch_size
    t_inputs = time.perf_counter()
    parts = []
    for rows in torch.arange(n).split(chunk):
        reward = None
        if reward_model is not None:
            reward = state_reward(reward_model, [batch.prompts[i] for i in rows.tolist()],
                                  [batch.roles[i] for i in rows.tolist()])
        parts.append(torch.stack([
            critic.inputs(lat[rows, j], decode, None if x0 is None else x0[rows, j], reward)
            for j in range(k)
        ], 1))
    inputs = torch.cat(parts)  # (N, K, F): every state decoded once
    cost_ms = 1000 * (time.perf_counter() - t_inputs) / (n * k)
    del comps

    opt = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=cc.lr)
    tgt = targets.to(device)
    norm = critic.normalized
    states = torch.stack(torch.meshgrid(train, torch.arange(k), indexing="ij"), -1).view(-1, 2)
    losses, best = [], (float("inf"), -1, None)
    for epoch in range(cc.pretrain_epochs):
        critic.train()
        for sel in states[torch.randperm(len(states), generator=g)].split(cc.pretrain_batch_size):
            r, i = sel[:, 0], sel[:, 1]
            pred = critic.score(inputs[r, i], ts[r, i], text[r])
            loss = value_loss(norm(pred.float()), norm(tgt[r]), cc.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.learner.max_grad_norm)
            opt.step()
            losses.append(loss.item())
        held = _values(critic, inputs[val], ts[val], text[val], cc.pretrain_batch_size)
        held_loss = float(((norm(held) - norm(tgt[val, None])) ** 2).mean())
        if held_loss < best[0]:  # early stopping: keep the epoch that predicts held-out best
            best = (held_loss, epoch, {k: v.clone() for k, v in critic.state_dict().items()})
        console.print(
            f"critic pretrain: epoch {epoch + 1}/{cc.pretrain_epochs}, train loss "
            f"{sum(losses[-50:]) / len(losses[-50:]):.4f}, held-out loss {held_loss:.4f}",
            highlight=False)
    critic.load_state_dict(best[2])
    values = _values(critic, inputs, ts, text, cc.pretrain_batch_size).cpu()
    val_prompts = [batch.prompts[i] for i in val.tolist()]
    train_prompts = [batch.prompts[i] for i in train.tolist()]
    means = prompt_means(batch.prompts, targets)
    ev_val, ev_val_w = ev_report(values[val], targets[val], batch.timesteps[val], val_prompts,
                                 means)
    ev_train, ev_train_w = ev_report(values[train], targets[train], batch.timesteps[train],
                                     train_prompts, means)
    meta = {
        "kind": KIND,
        "key": pretrain_key(cfg),
        "trajectories": n,
        "held_out": n_val,
        "states": n * k,
        "epochs": cc.pretrain_epochs,
        "best_epoch": best[1] + 1,  # kept: lowest held-out loss
        "held_out_loss": round(best[0], 5),
        "sample_s": round(sample_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cost_ms_per_state": round(cost_ms, 3),
        "critic": {f: getattr(cc, f) for f in ARCH_FIELDS},
        "target_affine": [round(float(critic.reward_shift), 6),
                          round(float(critic.reward_scale), 6)],
        "ev_held_out": ev_val,
        "ev_held_out_within_prompt": ev_val_w,
        "ev_train": ev_train,
        "ev_train_within_prompt": ev_train_w,
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 5),
    }
    if cc.reward_feature:  # what the feature alone explains (the critic should beat it)
        scale, shift = float(critic.reward_scale), float(critic.reward_shift)
        feature = inputs[val][..., -1].float().cpu() * scale + shift  # back to reward units
        meta["ev_reward_feature_held_out"], meta["ev_reward_feature_held_out_within_prompt"] = \
            ev_report(feature, targets[val], batch.timesteps[val], val_prompts, means)
    out_dir = Path(out_dir)
    write_pretrained(out_dir, {"critic": critic.state_dict(), "meta": json.dumps(meta)}, meta)
    return PretrainResult(out_dir / CHECKPOINT, meta, cached=False)


def write_pretrained(out_dir: Path, state: dict, meta: dict) -> None:
    """pretrain.json and the plot first, the checkpoint last (each file written whole): a
    reader that finds the checkpoint (`critic.init = auto` looks for it) finds its meta."""
    from critic_unlearn.training.plots import plot_ev_by_timestep

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "pretrain.json", json.dumps(meta, indent=1))
    plot_ev_by_timestep(out_dir / "critic_ev.png", meta["ev_held_out_within_prompt"],
                        meta["ev_train_within_prompt"])
    save_checkpoint(out_dir / CHECKPOINT, state)


@torch.no_grad()
def _predicted_x0(cfg: RunConfig, comps, batch: Batch, device) -> torch.Tensor:
    """x0_hat of every stored state under the base policy (critic.input = "x0_pred")."""
    from critic_unlearn.diffusion.lora import attach_lora

    attach_lora(comps.denoiser, cfg.lora)  # zero-initialised: the base policy
    comps.set_timesteps(batch.sampler.num_steps)
    uncond = comps.empty_condition()
    out = []
    for rows in torch.arange(len(batch.prompts)).split(cfg.sampler.batch_size):
        cond = comps.encode([batch.prompts[i] for i in rows])
        cols = []
        for j in range(batch.latents.shape[1]):
            step = comps.step(
                batch.latents[rows, j].to(device),
                batch.timesteps[rows, j].to(device), cond, uncond.expand_as(cond),
                guidance_scale=batch.sampler.guidance_scale, eta=batch.sampler.eta,
                prev_sample=batch.next_latents[rows, j].to(device),
                reduction=batch.sampler.log_prob_reduction,
            )
            cols.append(step.pred_original_sample)
        out.append(torch.stack(cols, 1))
    return torch.cat(out)


def resolve_critic_init(cfg: RunConfig, console: Console | None = None) -> tuple[RunConfig, dict]:
    """`critic.init = "auto"` -> the cached checkpoint for this config (pretrained on a miss).

    Returns the config with an absolute `critic.init` path, and what it cost
    ({path, trajectories, wall_s, cached}); ({}) when the run uses no pretrained critic."""
    cc = cfg.critic
    if not cc.enabled or cc.kind != "learned" or cc.init is None or cfg.learner.algorithm != "ppo":
        return cfg, {}
    if cc.init != "auto":
        path = Path(cc.init).expanduser().resolve()
        meta = json.loads(load_checkpoint(path).get("meta", "{}")) if path.is_file() else {}
        info = {"path": str(path), "trajectories": meta.get("trajectories"),
                "wall_s": meta.get("wall_s"), "cached": True}
        return _with_init(cfg, path), info
    folder = Path(cc.cache_dir).expanduser().resolve() / pretrain_key(cfg)
    path = folder / CHECKPOINT
    cached = path.is_file()
    if cached:
        meta = json.loads((folder / "pretrain.json").read_text())
    else:
        from critic_unlearn.device import resolve_device

        console = console or Console(stderr=True)
        console.print(f"critic.init = auto: pretraining the critic once, cached in {folder}")
        meta = pretrain_critic(cfg, folder, console, resolve_device(cfg.runtime.device)).meta
    info = {"path": str(path), "trajectories": meta["trajectories"], "wall_s": meta["wall_s"],
            "cached": cached}
    return _with_init(cfg, path), info


def _with_init(cfg: RunConfig, path: Path) -> RunConfig:
    return cfg.model_copy(update={"critic": cfg.critic.model_copy(update={"init": str(path)})})


def use_pretrained_critic(cfg: RunConfig, run_dir: Path, console: Console | None = None
                          ) -> RunConfig:
    """Resolve `critic.init` for a run; record where it came from and its cost in
    `run_dir/critic_init.json` (so ablations can count pretraining's trajectories)."""
    cfg, info = resolve_critic_init(cfg, console)
    if info:
        atomic_write_text(Path(run_dir) / "critic_init.json", json.dumps(info, indent=1))
    return cfg
