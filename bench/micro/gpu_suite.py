"""The GPU suite: the actor against a plain diffusers loop, the learner step against a plain LoRA
step, `actors.compile` off and on, peak memory of each, and the model at batch 8 against 24 GB.

SD-1.5 shapes with random weights (nothing downloaded): the UNet, VAE and text encoder are built
from SD-1.5's configs, the reward / critic CLIP from ViT-L/14's, saved with `save_pretrained` and
loaded back through the real loaders; everything else is configs/sd_forget_church.yaml (keep 10
of the steps, train 10 transitions, minibatch 4, frozen critic image tower). The actor and the
learner are built by training/setup.py as a run builds them. Runs alternate in one process;
medians of `--repeats`. Peak memory of each is what it holds (the allocator's growth when it was
built) plus what its call adds on top (`torch.cuda.max_memory_allocated`), so the sides do not
count each other's weights. The last line is JSON.

`--backbone sd3`: the same phases on Stable Diffusion 3.5 Medium's shapes (random weights, no T5)
with configs/sd3_forget_church.yaml: the actor (Flow-GRPO's SDE sampler) against
StableDiffusion3Pipeline's own loop (the ODE, same steps and guidance), the learner against a
plain flow-matching LoRA step.

    python -m bench.micro.gpu_suite            # SD-1.5 shapes, batch 16, 50 steps, fp16, on the GPU
    python -m bench.micro.gpu_suite --backbone sd3 --steps 10   # SD3.5-M shapes, the scenario's
    python -m bench.micro.gpu_suite --quick    # tiny model, 4 steps: a CPU smoke run (< 60 s)
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench import REPO
from bench.harness import alternate, emit, print_runs, sync, timed_call
from bench.micro.learner_step import plain_lora_step, synthetic_batch
from bench.models import sd15_shaped_model, sd35m_shaped_model
from critic_unlearn.config import RunConfig, load_config
from critic_unlearn.diffusion.backbones import load_policy
from critic_unlearn.diffusion.tiny import build_tiny_model, build_tiny_sd3, tiny_clip
from critic_unlearn.learner.learner import Learner
from critic_unlearn.rewards.openclip_loading import save_open_clip
from critic_unlearn.training.setup import build_actor, build_learner

SCENARIOS = {"sd1": REPO / "configs" / "sd_forget_church.yaml",
             "sd3": REPO / "configs" / "sd3_forget_church.yaml"}
MODEL_NAMES = {("sd1", False): "sd15-shapes", ("sd3", False): "sd35m-shapes",
               ("sd1", True): "tiny", ("sd3", True): "tiny-sd3"}
BUDGET_BYTES = 24e9  # "fits in 24 GB": what the allocator reserved, against 24e9 bytes
GIB = 2**30
TARGETS = {  # what the real-model path must reach on a GPU
    "actor_vs_diffusers": (">=", 0.95),  # actor images/s over the plain pipeline's
    "compiled_vs_eager": (">", 1.0),  # compiled actor's images/s over the eager actor's
    "learner_vs_plain": ("<=", 1.3),  # learner step time over a plain LoRA step's
}


class Memory:
    """CUDA allocator counters (None everywhere on CPU: there is no per-call peak to read)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else 0

    def free(self) -> None:
        """Drop what the last phase built (compiled graphs included) and restart the peaks."""
        torch._dynamo.reset()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def gib(self, n: float | None) -> float | None:
        return None if not self.cuda or n is None else round(n / GIB, 2)


