"""ESD (Gandikota et al. 2023) on the same LoRA parameters, for side-by-side comparison.

Minimises || eps_theta(x_t, c_f, t) - target ||^2 with the target
eps_0(x_t, t) - eta_esd (eps_0(x_t, c_f, t) - eps_0(x_t, t)), where eps_0
 is the frozen base UNet (adapters off). States x_t come from the same replay batches
the RL learner uses (forget-prompt trajectories, the trajectory's own prompt as c_f), so both
methods see the same data. No critic, no rewards: a supervised baseline.
"""

from __future__ import annotations

import torch

from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.lora import base_policy
from critic_unlearn.learner.learner import Learner
from critic_unlearn.types import Batch


class ESDLearner(Learner):
    @staticmethod
    def uses_critic(cfg: RunConfig) -> bool:
        return False

    def step(self, batch: Batch) -> dict[str, float]:
        lc = self.cfg.learner
        forget = [i for i, r in enumerate(batch.roles) if r == "forget"]
        if not forget:
            raise ValueError("ESD needs forget-prompt trajectories in every batch; got none")
        dev, net = self.device, self.c.denoiser
        rows = torch.tensor(forget)
        k = batch.timesteps.shape[1]
        n = min(lc.train_steps or k, k)
        idx = torch.stack([torch.randperm(k, generator=self.gen)[:n] for _ in forget])  # (F, n)
        cond = self.c.encode([batch.prompts[i] for i in forget])
        total = 0.0
        self.policy_opt.zero_grad(set_to_none=True)
        for j in range(n):
            x = batch.latents[rows, idx[:, j]].to(dev)
            t = batch.timesteps[rows, idx[:, j]].to(dev)
            uncond = self.uncond.expand_as(cond)
            with torch.no_grad(), base_policy(net):
                e_u = self.c.predict(x, t, uncond, None, 1.0)
                e_c = self.c.predict(x, t, cond, None, 1.0)
                target = e_u - lc.esd.eta * (e_c - e_u)
            pred = self.c.predict(x, t, cond, None, 1.0)
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
            (loss / n).backward()
            total += loss.item() / n
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.lora_params, lc.max_grad_norm))
        self.policy_opt.step()
        self.steps += 1
        self.updates += 1
        self.version += 1
        if self.publisher is not None and self.version % lc.publish_every == 0:
            self.publisher.publish(self.weights())
        return {
            "esd/loss": total,
            "policy/grad_norm": grad_norm,
            "learner/version": float(self.version),
            "learner/steps": float(self.steps),
            "learner/reward_mean": batch.rewards.float().mean().item(),
        }
