"""The timestep-aware critic V(x_t, t, c) ~ E[r | x_t, c] (docs/algorithm.md, section 3).

A copy of the reward CLIP's image tower reads the state as pixels (the noisy latent decoded by the
VAE, or with `input = "x0_pred"` the predicted clean latent decoded); a sinusoidal timestep
embedding and the prompt's CLIP text embedding condition an MLP head, by concatenation or FiLM.

Critic off (`critic.enabled = False`) builds no critic: the learner then broadcasts the terminal
advantage r - mean to every step (DDPO). CLIP ResNet towers have BatchNorm: its statistics stay
frozen at the reward CLIP's (`train()` keeps BatchNorm layers in eval mode), so the values that
enter advantages and the values the critic is trained on come from one and the same function.

The learner decodes each stored state once per step (`inputs`) and reuses the preprocessed
pixels for values and every critic update (`score`).

What it predicts: the raw reward, through a fixed affine set once from the pretraining rewards
(`set_reward_affine`; the head's output is in those units, `score` returns reward units). The
target then never moves under the critic, unlike per-prompt z-scores from running windows; the
learner maps values through the tracker's current per-prompt affine when it forms advantages.

With `reward_feature` the head also reads the reward model's score of the decoded input state
(`inputs(..., reward=...)` appends it to the frozen image features), added to the output with a
learned weight per timestep: near t = 0 the state is the final image up to sigma ~ 0.02 and
that score is nearly the reward itself, so the critic predicts where prediction is possible.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from critic_unlearn.config import CriticConfig
from critic_unlearn.diffusion.sampling import pixels_to_images
from critic_unlearn.rewards.clip_text import TextEmbeddingCache
from critic_unlearn.rewards.openclip_loading import LoadedClip
from critic_unlearn.rewards.preprocess import clip_pixels

Decode = Callable[[Tensor], Tensor]  # latents (B, C, h, w) -> pixels (B, 3, H, W) in [-1, 1]
StateReward = Callable[[Tensor], Tensor]  # pixels (B, 3, H, W) in [-1, 1] -> (B,) raw rewards


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """(B,) timesteps -> (B, dim) [cos | sin] features at geometric frequencies (as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


class LatentEncoder(nn.Module):
    """x_t latents (B, C, h, w) -> (B, out_dim) features, trained with the head: the critic
    of `input = "latent"`, which skips the VAE decode and the CLIP tower (DPOK's critic reads
    latents too). Two strided convolutions and a mean pool: any latent size."""

    def __init__(self, channels: int, out_dim: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, out_dim, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, latents: Tensor) -> Tensor:
        return self.net(latents.float())


def _mlp(d_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
        nn.Linear(hidden, 1),
    )


class Critic(nn.Module):
    """`critic(pixels (B,3,H,W) in [-1,1], timesteps (B,), text_emb (B,D)) -> values (B,)`."""

    def __init__(
        self,
        visual: nn.Module,
        preprocess_cfg: dict,
        image_dim: int,
        text_dim: int,
        cfg: CriticConfig,
    ) -> None:
        super().__init__()
        if cfg.input == "latent":  # no pixels: a trainable encoder of the latents instead
            visual = LatentEncoder(cfg.latent_channels, image_dim)
        self.visual = visual  # open_clip image tower: (B, 3, S, S) -> (B, image_dim)
        self.train_image_tower = cfg.train_image_tower or cfg.input == "latent"
        self.visual.requires_grad_(self.train_image_tower)
        self.reward_feature = cfg.reward_feature
        # raw reward = head output * scale + shift; fixed once (set_reward_affine), saved with
        # the weights, so a checkpoint predicts in the units it was trained in
        self.register_buffer("reward_shift", torch.zeros(()))
        self.register_buffer("reward_scale", torch.ones(()))
        self.preprocess_cfg = dict(preprocess_cfg)
        self.input, self.fusion = cfg.input, cfg.fusion
        self.timestep_input, self.timestep_dim = cfg.timestep_input, cfg.timestep_dim
        h = cfg.hidden
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, h))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, h))
        self.time_mlp = (
            nn.Sequential(nn.Linear(cfg.timestep_dim, h), nn.SiLU(), nn.Linear(h, h))
            if cfg.timestep_input
            else None
        )
        n_cond = 1 + int(cfg.timestep_input)  # text, and the timestep when it is an input
        if cfg.fusion == "concat":
            self.film = None
            self.head = _mlp(h * (1 + n_cond), h)
        else:  # FiLM: the condition scales and shifts the image features; starts as identity
            self.film = nn.Sequential(nn.SiLU(), nn.Linear(h * n_cond, 2 * h))
            nn.init.zeros_(self.film[1].weight)
            nn.init.zeros_(self.film[1].bias)
            self.head = _mlp(h, h)
        # weight of the reward feature per timestep (a constant without the timestep input);
        # starts at 0: the head alone, until the fit says how far the feature can be trusted
        self.feature_gate = (
            (nn.Linear(cfg.timestep_dim, 1) if cfg.timestep_input else nn.Linear(1, 1))
            if cfg.reward_feature
            else None
        )
        if self.feature_gate is not None:
            nn.init.zeros_(self.feature_gate.weight)
            nn.init.zeros_(self.feature_gate.bias)
        self.train()  # frozen parts in eval mode before the first `inputs`, not after

    def set_reward_affine(self, shift: float, scale: float) -> None:
        """Fix the units of the head's output: raw reward = output * scale + shift."""
        if not scale > 0:
            raise ValueError(f"reward scale must be positive, got {scale}")
        self.reward_shift.fill_(float(shift))
        self.reward_scale.fill_(float(scale))

    def normalized(self, rewards: Tensor) -> Tensor:
        """Raw rewards (or values) -> the head's units, where the regression loss is taken."""
        return (rewards.float() - self.reward_shift) / self.reward_scale

    @classmethod
    def from_clip(cls, clip: LoadedClip, cfg: CriticConfig) -> Critic:
        """A critic whose image tower starts as a trainable copy of the reward CLIP's."""
        visual = copy.deepcopy(clip.model.visual).train()
        return cls(visual, clip.preprocess_cfg, clip.embed_dim, clip.embed_dim, cfg)

    def train(self, mode: bool = True) -> Critic:
        """Train mode everywhere except BatchNorm, whose running statistics stay frozen, and a
        frozen image tower, which is a fixed function of the state (eval mode throughout)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        if not self.train_image_tower:
            self.visual.eval()
        return self

    def preprocess(self, pixels: Tensor) -> Tensor:
        """Pixels (B,3,H,W) in [-1, 1] -> the image tower's normalised input (B,3,S,S)."""
        if self.input == "latent":
            return pixels.float()  # latents, read as they are
        return clip_pixels((pixels.float() + 1.0) / 2.0, self.preprocess_cfg)

    def forward(self, pixels: Tensor, timesteps: Tensor, text_emb: Tensor,
                reward: StateReward | None = None) -> Tensor:
        """V of pixels in [-1, 1] (or latents, with input = "latent")."""
        return self.score(self._features(pixels, reward), timesteps, text_emb)

    def _frozen_part(self, x: Tensor) -> Tensor:
        """With a frozen image tower its features are an input like the pixels: computed once."""
        if self.train_image_tower:
            return x
        with torch.no_grad():
            return self.visual(x).float()

    def score(self, x: Tensor, timesteps: Tensor, text_emb: Tensor) -> Tensor:
        """V in reward units from `inputs(...)`: preprocessed pixels (B,3,S,S), or with a frozen
        image tower its features (B, image_dim), plus the state's reward in the head's units as
        a last column with `reward_feature`; timesteps (B,) and text (B, D)."""
        b = x.shape[0]
        if timesteps.shape != (b,) or text_emb.ndim != 2 or text_emb.shape[0] != b:
            raise ValueError(
                f"critic expects pixels (B,3,H,W), timesteps (B,), text_emb (B,D); got "
                f"{tuple(x.shape)}, {tuple(timesteps.shape)}, {tuple(text_emb.shape)}"
            )
        feats, state_reward = x.float(), None
        if self.reward_feature:
            feats, state_reward = feats[:, :-1], feats[:, -1]
        if self.train_image_tower:
            feats = self.visual(x).float()
        img = self.image_proj(feats)  # (B, h)
        cond = [self.text_proj(text_emb.float())]
        temb = timestep_embedding(timesteps, self.timestep_dim)
        if self.time_mlp is not None:
            cond.append(self.time_mlp(temb))
        if self.film is None:
            out = self.head(torch.cat([img, *cond], dim=-1)).squeeze(-1)
        else:
            scale, shift = self.film(torch.cat(cond, dim=-1)).chunk(2, dim=-1)
            out = self.head(img * (1.0 + scale) + shift).squeeze(-1)
        if state_reward is not None:
            gate_in = temb if self.time_mlp is not None else torch.ones_like(temb[:, :1])
            out = out + self.feature_gate(gate_in).squeeze(-1) * state_reward
        return out * self.reward_scale + self.reward_shift

    def value(
        self,
        latents: Tensor,
        timesteps: Tensor,
        text_emb: Tensor,
        decode: Decode,
        x0_pred: Tensor | None = None,
        reward: StateReward | None = None,
    ) -> Tensor:
        """V from latents: decodes x_t (input "noisy") or `x0_pred` (input "x0_pred") first."""
        return self.score(self.inputs(latents, decode, x0_pred, reward), timesteps, text_emb)

    @torch.no_grad()
    def inputs(self, latents: Tensor, decode: Decode, x0_pred: Tensor | None = None,
               reward: StateReward | None = None) -> Tensor:
        """What `score` reads for these states: x_t (input "noisy") or `x0_pred` (input
        "x0_pred") decoded and preprocessed, and through the image tower when it is frozen;
        with `reward_feature`, the reward model's score of the decoded state appended.
        Only frozen parts run here (no gradients), so the result is computed once and reused by
        every critic update of a learner step."""
        if self.input == "x0_pred":
            if x0_pred is None:
                raise ValueError(
                    "critic.input = 'x0_pred' needs the predicted clean latents: pass x0_pred "
                    "(see predict_x0), or set critic.input = 'noisy'"
                )
            latents = x0_pred
        if self.input == "latent":
            return self._features(latents, None)
        return self._features(decode(latents), reward)

    def _features(self, pixels: Tensor, reward: StateReward | None) -> Tensor:
        x = self._frozen_part(self.preprocess(pixels))
        if not self.reward_feature:
            return x
        if reward is None:
            raise ValueError(
                "critic.reward_feature = true: pass reward (pixels -> raw rewards of the states' "
                "prompts), or set critic.reward_feature = false"
            )
        with torch.no_grad():
            r = self.normalized(reward(pixels).to(x.device))
        return torch.cat([x, r[:, None].to(x.dtype)], dim=1)


