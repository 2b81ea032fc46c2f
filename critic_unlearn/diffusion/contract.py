"""The policy contract: what a diffusion backbone offers everything outside `diffusion/`.

The learner, the actors, critic pretraining, evaluation, attacks and export talk to a `Policy`
only; none of them names a UNet or a transformer. A new backbone is one module here (its
`Policy` subclass) plus its tests, a line in `PIPELINE_CLASSES` and one in `load_policy`
(backbones.py). Today:

  sd1   `SDComponents` (loading.py): UNet2DConditionModel + CLIP text encoder + DDIM with eta > 0
  sd3   `SD3Policy` (sd3.py): SD3Transformer2DModel + CLIP text encoders + flow matching made an
        SDE (flow_logprob.py), the Flow-GRPO construction

One conditioning tensor per prompt. `encode` returns one (B, L, D) tensor whatever the backbone
needs besides the token embeddings (SD3's pooled text embedding rides in it, see sd3.py), so the
learner can index rows, concatenate and expand conditionings without knowing their parts.

One step function. `step` is how actors act (sample x_prev) and how the learner re-scores a
stored transition (give `prev_sample`): the same function both ways is what makes the PPO
ratio of a fresh batch exactly 1.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from critic_unlearn.diffusion.ddim_logprob import Reduction


class StepOutput(Protocol):
    """One policy step, as both backbones' step functions return it."""

    prev_sample: Tensor  # (B, C, H, W) the next state, in the latents' storage dtype
    log_prob: Tensor  # (B,) float32; 0 where std == 0 (a deterministic step has no density)
    mean: Tensor  # (B, C, H, W) float32 mean of the Gaussian step
    std: Tensor  # (B, 1, 1, 1) float32 its standard deviation
    pred_original_sample: Tensor  # (B, C, H, W) float32 the predicted clean latent x0_hat


