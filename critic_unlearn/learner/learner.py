"""The off-policy learner: critic regression, per-step advantages, PPO-clipped LoRA update.

`step(batch) -> metrics` reads top to bottom as docs/algorithm.md does:
  1. the current policy's log-probs when V-trace or the x0-prediction critic needs them; every
     stored state decoded once for the critic, and its value V(s_k) in reward units (a learned
     critic, or the oracle: the reward model on the decoded predicted x0);
  2. each trajectory's reward enters the per-prompt statistics once (draws repeat it); rewards
     and values go through the same per-prompt affine, then per-step advantages (GAE / V-trace /
     terminal broadcast), normalised over the transitions that are trained; value targets in
     the critic's own fixed units;
  3. per minibatch: a critic step on `critic.train_states` random stored states of each
     trajectory (every state's value enters a target, so every state is fitted), then (after
     warm-up) a PPO step on `train_steps` random trainable transitions of each trajectory, with
     an optional KL to the base policy (adapters off).
`learner.max_steps` counts policy updates (`updates`); critic warm-up steps come on top.
`version` labels the weights each update publishes: it equals `updates` until a restart skips
the labels a lost learner published, so a label never names two different adapters.
With a data-parallel group (learner/distributed.py) each rank steps on its share of the global
batch; statistics and gradients cross ranks, so every rank takes the same optimiser step.
Only LoRA and critic parameters change. Pure of Ray and Redis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from diffusers.training_utils import cast_training_params
from torch import Tensor

from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.lora import (
    adapter_manifest,
    attach_lora,
    base_policy,
    get_adapter_state,
    lora_config_hash,
    set_adapter_state,
)
from critic_unlearn.diffusion.policy import precision_context
from critic_unlearn.learner.advantages import normalize_and_clip, step_advantages, value_targets
from critic_unlearn.learner.anchors import draw_neighbours
from critic_unlearn.learner.critic import Critic, make_decode, state_reward
from critic_unlearn.learner.diagnostics import WindowedDiagnostics
from critic_unlearn.learner.distributed import Solo
from critic_unlearn.learner.losses import gaussian_kl_same_sigma, ppo_clipped_loss, value_loss
from critic_unlearn.learner.publisher import Publisher
from critic_unlearn.rewards.normalization import PerPromptStatTracker
from critic_unlearn.types import Batch, WeightsPacket

TextEmbed = Callable[[list[str]], Tensor]  # prompts -> (B, D) CLIP text embeddings
RewardFn = Callable[[Tensor, list[str], list[str]], Tensor]  # images, prompts, roles -> (B,)


class Learner:
    """PPO on LoRA adapters with a timestep-aware critic (or none: DDPO-style broadcast)."""

    def __init__(
        self,
        cfg: RunConfig,
        components: Policy,
        critic: Critic | None = None,
        critic_text: TextEmbed | None = None,
        publisher: Publisher | None = None,
        reward_tracker: PerPromptStatTracker | None = None,
        reward_model: RewardFn | None = None,
    ) -> None:
        cc = cfg.critic
        if self.uses_critic(cfg) and (critic is None or critic_text is None):
            raise ValueError("critic.enabled = true needs a critic and its text embedder")
        if self.needs_reward_model(cfg) and reward_model is None:
            raise ValueError(
                f"critic.kind = {cc.kind!r} with critic.reward_feature = {cc.reward_feature} "
                "needs the reward model in the learner; pass reward_model"
            )
        latent_channels = components.latent_channels
        if self.uses_critic(cfg) and cc.input == "latent" and cc.latent_channels != latent_channels:
            raise ValueError(
                f"critic.latent_channels = {cc.latent_channels}, but the model's latents have "
                f"{latent_channels} channels; set critic.latent_channels = {latent_channels}"
            )
        self.cfg, self.c = cfg, components
        self.device = components.device
        self.critic = critic.to(self.device) if self.uses_critic(cfg) else None
        self.critic_text = critic_text
        self.reward_model = reward_model
        self.oracle = cfg.critic.enabled and cc.kind == "oracle"
        self.publisher = publisher
        self.reward_tracker = reward_tracker  # per-prompt standardisation (DDPO), or None
        lc = cfg.learner
        net = components.denoiser
        if not any("lora_" in n for n, _ in net.named_parameters()):
            attach_lora(net, cfg.lora)
        cast_training_params(net, dtype=torch.float32)  # LoRA trains in fp32 over a fp16 base
        if lc.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        self.lora_params = [p for n, p in net.named_parameters() if "lora_" in n]
        self.policy_opt = torch.optim.AdamW(
            self.lora_params, lr=lc.lr, weight_decay=lc.weight_decay
        )
        self.critic_opt = (
            torch.optim.AdamW(
                [p for p in self.critic.parameters() if p.requires_grad], lr=cfg.critic.lr
            )
            if self.critic is not None
            else None
        )
        self.decode = make_decode(components)
        self.uncond = components.empty_condition()
        self.group: Solo = Solo()  # one rank until `join` hands it a data-parallel group
        self.gen = torch.Generator().manual_seed(lc.seed)
        self.lora_hash = lora_config_hash(cfg.lora)
        self.diagnostics = WindowedDiagnostics(cfg.critic.diagnostics_window)
        self.updates = 0  # policy updates: the budget (learner.max_steps) counts these
        self.version = 0  # the label of the current weights: updates + labels skipped
        self.steps = 0  # learner steps, warm-up included

    def join(self, group: Solo) -> None:
        """Become one rank of a data-parallel group: the group starts from rank 0's LoRA and
        critic, and each rank draws its own random picks (seed + rank)."""
        self.group = group
        self.gen.manual_seed(self.cfg.learner.seed + group.rank)
        group.broadcast_params(self._shared_tensors())

    def _shared_tensors(self) -> list[Tensor]:
        """What must be equal on every rank: the LoRA weights and the critic's state (a frozen
        image tower is the reward CLIP's on every rank already)."""
        out = list(self.lora_params)
        if self.critic is not None:
            frozen = not self.critic.train_image_tower
            out += [v for k, v in self.critic.state_dict().items()
                    if not (frozen and k.startswith("visual."))]
        return out

    @staticmethod
    def uses_critic(cfg: RunConfig) -> bool:
        """Whether this learner trains a critic (ESD, critic-off and oracle runs do not)."""
        return cfg.critic.enabled and cfg.critic.kind == "learned"

    @staticmethod
    def needs_reward_model(cfg: RunConfig) -> bool:
        """The oracle's values and the critic's reward feature score decoded states."""
        cc = cfg.critic
        return (cfg.learner.algorithm == "ppo" and cc.enabled
                and (cc.kind == "oracle" or cc.reward_feature))

    # -- the step -------------------------------------------------------------------------
    def step(self, batch: Batch) -> dict[str, float]:
        cfg, lc = self.cfg, self.cfg.learner
        b, k = batch.timesteps.shape
        dev = self.device
        lat, nxt = batch.latents.to(dev), batch.next_latents.to(dev)
        ts, old_lp = batch.timesteps.to(dev), batch.log_probs.to(dev)
        raw_rewards = batch.rewards.to(dev, torch.float32)
        scale, shift = self._reward_affine(batch, raw_rewards)  # (B,) each
        rewards = scale * raw_rewards + shift  # standardised per prompt (or raw)
        staleness = (self.version - batch.versions).float().mean().item()
        cond = self.conditioning(batch)
        self.c.set_timesteps(batch.sampler.num_steps)

        log_rhos, x0 = self._current_policy(batch, lat, nxt, ts, old_lp, cond)
        text = self.critic_text(batch.prompts).to(dev) if self.critic is not None else None
        inputs = self._critic_inputs(lat, x0, batch)  # (B, K, F) or None: decoded once
        raw_values = self._values(inputs, ts, text)  # (B, K) reward units, or None
        if self.oracle:
            raw_values = self._oracle_values(x0, batch)
        values = None if raw_values is None else scale[:, None] * raw_values + shift[:, None]
        eligible = self.c.step_std(ts, batch.sampler.eta) >= lc.min_train_std  # (B, K)
        g = self.group
        n = min(lc.train_steps or k, g.min_int(int(eligible.sum(1).min())))
        if n == 0:
            raise ValueError(
                f"learner.min_train_std = {lc.min_train_std} leaves no transition to train on "
                "in some trajectory; lower it"
            )
        kind = lc.advantage if values is not None else "terminal"
        raw_adv = step_advantages(
            kind,
            rewards,
            k,
            values=values,
            lam=lc.gae_lambda,
            log_rhos=log_rhos,
            rho_bar=lc.rho_bar,
            c_bar=lc.c_bar,
        )
        # normalised over the global batch (also what the diagnostics read); this rank keeps
        # its rows
        all_adv, all_eligible = g.gather_rows(raw_adv), g.gather_rows(eligible)
        adv = g.own_rows(normalize_and_clip(all_adv, lc.advantage_clip, mask=all_eligible))
        targets = None
        if self.critic is not None:  # in the critic's own units: raw rewards, raw values
            targets = value_targets(
                lc.value_target,
                raw_values,
                raw_rewards,
                lam=lc.gae_lambda if lc.target_lambda is None else lc.target_lambda,
                log_rhos=log_rhos,
                rho_bar=lc.rho_bar,
                c_bar=lc.c_bar,
            )

        update_policy = self.critic is None or self.steps >= cfg.critic.warmup_steps
        all_states = torch.ones_like(eligible)
        n_critic = min(cfg.critic.train_states or k, k)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(lc.epochs):
            for mb in torch.randperm(b, generator=self.gen).split(lc.minibatch_size // g.world):
                m = {}
                if self.critic is not None:
                    cidx = torch.stack([self._pick(all_states[i], n_critic) for i in mb.tolist()])
                    crows = mb[:, None].expand_as(cidx)
                    m.update(self._critic_update(inputs, ts, text, targets, crows, cidx))
                if update_policy:
                    idx = torch.stack([self._pick(eligible[i], n) for i in mb.tolist()])
                    rows = mb[:, None].expand_as(idx)  # (mb, n) trajectory index of each pick
                    m.update(self._policy_update(lat, nxt, ts, old_lp, cond, adv, rows, idx, batch))
                for key, v in m.items():
                    sums[key] = sums.get(key, 0.0) + v
                count += 1
        metrics = {key: v / count for key, v in sums.items()}
        self.steps += 1
        if update_policy:
            self.updates += 1
            self.version += 1
            if self.publisher is not None and self.version % lc.publish_every == 0:
                self.publisher.publish(self.weights())
        metrics.update(
            {
                "learner/reward_mean": raw_rewards.mean().item(),
                "learner/advantage_abs": adv[eligible].abs().mean().item(),
                "learner/staleness_mean": staleness,
            }
        )
        if values is not None:
            metrics["critic/value_error"] = (values - rewards[:, None]).abs().mean().item()
        metrics = g.mean_scalars(metrics)  # every rank's shard weighs the same
        metrics["learner/version"] = float(self.version)
        metrics["learner/steps"] = float(self.steps)
        metrics.update(self.diagnostics.update(
            g.gather_rows(ts), g.gather_rows(rewards),
            None if values is None else g.gather_rows(values), all_adv, all_eligible))
        return metrics

    def _reward_affine(self, batch: Batch, raw_rewards: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift) of the per-prompt standardisation, after the batch's new trajectories
        entered the statistics (each once, whatever the draws repeat); (1, 0) without it."""
        if self.reward_tracker is None:
            ones = torch.ones_like(raw_rewards)
            return ones, torch.zeros_like(raw_rewards)
        g = self.group  # every rank's trajectories, in rank order: the trackers stay equal
        ids = None if batch.ids is None else g.gather_strings(batch.ids)
        self.reward_tracker.add(g.gather_strings(batch.prompts), g.gather_rows(raw_rewards), ids)
        scale, shift = self.reward_tracker.affine(batch.prompts)
        return scale.to(raw_rewards), shift.to(raw_rewards)

    def conditioning(self, batch: Batch) -> Tensor:
        """(B, L, D) prompt embeddings to re-score with: the function the actors sampled with,
        fed the soft tokens the trajectories carry (adversarial pool prompts), so the learner
        needs no pool and behaviour and re-scored log-probs see the same conditioning."""
        return self.c.encode(batch.prompts, batch.soft_tokens)

    def _pick(self, eligible: Tensor, n: int) -> Tensor:
        """n random positions among a trajectory's eligible transitions (learner's own RNG)."""
        pool = eligible.nonzero().squeeze(1).cpu()
        return pool[torch.randperm(len(pool), generator=self.gen)[:n]].to(eligible.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The run's one precision policy (model.dtype), for the critic and ESD's UNet calls; the
        policy's own log-probs get it inside the policy's `step`, as the actors' do."""
        return precision_context(self.device, self.c.compute_dtype)

    @torch.no_grad()
    def _current_policy(self, batch, lat, nxt, ts, old_lp, cond):
        """log pi_theta - log mu and x0_hat at every stored step, only when something needs them."""
        lc, cc = self.cfg.learner, self.cfg.critic
        need_rho = lc.advantage == "vtrace" or lc.value_target == "vtrace"
        need_x0 = self.oracle or (self.critic is not None and cc.input == "x0_pred")
        if not (need_rho or need_x0):
            return None, None
        rhos, x0s = [], []
        for j in range(lat.shape[1]):
            out = self._score(lat[:, j], nxt[:, j], ts[:, j], cond, batch)
            rhos.append(out.log_prob - old_lp[:, j])
            x0s.append(out.pred_original_sample)
        return torch.stack(rhos, 1), torch.stack(x0s, 1)

    def _score(self, x, x_prev, t, cond, batch: Batch):
        """log pi_theta of stored transitions: the policy's `step` exactly as the actor ran it
        (same autocast state and dtype, fp32 step arithmetic; see diffusion/policy.py)."""
        s = batch.sampler
        return self.c.step(
            x,
            t,
            cond,
            self.uncond.expand_as(cond),
            guidance_scale=s.guidance_scale,
            eta=s.eta,
            prev_sample=x_prev,
            reduction=s.log_prob_reduction,  # as the behaviour log-probs were
        )

    def _state_chunks(self, states: Tensor, batch: Batch):
        """(B, K, ...) states -> chunks of flattened states, each with its states' reward fn."""
        k = states.shape[1]
        prompts = [p for p in batch.prompts for _ in range(k)]
        roles = [r for r in batch.roles for _ in range(k)]
        n = self.cfg.critic.decode_batch_size
        for start, part in zip(range(0, len(prompts), n), states.flatten(0, 1).split(n),
                               strict=True):
            reward = None
            if self.reward_model is not None:
                reward = state_reward(self.reward_model, prompts[start:start + n],
                                      roles[start:start + n])
            yield part, reward

    @torch.no_grad()
    def _critic_inputs(self, lat, x0, batch: Batch) -> Tensor | None:
        """Every stored state decoded and preprocessed for the critic, once per learner step
        (all B x K states in one batched call: the VAE decode is most of the critic's cost).
        The decoded state is x_t, or with critic.input = x0_pred the predicted x0: x0 is also
        computed for V-trace's ratios, and a noisy-input critic must never be fed it."""
        if self.critic is None:
            return None
        b, k = lat.shape[:2]
        states = x0 if self.cfg.critic.input == "x0_pred" else lat
        chunks = []
        for part, reward in self._state_chunks(states, batch):
            with self._autocast():  # x0_pred input: the predicted latents are what is decoded
                chunks.append(self.critic.inputs(part, self.decode, part, reward))
        flat = torch.cat(chunks)
        return flat.view(b, k, *flat.shape[1:])

    @torch.no_grad()
    def _oracle_values(self, x0: Tensor, batch: Batch) -> Tensor:
        """V_i = r(decode(x0_hat_i)): the reward model on each state's predicted clean image
        under the current policy, in reward units; needs no training (critic.kind = oracle)."""
        b, k = x0.shape[:2]
        vals = []
        for part, reward in self._state_chunks(x0, batch):
            with self._autocast():
                vals.append(reward(self.decode(part)).to(self.device, torch.float32))
        return torch.cat(vals).view(b, k)

    @torch.no_grad()
    def _values(self, inputs, ts, text) -> Tensor | None:
        if self.critic is None:
            return None
        self.critic.eval()
        vals = []
        for j in range(inputs.shape[1]):
            with self._autocast():
                v = self.critic.score(inputs[:, j], ts[:, j], text)
            vals.append(v.float())
        return torch.stack(vals, 1)

    def _critic_update(self, inputs, ts, text, targets, rows, idx) -> dict[str, float]:
        self.critic.train()
        r, i = rows.reshape(-1), idx.reshape(-1)
        with self._autocast():
            pred = self.critic.score(inputs[r, i], ts[r, i], text[r])
        norm = self.critic.normalized  # the loss in the head's fixed units
        loss = value_loss(norm(pred.float()), norm(targets[r, i]), self.cfg.critic.loss)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.group.average_gradients(self.critic.parameters())
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.learner.max_grad_norm)
        self.critic_opt.step()
        return {"critic/loss": loss.item()}

    def _policy_update(self, lat, nxt, ts, old_lp, cond, adv, rows, idx, batch) -> dict[str, float]:
        lc = self.cfg.learner
        self.policy_opt.zero_grad(set_to_none=True)
        n = idx.shape[1]
        stats = {
            "policy/loss": 0.0,
            "policy/approx_kl": 0.0,
            "policy/clip_fraction": 0.0,
            "policy/ratio_mean": 0.0,
            "policy/kl_base": 0.0,
            "policy/anchor_kl": 0.0,
        }
        for j in range(n):
            r, i = rows[:, j], idx[:, j]
            out = self._score(lat[r, i], nxt[r, i], ts[r, i], cond[r], batch)
            loss, info = ppo_clipped_loss(out.log_prob, old_lp[r, i], adv[r, i], lc.clip_range)
            if lc.kl_weight > 0:
                with torch.no_grad(), base_policy(self.c.denoiser):
                    base = self._score(lat[r, i], nxt[r, i], ts[r, i], cond[r], batch)
                kl = gaussian_kl_same_sigma(
                    out.mean.float(),
                    base.mean.float(),
                    out.std,
                    batch.sampler.log_prob_reduction,
                ).mean()
                loss = loss + lc.kl_weight * kl
                stats["policy/kl_base"] += kl.item() / n
            if lc.anchor_weight > 0:
                anchor = self._anchor_kl(out, lat[r, i], nxt[r, i], ts[r, i], cond[r], r, batch)
                loss = loss + lc.anchor_weight * anchor
                stats["policy/anchor_kl"] += anchor.item() / n
            (loss / n).backward()
            stats["policy/loss"] += loss.item() / n
            stats["policy/approx_kl"] += float(info["approx_kl"]) / n
            stats["policy/clip_fraction"] += float(info["clip_fraction"]) / n
            stats["policy/ratio_mean"] += float(info["ratio_mean"]) / n
        self.group.average_gradients(self.lora_params)
        stats["policy/grad_norm"] = float(
            torch.nn.utils.clip_grad_norm_(self.lora_params, lc.max_grad_norm)
        )
        self.policy_opt.step()
        return stats

    def _anchor_kl(self, out, x, x_prev, t, cond, rows, batch: Batch) -> Tensor:
        """Mean KL of the adapted step to the base step over this pick's anchored transitions
        (learner/anchors.py): retain rows with their own conditioning (`out` is their adapted
        step already), forget rows re-conditioned on a neighbour of their prompt."""
        lc, cc = self.cfg.learner, self.cfg.reward.prompts
        roles = [batch.roles[j] for j in rows.tolist()]
        red = batch.sampler.log_prob_reduction
        kls = []

        def base_step(keep, c):
            with torch.no_grad(), base_policy(self.c.denoiser):
                return self._score(x[keep], x_prev[keep], t[keep], c, batch)

        retain = torch.tensor([r == "retain" for r in roles], device=x.device)
        if "retain" in lc.anchor_on and retain.any():
            base = base_step(retain, cond[retain])
            kls.append(gaussian_kl_same_sigma(out.mean[retain].float(), base.mean.float(),
                                              out.std[retain], red))
        forget = ~retain
        if "neighbours" in lc.anchor_on and forget.any():
            texts = [batch.prompts[j] for j, f in zip(rows.tolist(), forget.tolist(),
                                                      strict=True) if f]
            near = draw_neighbours(texts, cc.concept, cc.anchor_substitutes, self.gen)
            ncond = self.c.encode(near)
            adapted = self._score(x[forget], x_prev[forget], t[forget], ncond, batch)
            base = base_step(forget, ncond)
            kls.append(gaussian_kl_same_sigma(adapted.mean.float(), base.mean.float(),
                                              adapted.std, red))
        if not kls:
            return out.log_prob.new_zeros(())
        return torch.cat(kls).mean()

    # -- weights and state ------------------------------------------------------------------
    def weights(self) -> WeightsPacket:
        state = get_adapter_state(self.c.denoiser)
        manifest = adapter_manifest(self.c.model_id, self.lora_hash, state, self.version)
        return WeightsPacket(version=self.version, state_dict=state, manifest=manifest)

    def state_dict(self) -> dict:
        return {
            "adapter": get_adapter_state(self.c.denoiser),
            "critic": None if self.critic is None else self.critic.state_dict(),
            "policy_optimizer": self.policy_opt.state_dict(),
            "critic_optimizer": None if self.critic_opt is None else self.critic_opt.state_dict(),
            "version": self.version,
            "updates": self.updates,
            "steps": self.steps,
            "rng": {"torch": torch.get_rng_state(), "learner": self.gen.get_state()},
            "lora_config_hash": self.lora_hash,
            "reward_stats": None
            if self.reward_tracker is None
            else self.reward_tracker.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["lora_config_hash"] != self.lora_hash:
            raise ValueError(
                f"checkpoint LoRA config hash {state['lora_config_hash']} differs from this run's "
                f"{self.lora_hash}; resume with the lora settings the checkpoint was trained with"
            )
        adapter = {k: v.to(self.device) for k, v in state["adapter"].items()}
        set_adapter_state(self.c.denoiser, adapter)
        self.policy_opt.load_state_dict(state["policy_optimizer"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_opt.load_state_dict(state["critic_optimizer"])
        self.version, self.steps = int(state["version"]), int(state["steps"])
        self.updates = int(state.get("updates", self.version))
        torch.set_rng_state(state["rng"]["torch"])
        self.gen.set_state(state["rng"]["learner"])
        if self.reward_tracker is not None and state.get("reward_stats") is not None:
            self.reward_tracker.load_state_dict(state["reward_stats"])
