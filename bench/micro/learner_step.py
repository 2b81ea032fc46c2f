"""One learner step (critic + PPO LoRA update on K steps of a batch) vs a plain LoRA step.

The plain step is what a diffusers LoRA fine-tuning script does: noise a clean latent at a
random t, predict the noise with a CFG-doubled batch, MSE, backward, AdamW. Same model, batch
and LoRA, alternating runs in one process. Last line: JSON with `ratio` = ours / plain and
`critic_ratio` = ours / the same learner step with the critic off (DDPO), on the same batch:
what the critic costs (decoding every stored state once, its values, its regression).

    python -m bench.micro.learner_step            # tiny random model, CPU
    python -m bench.micro.learner_step --sd15     # SD-1.5 shapes, random weights, GPU (peak memory)
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import open_clip
import torch

from bench.harness import alternate, emit, print_runs
from bench.models import sd15_shaped_model
from critic_unlearn.config import load_config
from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.diffusion.tiny import build_tiny_model, tiny_clip
from critic_unlearn.learner.critic import build_critic, text_embedder
from critic_unlearn.learner.learner import Learner
from critic_unlearn.rewards.clip_concept import ClipConceptReward
from critic_unlearn.rewards.openclip_loading import LoadedClip
from critic_unlearn.types import Batch, SamplerSettings


def random_clip(sd15: bool, device: torch.device) -> LoadedClip:
    """A randomly initialised CLIP (ViT-B-32 shapes for --sd15, a tiny one otherwise)."""
    if sd15:
        clip = tiny_clip(0, open_clip.get_model_config("ViT-B-32"), size=224)
    else:
        clip = tiny_clip(0)
    clip.model.to(device)
    return clip


def synthetic_batch(
    comps: Policy,
    batch_size: int,
    num_steps: int,
    guidance: float = 5.0,
    keep_steps: int | None = None,
    size: int | None = None,
    eta: float = 1.0,
) -> Batch:
    """A learner batch sampled by `comps` (its network as it is, LoRA included) with rewards 0,
    1, 2 in turn: the shapes a real batch has, without a reward model. `size`: pixels, square
    (None: the model's own). `eta`: DDIM's, or a flow model's SDE noise level."""
    specs = [PromptSpec(f"p{i}", f"a photo of object {i}", "forget") for i in range(batch_size)]
    s = SamplerSettings(num_steps, eta, guidance)
    with torch.no_grad():
        trajs = sample_trajectories(
            comps, specs, list(range(batch_size)), s, keep_steps=keep_steps, height=size,
            width=size, decode=False,
        )
    return Batch.from_trajectories([t.with_reward(float(i % 3)) for i, t in enumerate(trajs)])


def plain_lora_step(
    learner: Learner, batch: Batch, *, minibatch: int | None = None, passes: int = 1
) -> Callable[[], None]:
    """What a diffusers LoRA fine-tuning script does, on the learner's network and LoRA: noise
    the batch's last stored latents (x_0 when every step is kept) at a random time, predict with
    a CFG-doubled batch, MSE to the training target (the noise for SD-1.x's eps-prediction, the
    velocity noise - x_0 for flow matching), backward, AdamW. `minibatch` trajectories per
    optimiser step (None: the whole batch), `passes` forward+backward passes accumulated before
    each step: with the learner's minibatch and its transitions per trajectory, the same network
    work as one learner step's policy update."""
    c, device = learner.c, learner.device
    flow = c.family == "sd3"
    x0_all = batch.next_latents[:, -1].to(device)
    cond_all = c.encode(batch.prompts)
    opt = torch.optim.AdamW(learner.lora_params, lr=1e-4)
    size = minibatch or x0_all.shape[0]

    def noised(x0: torch.Tensor, noise: torch.Tensor) -> tuple:
        if flow:  # x_t = (1 - s) x0 + s eps, timestep s * 1000, target eps - x0
            sigma = torch.rand(x0.shape[0], device=device)
            s = sigma.view(-1, 1, 1, 1)
            return (1 - s) * x0 + s * noise, sigma * 1000, noise - x0
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        return c.scheduler.add_noise(x0, noise, t), t, noise

    def step() -> None:
        for x0, cond in zip(x0_all.split(size), cond_all.split(size), strict=True):
            uncond = learner.uncond.expand_as(cond)
            opt.zero_grad(set_to_none=True)
            for _ in range(passes):
                x_t, t, target = noised(x0, torch.randn_like(x0))
                # the CFG-doubled batch, each half against the target (unguided calls)
                pred = c.predict(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                 torch.cat([uncond, cond]), None, 1.0)
                loss = torch.nn.functional.mse_loss(pred.float(),
                                                    torch.cat([target, target]).float())
                (loss / passes).backward()
            opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--train-steps", type=int, default=None, help="K transitions per trajectory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. "
                    "critic.reward_feature=false (the critic without the reward feature)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = args.batch or (16 if args.sd15 else 8)
    num_steps, k = (50, args.train_steps or 4) if args.sd15 else (10, args.train_steps or 4)
    dtype = "float16" if device.type == "cuda" else "float32"

    with tempfile.TemporaryDirectory() as tmp:
        path = sd15_shaped_model(tmp + "/m") if args.sd15 else str(build_tiny_model(tmp + "/m"))
        comps = load_components(path, dtype=dtype, device=device)
    cfg = load_config(
        None,
        [
            f"sampler.num_steps={num_steps}",
            "sampler.guidance_scale=5.0",
            f"learner.batch_size={batch_size}",
            f"learner.minibatch_size={batch_size}",
            f"learner.train_steps={k}",
            "critic.warmup_steps=0",
            "lora.rank=4",
            f"learner.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
            *args.overrides,
        ],
    )
    clip = random_clip(args.sd15, device)
    # the critic's reward feature scores decoded states with the reward model (the run's CLIP)
    reward = (ClipConceptReward(clip, cfg.reward.prompts.concept, cfg.reward.prompts.anchor)
              if Learner.needs_reward_model(cfg) else None)
    learner = Learner(cfg, comps, build_critic(cfg.critic, clip), text_embedder(clip, cfg.critic),
                      reward_model=reward)
    off_cfg = cfg.model_copy(update={"critic": cfg.critic.model_copy(update={"enabled": False})})
    ddpo = Learner(off_cfg, comps)  # same UNet and LoRA parameters, no critic
    batch = synthetic_batch(comps, batch_size, num_steps)
    plain = plain_lora_step(learner, batch)

    def ours() -> None:
        learner.step(batch)

    def critic_off() -> None:
        ddpo.step(batch)

    sides = {"plain": plain, "ours": ours, "critic_off": critic_off}
    timings = alternate(sides, args.repeats, device=device)
    med = timings.medians()
    peaks = ({n: b / 2**30 for n, b in timings.peak_bytes.items()} if device.type == "cuda"
             else {})
    print(
        f"model={'sd15-shapes' if args.sd15 else 'tiny'} device={device} batch={batch_size} "
        f"K={k} of S={num_steps} (each a CFG-doubled UNet pass)"
    )
    print_runs(timings)
    emit(
        {
            "ratio": round(med["ours"] / med["plain"], 3),
            "critic_ratio": round(med["ours"] / med["critic_off"], 3),
            "critic_off_s": round(med["critic_off"], 4),
            "ours_s": round(med["ours"], 4),
            "plain_s": round(med["plain"], 4),
            "ratio_per_transition": round(med["ours"] / med["plain"] / k, 3),
            "peak_gib": {n: round(v, 2) for n, v in peaks.items()} or None,
            "device": str(device),
            "batch": batch_size,
            "train_steps": k,
        }
    )


if __name__ == "__main__":
    main()
