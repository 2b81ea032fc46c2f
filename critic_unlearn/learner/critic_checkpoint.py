"""A pretrained critic's checkpoint: what `critic.init` loads (written by training/critic_pretrain).

The file is a training checkpoint (`learner/checkpoint.py`: safetensors, JSON tree, checksum, no
pickle) holding the critic's weights (with the fixed affine of its raw-reward targets) and a JSON
meta (kind, architecture, explained variance per timestep, cost). It loads only into a
critic of the same architecture; anything else is one clear error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from critic_unlearn.config import CriticConfig
from critic_unlearn.learner.checkpoint import load_checkpoint
from critic_unlearn.learner.critic import Critic

KIND = "critic-pretrain/3"  # 2: raw-reward targets through a fixed affine; 3: the frozen tower
# in eval mode from the start (BatchNorm statistics no longer moved by the pretraining inputs)
# critic settings that change the network: a checkpoint loads only into the same architecture
ARCH_FIELDS = ("input", "timestep_input", "fusion", "hidden", "timestep_dim", "train_image_tower",
               "reward_feature", "latent_channels")


def load_pretrained(path: str | Path, critic: Critic, cc: CriticConfig) -> dict:
    """Load a pretrained critic into `critic` (same architecture, else a clear error); its
    meta."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"critic.init = {str(path)!r} does not exist; write one with `critic-unlearn critic "
            "pretrain CONFIG`, or set critic.init = auto"
        )
    state = load_checkpoint(path)
    meta = json.loads(state.get("meta", "{}"))
    if meta.get("kind") != KIND:
        raise ValueError(
            f"critic.init = {str(path)!r} is not a pretrained critic checkpoint of this version "
            f"(kind {meta.get('kind')!r}, expected {KIND!r}); pretrain it again with "
            "`critic-unlearn critic pretrain`, or set critic.init = auto"
        )
    want = {f: getattr(cc, f) for f in ARCH_FIELDS}
    if meta.get("critic") != want:
        raise ValueError(
            f"critic.init = {str(path)!r} was pretrained with critic settings {meta.get('critic')}"
            f", this run has {want}; pretrain for these settings or set critic.init = auto"
        )
    critic.load_state_dict(state["critic"])
    return meta
