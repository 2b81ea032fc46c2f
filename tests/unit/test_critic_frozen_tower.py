"""A new critic's frozen image tower is the reward CLIP's tower from the first call on: before
any train() / eval() (a learner's first step, pretraining's inputs) it computes the reward CLIP's
features, and its BatchNorm statistics do not move."""

from __future__ import annotations

import pytest
import torch

from critic_unlearn.config import CriticConfig
from critic_unlearn.learner.critic import Critic
from critic_unlearn.rewards.preprocess import clip_pixels
from tests.unit._clip_fixtures import tiny_clip


@pytest.mark.parametrize("tower", ["resnet", "vit"])
def test_a_new_critics_frozen_tower_is_the_reward_clips_batchnorm_included(tmp_path, tower):
    clip = tiny_clip(tmp_path, tower)
    critic = Critic.from_clip(clip, CriticConfig(hidden=16, reward_feature=False))
    before = {k: v.clone() for k, v in critic.visual.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(8, 3, 32, 32, generator=g) * 2 - 1)
    x = critic.inputs(pixels, lambda z: z)
    with torch.no_grad():
        clip.model.visual.eval()
        want = clip.model.visual(clip_pixels((pixels + 1) / 2, clip.preprocess_cfg))
    torch.testing.assert_close(x, want.float(), atol=1e-6, rtol=0)
    after = critic.visual.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    critic.train()
    assert not critic.visual.training  # frozen: eval mode in train() too
