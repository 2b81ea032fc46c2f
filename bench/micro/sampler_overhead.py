"""Our sampling loop (log-probs + kept latents) vs diffusers' own pipeline call.

Same model, prompts, steps, batch, CFG and seeds, alternating runs in one process; prints the
medians and, last, one JSON line with `ratio` = ours / diffusers (target <= 1.10).

    python -m bench.micro.sampler_overhead                 # tiny random model, CPU
    python -m bench.micro.sampler_overhead --sd15          # SD-1.5 shapes, random weights (GPU)
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from diffusers import StableDiffusionPipeline

from bench.harness import alternate, emit, print_runs
from bench.models import sd15_shaped_model
from critic_unlearn.diffusion.loading import SDComponents, load_components
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.diffusion.tiny import build_tiny_model
from critic_unlearn.types import SamplerSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true", help="SD-1.5 shapes, random weights")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "float16" if device.type == "cuda" else "float32"
    batch = args.batch or (16 if args.sd15 else 8)
    steps = args.steps or (50 if args.sd15 else 20)

    with tempfile.TemporaryDirectory() as tmp:
        path = (
            sd15_shaped_model(tmp + "/sd15") if args.sd15 else str(build_tiny_model(tmp + "/tiny"))
        )
        comps: SDComponents = load_components(path, dtype=dtype, device=device)
        pipe = StableDiffusionPipeline(
            comps.vae,
            comps.text_encoder,
            comps.tokenizer,
            comps.unet,
            comps.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
    prompts = [f"a photo of object {i}" for i in range(batch)]
    specs = [PromptSpec(f"p{i}", p) for i, p in enumerate(prompts)]
    settings = SamplerSettings(num_steps=steps, eta=1.0, guidance_scale=args.guidance)

    def ours() -> None:
        sample_trajectories(comps, specs, list(range(batch)), settings)

    def theirs() -> None:
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
        with torch.no_grad():
            pipe(
                prompts,
                num_inference_steps=steps,
                guidance_scale=args.guidance,
                eta=1.0,
                generator=gens,
                output_type="pt",
            )

    # the order the runs alternate in: diffusers, then ours
    timings = alternate({"diffusers": theirs, "ours": ours}, args.repeats, device=device)
    med = timings.medians()
    print(
        f"model={'sd15-shapes' if args.sd15 else 'tiny'} device={device} batch={batch} "
        f"steps={steps} cfg={args.guidance}"
    )
    print_runs(timings)
    emit(
        {
            "ratio": round(med["ours"] / med["diffusers"], 4),
            "ours_s": round(med["ours"], 4),
            "diffusers_s": round(med["diffusers"], 4),
            "device": str(device),
            "batch": batch,
            "steps": steps,
            "model": "sd15-shapes" if args.sd15 else "tiny",
        }
    )


if __name__ == "__main__":
    main()