def predict_x0(
    latents: Tensor, noise_pred: Tensor, alphas_cumprod: Tensor, timesteps: Tensor
) -> Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) per sample (epsilon prediction)."""
    abar = alphas_cumprod.to(latents.device, torch.float32)[timesteps.long()]
    abar = abar.view(-1, *([1] * (latents.ndim - 1)))
    x0 = (latents.float() - (1.0 - abar).sqrt() * noise_pred.float()) / abar.sqrt()
    return x0.to(latents.dtype)


def state_reward(reward_model: Callable, prompts: list[str], roles: list[str]) -> StateReward:
    """The reward model as a function of decoded states whose prompts and roles are these."""

    def score(pixels: Tensor) -> Tensor:
        return reward_model(pixels_to_images(pixels), list(prompts), list(roles)).float()

    return score


def make_decode(policy) -> Decode:
    """A `decode` for Critic.value: the policy's latents -> pixels in [-1, 1] (its own VAE
    decode, shift and scale included)."""

    def decode(latents: Tensor) -> Tensor:
        return policy.decode(latents).float().clamp(-1.0, 1.0)

    return decode


def build_critic(cfg: CriticConfig, clip: LoadedClip) -> Critic | None:
    """The critic described by `cfg`, or None when `critic.enabled` is False (DDPO broadcast)
    or the values come from the oracle (critic.kind = oracle), which has nothing to train."""
    return Critic.from_clip(clip, cfg) if cfg.enabled and cfg.kind == "learned" else None


def text_embedder(clip: LoadedClip, cfg: CriticConfig) -> TextEmbeddingCache:
    """Prompt -> CLIP text embedding, each prompt encoded once (the critic's conditioning)."""
    return TextEmbeddingCache(clip, max_size=cfg.text_cache_size)
