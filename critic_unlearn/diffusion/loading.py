"""Load a Stable-Diffusion-compatible model (UNet, VAE, text encoder, tokenizer, scheduler).

Every part goes through its library's own `from_pretrained`, from a hub id or a local folder in
diffusers layout. The scheduler is always DDIM (built from the model's scheduler config), because
the policy's log-probabilities are defined for DDIM with eta > 0. diffusers and transformers are
imported when a model is loaded, not with this module: the CLI imports `ModelLoadError` for
`--help` and config errors, which then take a second, not five.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from critic_unlearn import sources
from critic_unlearn.diffusion.contract import (  # noqa: F401 (ModelLoadError: its home)
    EXPORT_SPECS,
    ModelLoadError,
    Policy,
    UnknownBackbone,
    model_family,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# the folders each family's pipeline needs (SD3's third, T5 text encoder is optional)
FAMILY_PARTS = {
    "sd1": PARTS,
    "sd3": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
            "scheduler"),
}


@dataclass
class SDComponents(Policy):
    """The SD-1.x policy: the five parts of a Stable Diffusion model, ready to sample with.

    The policy is a guided DDIM step with eta > 0 (policy.py), its x0_hat DDIM's."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    model_id: str

    family = "sd1"
    soft_prompts = True
    export_prefix = EXPORT_SPECS["sd1"].prefix
    pipeline_class = EXPORT_SPECS["sd1"].pipeline

    @property
    def denoiser(self) -> UNet2DConditionModel:
        return self.unet

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, self.text_encoder]

    def reference_pipeline(self):
        """diffusers' StableDiffusionPipeline over these very modules and this DDIM scheduler:
        what benches time the actor against."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    def encode(self, texts: list[str], soft_tokens=None) -> Tensor:
        from critic_unlearn.diffusion.soft_prompt import encode_conditioning

        return encode_conditioning(self.tokenizer, self.text_encoder, texts, soft_tokens)

    def set_timesteps(self, num_steps: int) -> Tensor:
        self.scheduler.set_timesteps(num_steps, device=self.device)
        return self.scheduler.timesteps

    def predict(self, latents, timesteps, cond, uncond, guidance_scale) -> Tensor:
        from critic_unlearn.diffusion.policy import guided_noise, precision_context

        with precision_context(latents.device, self.compute_dtype):
            return guided_noise(self.unet, latents, timesteps, cond, uncond, guidance_scale)

    def step(self, latents, timesteps, cond, uncond, *, guidance_scale, eta, prev_sample=None,
             generator=None, variance_noise=None, reduction="sum"):
        from critic_unlearn.diffusion.policy import policy_step

        return policy_step(self.unet, self.scheduler, latents, timesteps, cond, uncond,
                           guidance_scale=guidance_scale, eta=eta, prev_sample=prev_sample,
                           generator=generator, variance_noise=variance_noise,
                           reduction=reduction)

    def step_std(self, timesteps: Tensor, eta: float) -> Tensor:
        from critic_unlearn.diffusion.ddim_logprob import step_std

        return step_std(self.scheduler, timesteps, eta)

    def decode(self, latents: Tensor) -> Tensor:
        vae = self.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample


def _looks_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).exists()


def check_model_source(model: str) -> str:
    """`model` as `load_components` will read it: a source name (`critic_unlearn.sources`, e.g.
    the embedded "toyworld") -> its folder, a local folder -> its expanded path (checked: it
    exists, with every part), a hub id unchanged. Cheap (no weights read): the Ray driver calls it
    before starting anything."""
    model = sources.resolve("model", model)  # an unbuilt world raises its own how-to-build error
    if not _looks_local(model):
        return model
    root = Path(model).expanduser()
    if not root.is_dir():
        raise ModelLoadError(
            f"model.pretrained: model folder {str(root)!r} does not exist; point model.pretrained "
            "at a folder in diffusers layout (SD-1.x: unet/, vae/, text_encoder/, tokenizer/, "
            "scheduler/; SD3: transformer/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/) "
            "or a hub id"
        )
    try:
        family = model_family(root)
    except UnknownBackbone as e:
        raise ModelLoadError(f"model.pretrained: {e}") from None
    missing = [p for p in FAMILY_PARTS[family] if not (root / p).is_dir()]
    if missing:
        pipeline = EXPORT_SPECS[family].pipeline
        raise ModelLoadError(
            f"model.pretrained: model folder {str(root)!r} lacks {', '.join(missing)}; it must be "
            f"in diffusers layout (save it with {pipeline}.save_pretrained)"
        )
    return str(root)


def load_components(
    model: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
) -> SDComponents:
    """Load all parts of `model` (hub id, local folder, or source name) onto `device`."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = check_model_source(model)
    kw = {"revision": revision, "local_files_only": local_files_only}
    torch_dtype = DTYPES[dtype]
    try:
        unet = UNet2DConditionModel.from_pretrained(
            model, subfolder="unet", torch_dtype=torch_dtype, **kw
        )
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=torch_dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(
            model, subfolder="text_encoder", dtype=torch_dtype, **kw
        )
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
        scheduler = DDIMScheduler.from_pretrained(model, subfolder="scheduler", **kw)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
        raise ModelLoadError(
            f"could not load model {model!r} ({first}); it is not a local folder, and the "
            "Hugging Face hub could not provide it (offline, not cached, or no such model). "
            "Download it where there is internet (`hf download MODEL --local-dir DIR`) and set "
            "model.pretrained=DIR"
        ) from None
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to(device)
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, model_id=model)