def say(what: str) -> None:
    """Progress on stderr (the phase a timeout stopped in); stdout ends with the JSON."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def build_models(root: Path, quick: bool, backbone: str = "sd1") -> tuple[str, str]:
    """(diffusion model folder, reward / critic CLIP folder), random weights from configs."""
    import open_clip

    if quick:
        tiny = build_tiny_sd3 if backbone == "sd3" else build_tiny_model
        model, clip = str(tiny(root / "model")), tiny_clip(0)
    else:
        shaped = sd35m_shaped_model if backbone == "sd3" else sd15_shaped_model
        model = shaped(str(root / "model"))
        clip = tiny_clip(0, open_clip.get_model_config("ViT-L-14"), size=224)
    return model, str(save_open_clip(clip, root / "clip"))


def suite_config(model: str, clip: str, args: argparse.Namespace, batch: int) -> RunConfig:
    """The backbone's scenario on the random models, at this batch, steps and precision."""
    keep = min(10, args.steps)
    minibatch = args.minibatch or math.gcd(batch, 4)  # the scenario's 4 where it divides
    return load_config(
        SCENARIOS[args.backbone],
        [
            f"model.pretrained={model}",
            f"model.dtype={args.dtype}",
            "model.local_files_only=true",
            f"reward.clip_model={clip}",
            "reward.clip_pretrained=null",
            f"sampler.num_steps={args.steps}",
            f"sampler.guidance_scale={args.guidance}",
            f"sampler.keep_steps={keep}",
            f"sampler.batch_size={batch}",
            f"sampler.height={args.size or 'null'}",
            f"sampler.width={args.size or 'null'}",
            f"learner.batch_size={batch}",
            f"learner.minibatch_size={minibatch}",
            f"learner.train_steps={keep}",
            "critic.warmup_steps=0",  # the step measured updates the policy, as every later one
            f"runtime.device={args.device}",
        ],
    )


def trainable_steps(cfg: RunConfig, backbone: str) -> int:
    """Steps of the schedule the learner may train on (step std >= learner.min_train_std), from
    the scheduler alone. Flow matching: every SDE step (eta > 0) has std > 0, and the sd3
    scenario trains from std 0 on."""
    from diffusers import DDIMScheduler

    from critic_unlearn.diffusion.ddim_logprob import step_std

    if backbone == "sd3":  # the learner phase counts the eligible ones itself
        return cfg.sampler.num_steps
    sched = DDIMScheduler.from_pretrained(cfg.model.pretrained, subfolder="scheduler")
    sched.set_timesteps(cfg.sampler.num_steps)
    sigma = step_std(sched, sched.timesteps, cfg.sampler.eta)
    return int((sigma >= cfg.learner.min_train_std).sum())


def with_compile(cfg: RunConfig, on: bool) -> RunConfig:
    return cfg.model_copy(update={"actors": cfg.actors.model_copy(update={"compile": on})})


def tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def actor_phase(cfg: RunConfig, args: argparse.Namespace, device, mem: Memory) -> dict:
    """images/s and peak memory: the stock diffusers pipeline, our actor, our compiled actor."""
    b, held = args.batch, {}
    m0 = mem.allocated()
    comps = load_policy(cfg.model, dtype=args.dtype, device=device)
    # the same scheduler config (loaded as the actor loads it), steps, CFG, batch and dtype
    pipe = comps.reference_pipeline()
    extra = {"eta": 1.0} if comps.family == "sd1" else {}  # SD3's pipeline has only its ODE
    m1 = mem.allocated()
    actor = build_actor(with_compile(cfg, False), 0, device)
    m2 = mem.allocated()
    held.update(diffusers=m1 - m0, actor=m2 - m1)
    prompts = [f"a photo of object {i}" for i in range(b)]

    def diffusers_loop() -> None:
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(b)]
        with torch.no_grad():
            pipe(prompts, height=args.size, width=args.size, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, generator=gens, output_type="pt", **extra)

    sides: dict[str, Callable[[], object]] = {
        "diffusers": diffusers_loop,
        "actor": lambda: actor.sample_batch(b),
    }
    first: dict[str, float] = {}
    if args.compile:
        compiled = build_actor(with_compile(cfg, True), 1, device)
        held["actor_compiled"] = mem.allocated() - m2
        sides["actor_compiled"] = lambda: compiled.sample_batch(b)
        first["actor_compiled"] = timed_call(sides["actor_compiled"], device).seconds  # compiles
    # warm-up (and a second compiled call: any recompile), then the timed runs
    first = alternate(sides, 0, device=device).first | first
    sample_s0 = actor.stats.sample_s
    timings = alternate(sides, args.repeats, warmup=0, device=device)
    sampler_s = (actor.stats.sample_s - sample_s0) / args.repeats  # without the reward model
    med = timings.medians()
    out = {
        "timings": timings,
        "diffusers_img_s": b / med["diffusers"],
        "actor_img_s": b / med["actor"],
        "actor_sampler_img_s": b / sampler_s,
        "actor_vs_diffusers": med["diffusers"] / med["actor"],
        "sampler_vs_diffusers": med["diffusers"] / sampler_s,
        "actor_compiled_img_s": None,
        "compiled_vs_eager": None,
        "compile_first_call_s": None,
        "peak": {n: held[n] + timings.extra_bytes[n] for n in sides},
    }
    if args.compile:
        out.update(
            actor_compiled_img_s=b / med["actor_compiled"],
            compiled_vs_eager=med["actor"] / med["actor_compiled"],
            compile_first_call_s=first["actor_compiled"],
        )
    return out  # what it built is freed with this frame


