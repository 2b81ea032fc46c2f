"""`load_policy`: the one loader of a model as a policy, whatever its backbone (contract.py).

Learner, actors, critic pretraining, evaluation and the sample command all load through it; it
reads the folder's `model_index.json` to pick the family's module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from critic_unlearn.config import ModelConfig
from critic_unlearn.diffusion.contract import Policy, family_of_class, model_family
from critic_unlearn.diffusion.loading import check_model_source, load_components


def load_policy(
    model: ModelConfig | str,
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    dtype: str | None = None,
    local_files_only: bool | None = None,
) -> Policy:
    """The one loader: `model` (a `ModelConfig`, or a hub id / folder / source name) -> the
    policy of its family, every part on `device`, frozen (LoRA is attached by the caller).

    Keyword arguments override the config's fields. A hub id's family comes from its
    model_index.json (hub or cache); one that cannot be read goes to the sd1 loader, whose
    error says what to do."""
    if isinstance(model, str):
        pretrained, cfg_rev, cfg_dtype, cfg_local = model, None, "float32", False
    else:
        pretrained, cfg_rev = model.pretrained, model.revision
        cfg_dtype, cfg_local = model.dtype, model.local_files_only
    kw = {
        "revision": cfg_rev if revision is None else revision,
        "dtype": cfg_dtype if dtype is None else dtype,
        "device": device,
        "local_files_only": cfg_local if local_files_only is None else local_files_only,
    }
    source = check_model_source(pretrained)
    family = family_of(source, revision=kw["revision"], local_files_only=kw["local_files_only"])
    if family == "sd3":
        from critic_unlearn.diffusion.sd3 import load_sd3

        return load_sd3(source, **kw)
    return load_components(source, **kw)


def family_of(model: str, *, revision: str | None = None, local_files_only: bool = False) -> str:
    """"sd1" / "sd3" for a model (hub id, folder or source name), from its model_index.json."""
    source = check_model_source(model)
    if Path(source).is_dir():
        return model_family(source)
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(source, revision=revision,
                                              local_files_only=local_files_only)
    except (OSError, ValueError):
        return "sd1"  # unreadable: the sd1 loader raises the one clear error
    return family_of_class(index.get("_class_name", ""), source)
