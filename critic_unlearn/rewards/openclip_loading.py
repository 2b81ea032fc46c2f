"""Load an open_clip model: a built-in name + pretrained tag, an `hf-hub:` id, or a local folder.

A local folder holds `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...}, the
layout open_clip itself reads) and one `.safetensors` file, so nothing is unpickled. Offline
machines point `reward.clip_model` at such a folder; `save_open_clip` writes one. A source name
registered in `critic_unlearn.sources` (e.g. the embedded "toyworld") stands for such a folder.
open_clip is imported when a model is loaded, not with this module (the CLI imports
`ClipLoadError` for every command, `--help` included).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from critic_unlearn import sources

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


class ClipLoadError(RuntimeError):
    """The CLIP model could not be found or read; the message says what to do."""


@dataclass
class LoadedClip:
    """An open_clip model in eval mode with its tokenizer and image preprocessing settings."""

    model: nn.Module  # open_clip CLIP / CustomTextCLIP: encode_image, encode_text, visual
    tokenizer: Any  # callable: list[str] -> (N, context_length) int64 token ids
    preprocess_cfg: dict[str, Any]  # size, mean, std, interpolation, resize_mode, fill_color
    name: str  # what the model was loaded from, for messages and manifests
    model_cfg: dict[str, Any] | None = None  # open_clip architecture config, when known

    @cached_property
    def embed_dim(self) -> int:
        """Width of the joint image/text embedding space."""
        with torch.no_grad():
            return int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "initialized randomly" before we load the folder's weights ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def _how_to_fix() -> str:
    return (
        "On a machine without internet, save it where there is one with `from "
        "critic_unlearn.rewards.openclip_loading import load_open_clip, save_open_clip; "
        "save_open_clip(load_open_clip(NAME, TAG), DIR)`, copy DIR here and set "
        "reward.clip_model=DIR"
    )


def _load_folder(root: Path, device: str | torch.device) -> LoadedClip:
    import open_clip

    if not root.is_dir():
        raise ClipLoadError(
            f"CLIP folder {str(root)!r} does not exist; point reward.clip_model at a folder "
            f"holding {CONFIG_NAME} and a .safetensors file (write one with save_open_clip)"
        )
    config_path = root / CONFIG_NAME
    weights = sorted(root.glob("*.safetensors"))
    missing = [CONFIG_NAME] * (not config_path.is_file()) + ["a .safetensors file"] * (not weights)
    if missing:
        raise ClipLoadError(
            f"CLIP folder {str(root)!r} lacks {' and '.join(missing)}; it must hold both (write "
            "one with save_open_clip; .bin/.pt weights are refused since they need unpickling)"
        )
    try:
        config = json.loads(config_path.read_text())
        model_cfg = config["model_cfg"]
    except (ValueError, KeyError) as e:
        raise ClipLoadError(
            f"{str(config_path)!r} is not an open_clip config ({type(e).__name__}: {e}); it must "
            'be JSON like {"model_cfg": {...}, "preprocess_cfg": {...}}'
        ) from None
    chosen = root / WEIGHTS_NAME if (root / WEIGHTS_NAME).is_file() else weights[0]
    spec = f"local-dir:{root}"
    quiet = _DropRandomInitWarning()  # the weights are loaded right after creation
    logging.getLogger().addFilter(quiet)
    try:
        # pretrained_text=False: an HF text tower must not be fetched; the folder has its weights
        model = open_clip.create_model(
            spec, load_weights=False, pretrained_text=False, device="cpu"
        )
        open_clip.load_checkpoint(model, str(chosen), strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClipLoadError(
            f"could not build the open_clip model in {str(root)!r} from {chosen.name}: {first}; "
            f"check that {CONFIG_NAME} matches the weights"
        ) from None
    finally:
        logging.getLogger().removeFilter(quiet)
    return _finish(model, open_clip.get_tokenizer(spec), str(root), model_cfg, device)


def _finish(
    model: nn.Module, tokenizer: Any, name: str, model_cfg: dict | None, device: str | torch.device
) -> LoadedClip:
    import open_clip

    model.eval().requires_grad_(False).to(device)
    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    return LoadedClip(model, tokenizer, preprocess, name, model_cfg)


def load_open_clip(
    name: str, pretrained: str | None = None, device: str | torch.device = "cpu"
) -> LoadedClip:
    """Load `name` (built-in + `pretrained` tag, `hf-hub:ID`, local folder, or source name)."""
    import open_clip

    if sources.is_source("reward_clip", name):
        return _load_folder(Path(sources.resolve("reward_clip", name)), device)
    if name.startswith("local-dir:"):
        name = name[len("local-dir:") :]
    if _looks_local(name):
        return _load_folder(Path(name).expanduser(), device)
    if not name.startswith("hf-hub:") and open_clip.get_model_config(name) is None:
        raise ClipLoadError(
            f"reward.clip_model = {name!r} is neither an open_clip model name nor an existing "
            "folder; use a name from open_clip.list_models() (e.g. 'ViT-B-32' with "
            "reward.clip_pretrained='openai'), 'hf-hub:ORG/REPO', or a local folder"
        )
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device="cpu")
    except (RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise ClipLoadError(
            f"could not load open_clip model {name!r} with pretrained={pretrained!r} ({first}): "
            "it could not be downloaded nor found in the local cache. " + _how_to_fix()
        ) from None
    model_cfg = None if name.startswith("hf-hub:") else open_clip.get_model_config(name)
    return _finish(model, open_clip.get_tokenizer(name), name, model_cfg, device)


def save_open_clip(clip: LoadedClip, folder: str | Path) -> Path:
    """Write `clip` as a local folder (config JSON + safetensors) that `load_open_clip` reads."""
    if clip.model_cfg is None:
        raise ClipLoadError(
            f"cannot save CLIP {clip.name!r}: its architecture config is unknown (hf-hub models "
            "carry it in their repo's open_clip_config.json; copy that file instead)"
        )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in clip.preprocess_cfg.items()}
    config = {"model_cfg": clip.model_cfg, "preprocess_cfg": preprocess}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    return out