def learner_phase(cfg: RunConfig, args: argparse.Namespace, device, mem: Memory) -> dict:
    """One learner step (critic on, and off) against a plain LoRA step doing the same network
    work: the learner's minibatches, as many forward+backward passes as it trains transitions."""
    m0 = mem.allocated()
    learner = build_learner(cfg, device=device)
    held = mem.allocated() - m0  # the model, LoRA, critic and its CLIP text tower
    c = learner.c
    model_held = sum(tensor_bytes(m) for m in c.modules())  # no critic
    off_cfg = cfg.model_copy(update={"critic": cfg.critic.model_copy(update={"enabled": False})})
    ddpo = Learner(off_cfg, learner.c)  # the same network and LoRA parameters, no critic
    batch = synthetic_batch(learner.c, args.batch, args.steps, args.guidance,
                            keep_steps=cfg.sampler.keep_steps, size=args.size,
                            eta=cfg.sampler.eta)
    c.set_timesteps(args.steps)
    eligible = c.step_std(batch.timesteps.to(device), batch.sampler.eta)
    k = batch.timesteps.shape[1]
    n = min(cfg.learner.train_steps or k, int((eligible >= cfg.learner.min_train_std).sum(1).min()))
    sides: dict[str, Callable[[], object]] = {
        "plain": plain_lora_step(
            learner, batch, minibatch=cfg.learner.minibatch_size, passes=n
        ),
        "learner": lambda: learner.step(batch),
        "critic_off": lambda: ddpo.step(batch),
    }
    # warm-up: optimiser state, kernels, the critic's text cache
    timings = alternate(sides, args.repeats, device=device)
    med = timings.medians()
    own = {"plain": model_held, "learner": held, "critic_off": model_held}
    out = {
        "timings": timings,
        "plain_step_s": med["plain"],
        "learner_step_s": med["learner"],
        "critic_off_step_s": med["critic_off"],
        "learner_vs_plain": med["learner"] / med["plain"],
        "critic_off_vs_plain": med["critic_off"] / med["plain"],
        "transitions": n,
        "stored_states": k,
        "peak": {name: own[name] + timings.extra_bytes[name] for name in sides},
    }
    return out  # what it built is freed with this frame