class Policy(ABC):
    """A text-to-image diffusion model as an RL policy pi_theta(x_prev | x_t, c)."""

    family: str  # "sd1", "sd3": which module implements it
    # adversarial soft prompts (learned token vectors after BOS) need SD-1.x's one CLIP encoder
    soft_prompts: bool = False
    export_prefix: str  # the trainable module's key prefix in diffusers' LoRA files
    pipeline_class: str  # the diffusers pipeline that loads this model and its LoRA
    model_id: str
    vae: torch.nn.Module
    scheduler: object

    # ------------------------------------------------------------------ the trainable module

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The network LoRA adapts and the learner trains (a UNet, a transformer)."""

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @abstractmethod
    def modules(self) -> list[torch.nn.Module]:
        """Every network the policy holds (denoiser, VAE, text encoders): memory accounting."""

    @abstractmethod
    def reference_pipeline(self):
        """The stock diffusers pipeline over these very modules (benches' baseline)."""

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the policy computes in: its base weights' (LoRA weights are always fp32)."""
        from critic_unlearn.diffusion.policy import compute_dtype

        return compute_dtype(self.denoiser)

    # ------------------------------------------------------------------ shapes

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    @abstractmethod
    def latent_channels(self) -> int: ...

    @property
    @abstractmethod
    def default_size(self) -> int:
        """The image side the model was trained at, in pixels."""

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple:
        """(C, h, w) of one latent for an image of height x width pixels (default size)."""
        f = self.vae_scale_factor
        return (self.latent_channels, (height or self.default_size) // f,
                (width or self.default_size) // f)

    # ------------------------------------------------------------------ conditioning

    @abstractmethod
    def encode(self, texts: list[str], soft_tokens=None) -> Tensor:
        """(B, L, D) conditioning of `texts`; `soft_tokens[i]`, a (k, E) tensor, puts learned
        token vectors after BOS in prompt i (adversarial soft prompts) where a backbone can."""

    def empty_condition(self) -> Tensor:
        """(1, L, D) the empty prompt's conditioning: classifier-free guidance's unconditional."""
        return self.encode([""])

    # ------------------------------------------------------------------ the chain

    @abstractmethod
    def set_timesteps(self, num_steps: int) -> Tensor:
        """Set the scheduler to `num_steps` and return its timesteps (S,), noisiest first."""

    def initial_noise(self, shape: tuple, generators: list[torch.Generator]) -> Tensor:
        """x_T: one draw per generator (each trajectory's noise is its own seed's), scaled as
        the scheduler starts its chain, in the policy's compute dtype."""
        x = torch.stack([torch.randn(shape, generator=g, device=self.device,
                                     dtype=self.compute_dtype) for g in generators])
        # DDIM scales by its init_noise_sigma; flow matching starts at unit noise (no attribute)
        return x * getattr(self.scheduler, "init_noise_sigma", 1.0)

    @abstractmethod
    def predict(self, latents: Tensor, timesteps: Tensor, cond: Tensor, uncond: Tensor | None,
                guidance_scale: float) -> Tensor:
        """The network's guided output at (x_t, t): eps for sd1, the velocity for sd3. Computes
        under the policy's precision context; differentiable (ESD and soft prompts train
        through it)."""

    @abstractmethod
    def step(
        self,
        latents: Tensor,
        timesteps: Tensor,
        cond: Tensor,
        uncond: Tensor | None,
        *,
        guidance_scale: float,
        eta: float,
        prev_sample: Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: Tensor | None = None,
        reduction: Reduction = "sum",
    ) -> StepOutput:
        """Act (sample x_prev) or re-score (given `prev_sample`) one guided stochastic step
        with its exact log-probability. `eta` is the step's noise: DDIM's eta for sd1, the
        SDE's noise level a for sd3 (0: the deterministic step, no density)."""

    @abstractmethod
    def step_std(self, timesteps: Tensor, eta: float) -> Tensor:
        """The std of the step taken at each of `timesteps` (any shape) with noise `eta`: what
        `step` would use, without a network call (the learner skips near-deterministic steps)."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """(B, 3, H, W) pixels in [-1, 1] from latents (differentiable)."""


class ModelLoadError(RuntimeError):
    """The model could not be found or read; the message says where we looked and what to do."""


class UnknownBackbone(ModelLoadError):
    """The model names a pipeline no policy module implements."""


def model_family(folder: str | Path) -> str:
    """The family of a local model folder, from diffusers' `model_index.json` `_class_name`:
    which policy module loads it. A folder without model_index.json is read as sd1 (the layout
    this project has always loaded)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return "sd1"
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UnknownBackbone(f"{index}: not a JSON object ({e}); re-save the pipeline with "
                              "save_pretrained") from None
    return family_of_class(name, str(index))


def family_of_class(pipeline_class: str, where: str) -> str:
    """"sd1" / "sd3" for a diffusers pipeline class name read from `where`."""
    for family, classes in PIPELINE_CLASSES.items():
        if pipeline_class in classes:
            return family
    raise UnknownBackbone(
        f"{where}: _class_name {pipeline_class!r} is not a backbone this project can unlearn; "
        "supported: " + ", ".join(c for cs in PIPELINE_CLASSES.values() for c in cs)
    )


@dataclass(frozen=True)
class Export:
    """How a family's adapter is shipped: the trainable module's key prefix in diffusers' LoRA
    files, the pipeline that loads it, the diffusers mixin that writes the LoRA file, and the
    first names of the adapter's own keys (how an adapter tells its family)."""

    prefix: str
    pipeline: str
    lora_writer: str
    module_roots: tuple[str, ...]


EXPORT_SPECS = {
    "sd1": Export("unet", "StableDiffusionPipeline", "StableDiffusionLoraLoaderMixin",
                  ("down_blocks", "mid_block", "up_blocks")),
    "sd3": Export("transformer", "StableDiffusion3Pipeline", "SD3LoraLoaderMixin",
                  ("transformer_blocks",)),
}
# optional, beside model_index.json: how the policy was trained where diffusers' defaults differ
# (the flow toy world: {"max_sequence_length": 0}); copied into merged exports
POLICY_SETTINGS = "critic_unlearn_policy.json"


def family_of_adapter(keys) -> str:
    """The family whose denoiser an adapter's LoRA keys (peft's names) belong to."""
    roots = {k.split(".", 1)[0] for k in keys}
    found = [f for f, spec in EXPORT_SPECS.items() if roots & set(spec.module_roots)]
    if len(found) != 1:
        raise ValueError(
            f"the adapter's keys start with {sorted(roots)}: not one backbone's ("
            + "; ".join(f"{f}: {', '.join(s.module_roots)}" for f, s in EXPORT_SPECS.items())
            + "); was it trained by critic-unlearn?"
        )
    return found[0]
# pipeline classes whose saved folders hold a family's parts (img2img pipelines save the same)
PIPELINE_CLASSES = {
    "sd1": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
}


# parts a family's pipeline may be saved without (diffusers then conditions on zeros in SD3's
# T5 place); from_pretrained needs them named None
OPTIONAL_PARTS = {"sd1": (), "sd3": ("text_encoder_3", "tokenizer_3")}


def absent_parts(family: str, source: str) -> dict[str, None]:
    """{part: None} for each optional part a local folder lacks: from_pretrained's arguments."""
    root = Path(source)
    if not root.is_dir():
        return {}
    return {k: None for k in OPTIONAL_PARTS[family] if not (root / k).is_dir()}
