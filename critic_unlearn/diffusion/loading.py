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

from critic_unlearn import sources

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelLoadError(RuntimeError):
    """The model could not be found or read; the message says where we looked and what to do."""


@dataclass
class SDComponents:
    """The five parts of a Stable Diffusion model, ready to sample with."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    model_id: str

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor


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
            "at a folder in diffusers layout (with unet/, vae/, text_encoder/, tokenizer/, "
            "scheduler/) or a hub id"
        )
    missing = [p for p in PARTS if not (root / p).is_dir()]
    if missing:
        raise ModelLoadError(
            f"model.pretrained: model folder {str(root)!r} lacks {', '.join(missing)}; it must be "
            "in diffusers layout (save it with StableDiffusionPipeline.save_pretrained)"
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
