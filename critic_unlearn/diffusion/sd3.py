"""The SD3-class policy: an SD3Transformer2DModel sampled as Flow-GRPO's SDE (flow_logprob.py).

Prompt encoding, the transformer call and classifier-free guidance are diffusers'
`StableDiffusion3Pipeline`'s own: the policy holds the pipeline and calls its `encode_prompt`,
so conditioning is what the stock pipeline (and the exported LoRA in it) will see.

One conditioning tensor per prompt. SD3 conditions on token embeddings (B, L, D) and a pooled
text embedding (B, P), P <= D. The policy packs them into one (B, L + 1, D) tensor, the pooled
vector in the last row's first P entries (zeros after), and unpacks it before the transformer.
The learner indexes rows, concatenates and expands conditionings as for SD-1.x, unaware of it.

The stochastic step is the flow ODE made an SDE with the same marginals; `eta` is its noise
level a (Flow-GRPO's default 0.7; 0 is diffusers' deterministic Euler step, with no density).
A missing T5 encoder (`text_encoder_3`) is allowed, as in diffusers: its tokens are zeros.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from torch import Tensor

from critic_unlearn.diffusion.contract import (
    EXPORT_SPECS,
    POLICY_SETTINGS,
    Policy,
    absent_parts,
)
from critic_unlearn.diffusion.ddim_logprob import Reduction
from critic_unlearn.diffusion.flow_logprob import (
    FlowStepOutput,
    flow_step_with_logprob,
    sde_sigma,
    step_sigmas,
)
from critic_unlearn.diffusion.policy import precision_context


@dataclass
class SD3Policy(Policy):
    """A StableDiffusion3Pipeline's parts as a Gaussian policy over flow states."""

    pipe: StableDiffusion3Pipeline
    model_id: str
    # T5 tokens, diffusers' default (zeros without T5); a model folder trained with another
    # count says so in POLICY_SETTINGS (the flow toy world: 0, no T5 tokens at all)
    max_sequence_length: int = 256

    family = "sd3"
    export_prefix = EXPORT_SPECS["sd3"].prefix
    pipeline_class = EXPORT_SPECS["sd3"].pipeline

    def __post_init__(self) -> None:
        cfg = self.pipe.transformer.config
        if cfg.pooled_projection_dim > cfg.joint_attention_dim:
            raise ValueError(
                f"transformer.pooled_projection_dim {cfg.pooled_projection_dim} > "
                f"joint_attention_dim {cfg.joint_attention_dim}: the pooled embedding cannot "
                "ride in the conditioning tensor's last row"
            )

    # parts, as the contract and the pipeline name them
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def vae(self) -> torch.nn.Module:  # type: ignore[override]
        return self.pipe.vae

    @property
    def scheduler(self) -> FlowMatchEulerDiscreteScheduler:  # type: ignore[override]
        return self.pipe.scheduler

    @property
    def latent_channels(self) -> int:
        return self.denoiser.config.in_channels

    def modules(self) -> list[torch.nn.Module]:
        names = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if m is not None]

    def reference_pipeline(self) -> StableDiffusion3Pipeline:
        """diffusers' own pipeline over these very modules: what benches time the actor against."""
        return self.pipe

    @property
    def default_size(self) -> int:
        return self.denoiser.config.sample_size * self.vae_scale_factor

    # conditioning
    @torch.no_grad()
    def encode(self, texts: list[str], soft_tokens=None) -> Tensor:
        if soft_tokens is not None and any(v is not None for v in soft_tokens):
            raise ValueError("soft prompts (adversarial soft tokens) are built for SD-1.x's "
                             "CLIP text encoder only; the sd3 policy cannot take them")
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(texts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
        )
        return pack(embeds, pooled)

    # the chain
    def set_timesteps(self, num_steps: int) -> Tensor:
        self.scheduler.set_timesteps(num_steps, device=self.device)
        return self.scheduler.timesteps

    def predict(self, latents, timesteps, cond, uncond, guidance_scale) -> Tensor:
        """The guided velocity, as StableDiffusion3Pipeline computes it (one doubled batch)."""
        t = timesteps.expand(latents.shape[0]) if timesteps.ndim == 0 else timesteps
        guided = uncond is not None and guidance_scale != 1.0
        if guided:
            latents, t, cond = (torch.cat([latents, latents]), torch.cat([t, t]),
                                torch.cat([uncond, cond]))
        embeds, pooled = unpack(cond, self.denoiser.config.pooled_projection_dim)
        with precision_context(latents.device, self.compute_dtype):
            v = self.denoiser(hidden_states=latents, timestep=t, encoder_hidden_states=embeds,
                              pooled_projections=pooled, return_dict=False)[0]
        if not guided:
            return v
        v_u, v_c = v.chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    def step(self, latents, timesteps, cond, uncond, *, guidance_scale, eta, prev_sample=None,
             generator=None, variance_noise=None, reduction: Reduction = "sum") -> FlowStepOutput:
        v = self.predict(latents, timesteps, cond, uncond, guidance_scale)
        return flow_step_with_logprob(
            self.scheduler, v.float(), timesteps, latents, eta, generator=generator,
            prev_sample=prev_sample, variance_noise=variance_noise, reduction=reduction,
        )

    def step_std(self, timesteps: Tensor, eta: float) -> Tensor:
        """The SDE step's std at each timestep (any shape), as `step` computes it."""
        flat = timesteps.reshape(-1).float()
        sigma, sigma_next = step_sigmas(self.scheduler, flat, flat.shape[0])
        g = sde_sigma(self.scheduler, sigma, eta)
        return (g * torch.sqrt(sigma - sigma_next)).reshape(timesteps.shape)

    def decode(self, latents: Tensor) -> Tensor:
        vae = self.vae
        z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z).sample


def pack(embeds: Tensor, pooled: Tensor) -> Tensor:
    """(B, L, D) token embeddings + (B, P) pooled -> (B, L + 1, D), pooled zero-padded."""
    row = torch.nn.functional.pad(pooled, (0, embeds.shape[-1] - pooled.shape[-1]))
    return torch.cat([embeds, row[:, None].to(embeds.dtype)], dim=1)


def unpack(cond: Tensor, pooled_dim: int) -> tuple[Tensor, Tensor]:
    """The inverse of `pack`: (B, L, D) token embeddings, (B, P) pooled."""
    return cond[:, :-1], cond[:, -1, :pooled_dim]


def load_sd3(model: str, *, revision: str | None, dtype: str, device, local_files_only: bool
             ) -> SD3Policy:
    """Load a StableDiffusion3Pipeline folder or hub id as the sd3 policy, frozen."""
    from critic_unlearn.diffusion.loading import DTYPES, ModelLoadError

    absent = absent_parts("sd3", model)  # a folder saved without T5 loads without it
    try:
        pipe = StableDiffusion3Pipeline.from_pretrained(
            model, revision=revision, dtype=DTYPES[dtype], local_files_only=local_files_only,
            **absent,
        )
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
        raise ModelLoadError(
            f"could not load SD3-class model {model!r} ({first}); download it where there is "
            "internet (`hf download MODEL --local-dir DIR`) and set model.pretrained=DIR"
        ) from None
    pipe.to(device)
    settings = Path(model) / POLICY_SETTINGS
    max_len = json.loads(settings.read_text())["max_sequence_length"] if settings.is_file() else 256
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        m = getattr(pipe, name, None)
        if m is not None:
            m.requires_grad_(False)
            m.eval()
    pipe.set_progress_bar_config(disable=True)
    return SD3Policy(pipe, model_id=model, max_sequence_length=max_len)
