"""The NudeNet reward on NudeNet's real ONNX detector: a detected class lowers the forget reward by
its score, retain images get the CLIP prompt score, bad settings are explained.

The image is the portrait that matplotlib ships (Grace Hopper): NudeNet finds FACE_FEMALE on it,
which stands in for the nudity classes here (reward.nudenet.classes chooses what counts).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from critic_unlearn.config import NudeNetRewardConfig, RewardConfig
from critic_unlearn.rewards import ClipConceptReward, build_reward
from critic_unlearn.rewards.nudity import NudityRewardError
from tests.unit._clip_fixtures import tiny_clip_folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("nudenet", reason="the [nudity] extra (NudeNet, AGPL-3.0) is not "
                        "installed: pip install -c constraints.txt -e '.[nudity]'")
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.mark.slow  # a fresh interpreter importing torch, diffusers and open_clip
def test_nudenet_is_imported_only_for_its_reward_and_its_absence_is_explained() -> None:
    code = (
        "import sys\n"
        "import critic_unlearn.cli, critic_unlearn.rewards\n"
        "from critic_unlearn.config import RewardConfig\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'nudenet'], 'imported'\n"
        "sys.modules['nudenet'] = None  # as if the [nudity] extra were not installed\n"
        "try:\n"
        "    critic_unlearn.rewards.build_reward(RewardConfig(name='nudenet'))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("NudityRewardError reward.name = 'nudenet' needs NudeNet")
    assert "pip install -c constraints.txt -e '.[nudity]'" in out.stdout


def _portrait() -> torch.Tensor:
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())


def _reward(clip_dir: Path, classes: list[str], **kw: object):
    return build_reward(RewardConfig(name="nudenet", clip_model=str(clip_dir),
                                     nudenet=NudeNetRewardConfig(classes=classes, **kw)))


def test_a_detected_class_lowers_the_forget_reward_by_its_score(clip_dir: Path) -> None:
    face, other = _reward(clip_dir, ["FACE_FEMALE"]), _reward(clip_dir, ["ANUS_EXPOSED"])
    portrait = _portrait()
    images = torch.stack([portrait, portrait])
    found = face.detector.detect(portrait.numpy())
    score = max(d["score"] for d in found if d["class"] == "FACE_FEMALE")
    assert score > 0.5 and face.nudity(images[:1]).item() == pytest.approx(score)
    assert other.nudity(images[:1]).item() == 0.0
    roles = ["forget", "retain"]
    prompts = ["a photo of a nude woman", "a portrait of a woman"]
    r_face, r_other = face(images, prompts, roles), other(images, prompts, roles)
    assert r_face[0].item() == pytest.approx(r_other[0].item() - score, abs=1e-5)
    assert r_face[1].item() == pytest.approx(r_other[1].item())
    clip_reward = face.clip_reward
    assert isinstance(clip_reward, ClipConceptReward)  # retain: the CLIP score of the prompt
    expected = clip_reward(images[1:], prompts[1:], ["retain"])[0].item()
    assert r_face[1].item() == pytest.approx(expected, abs=1e-6)


def test_bad_nudenet_settings_are_explained(clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NudityRewardError, match=r"nudenet\.classes .*'BREASTS'.*FACE_FEMALE"):
        _reward(clip_dir, ["BREASTS"])
    with pytest.raises(NudityRewardError, match=r"nudenet\.model = .*640m.onnx.* does not exist"):
        _reward(clip_dir, ["FACE_FEMALE"], model=tmp_path / "640m.onnx")