def memory_phase(cfg: RunConfig, args: argparse.Namespace, device, mem: Memory) -> dict:
    """Each alone in the process, as on its own GPU: the actor sampling a batch, then the learner
    (batch sampled by its own UNet) taking a step. Peaks are the allocator's, above whatever the
    earlier phases left allocated (reported as `left_gib`; ~0)."""
    out = {}
    for name in ("actor", "learner"):
        mem.free()
        base = mem.allocated()
        if name == "actor":
            actor = build_actor(with_compile(cfg, False), 0, device)
            actor.sample_batch(cfg.sampler.batch_size)
            del actor
        else:
            learner = build_learner(cfg, device=device)
            batch = synthetic_batch(learner.c, cfg.learner.batch_size, args.steps, args.guidance,
                                    keep_steps=cfg.sampler.keep_steps, size=args.size,
                                    eta=cfg.sampler.eta)
            learner.step(batch)
            del learner, batch
        sync(device)
        reserved = torch.cuda.max_memory_reserved() - base
        out[name] = {
            "allocated_gib": mem.gib(torch.cuda.max_memory_allocated() - base),
            "reserved_gib": mem.gib(reserved),
            "left_gib": mem.gib(base),
            "fits_24gb": reserved <= BUDGET_BYTES,
        }
    mem.free()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=("sd1", "sd3"), default="sd1",
                    help="sd1: SD-1.5 shapes (configs/sd_forget_church.yaml); sd3: SD3.5 Medium "
                    "shapes (configs/sd3_forget_church.yaml)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny model, few steps, small batch: a smoke run that fits a CPU")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cpu")
    ap.add_argument("--batch", type=int, default=None, help="images per call (16; --quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (50; --quick 4)")
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                    help="model.dtype (float16 on CUDA, float32 on CPU)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="CFG weight (the scenario's: 7.5 for sd1, 4.5 for sd3)")
    ap.add_argument("--size", type=int, default=None,
                    help="image size in pixels, square (default: the model's, 512 for SD-1.5); "
                    "smaller checks the SD-1.5 architecture cheaply, its numbers are not SD-1.5's")
    ap.add_argument("--minibatch", type=int, default=None,
                    help="learner.minibatch_size (the scenario's 4 where it divides the batch)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of each (3; --quick 1)")
    ap.add_argument("--mem-batch", type=int, default=8,
                    help="batch of the memory check against 24 GB (CUDA only; 0 skips it)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time an actor with actors.compile=true (default: on, except "
                    "--quick on a CPU, where inductor's C++ build alone takes minutes)")
    args = ap.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 16)
    args.steps = args.steps or (4 if args.quick else 50)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.guidance is None:
        args.guidance = 4.5 if args.backbone == "sd3" else 7.5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.device == "auto":
        args.device = "cuda" if cuda else "cpu"
        if not cuda and not args.quick:
            sys.exit(
                "bench.micro.gpu_suite: no CUDA device visible. The full suite (SD-1.5 shapes, "
                "batch 16, 50 steps) is for a GPU; pass --quick for the tiny CPU smoke run, or "
                "--device cpu to force the full shapes on the CPU (hours; not GPU numbers)"
            )
    device = torch.device(args.device)
    if device.type == "cuda" and not cuda:
        sys.exit(f"bench.micro.gpu_suite: --device {args.device} but torch sees no CUDA device")
    args.dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    if args.compile is None:
        args.compile = not (args.quick and device.type == "cpu")
    if args.quick and device.type == "cpu":
        torch.set_num_threads(1)  # tiny models gain nothing from a second thread, and it spins
    gpu_numbers = device.type == "cuda" and not args.quick and not args.size
    model_name = MODEL_NAMES[(args.backbone, args.quick)]
    if not gpu_numbers:
        what = (f"--quick: the tiny model on {device}" if args.quick
                else f"--size {args.size}" if args.size else f"{model_name} on a CPU")
        print(f"NOT GPU NUMBERS ({what}): a run of the suite's code paths; its times and ratios "
              "say nothing about the GPU targets", flush=True)
    mem = Memory(device)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        say(f"building the {model_name} model with random weights")
        model, clip = build_models(Path(tmp), args.quick, args.backbone)
        cfg = suite_config(model, clip, args, args.batch)
        if trainable_steps(cfg, args.backbone) == 0:
            sys.exit(f"bench.micro.gpu_suite: with --steps {args.steps} no DDIM step has sigma >= "
                     f"learner.min_train_std = {cfg.learner.min_train_std}: the learner would "
                     "have nothing to train; use --steps 3 or more")
        print(f"model={model_name} device={device} "
              f"dtype={args.dtype} batch={args.batch} steps={args.steps} cfg={args.guidance} "
              f"size={args.size or 'default'} "
              f"keep={cfg.sampler.keep_steps} minibatch={cfg.learner.minibatch_size} "
              f"repeats={args.repeats}", flush=True)
        phase_s = {"build": time.perf_counter() - t_start}
        t0 = time.perf_counter()
        say("actor: plain diffusers loop, actor" + (", compiled actor" if args.compile else ""))
        actor = actor_phase(cfg, args, device, mem)
        mem.free()
        phase_s["actor"], t0 = time.perf_counter() - t0, time.perf_counter()
        say("learner: plain LoRA step, learner step, learner step with the critic off")
        learner = learner_phase(cfg, args, device, mem)
        mem.free()
        phase_s["learner"], t0 = time.perf_counter() - t0, time.perf_counter()
        mem_check = None
        if args.mem_batch and mem.cuda:
            say(f"memory: actor, then learner, each alone at batch {args.mem_batch}")
            mem_check = memory_phase(suite_config(model, clip, args, args.mem_batch), args,
                                     device, mem)
            phase_s["memory"] = time.perf_counter() - t0

    print_runs(actor["timings"], 15)
    print_runs(learner["timings"], 15)
    if mem_check is None:
        print("memory check: skipped" + ("" if mem.cuda else " (needs CUDA)"))
    else:
        for name, m in mem_check.items():
            print(f"memory, {name} alone at batch {args.mem_batch}: {m['allocated_gib']} GiB "
                  f"allocated, {m['reserved_gib']} GiB reserved (24 GB = "
                  f"{BUDGET_BYTES / GIB:.2f} GiB): {'fits' if m['fits_24gb'] else 'DOES NOT FIT'}")

    def r(x: float | None, nd: int = 3) -> float | None:
        return None if x is None else round(x, nd)

    result = {
        "gpu_numbers": gpu_numbers,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "model": model_name,
        "backbone": args.backbone,
        "dtype": args.dtype,
        "batch": args.batch,
        "steps": args.steps,
        "guidance": args.guidance,
        "size": args.size,
        "diffusers_img_s": r(actor["diffusers_img_s"]),
        "actor_img_s": r(actor["actor_img_s"]),
        "actor_sampler_img_s": r(actor["actor_sampler_img_s"]),
        "actor_compiled_img_s": r(actor["actor_compiled_img_s"]),
        "actor_vs_diffusers": r(actor["actor_vs_diffusers"]),
        "sampler_vs_diffusers": r(actor["sampler_vs_diffusers"]),
        "compiled_vs_eager": r(actor["compiled_vs_eager"]),
        "compile_first_call_s": r(actor["compile_first_call_s"], 1),
        "plain_step_s": r(learner["plain_step_s"], 4),
        "learner_step_s": r(learner["learner_step_s"], 4),
        "critic_off_step_s": r(learner["critic_off_step_s"], 4),
        "learner_vs_plain": r(learner["learner_vs_plain"]),
        "critic_off_vs_plain": r(learner["critic_off_vs_plain"]),
        "transitions": learner["transitions"],
        "stored_states": learner["stored_states"],
        "minibatch": cfg.learner.minibatch_size,
        "peak_gib": {n: mem.gib(v) for n, v in {**actor["peak"], **learner["peak"]}.items()},
        "mem_batch": args.mem_batch if mem_check is not None else None,
        "mem_check": mem_check,
        "fits_24gb": None if mem_check is None else all(m["fits_24gb"]
                                                        for m in mem_check.values()),
        "targets_met": None,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "phase_s": {k: round(v, 1) for k, v in phase_s.items()},
    }
    if gpu_numbers:
        ops = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__}
        result["targets_met"] = {
            f"{k} {op} {bound}": None if result[k] is None else ops[op](float(result[k]), bound)
            for k, (op, bound) in TARGETS.items()
        } | {"fits_24gb": result["fits_24gb"]}
    emit(result)


if __name__ == "__main__":
    main()
