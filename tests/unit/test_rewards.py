"""Rewards: CLIP concept reward, classifier reward, prompt sets, per-prompt standardisation."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
import torch.nn.functional as F
from _clip_fixtures import ColourClassifier, tiny_clip, tiny_clip_folder
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import save_file

from critic_unlearn.config import ClassifierRewardConfig, PromptsConfig, RewardConfig
from critic_unlearn.rewards import build_reward, build_stat_tracker
from critic_unlearn.rewards.classifier import ClassifierLoadError, load_classifier
from critic_unlearn.rewards.clip_concept import ClipConceptReward
from critic_unlearn.rewards.normalization import PerPromptStatTracker
from critic_unlearn.rewards.openclip_loading import ClipLoadError, load_open_clip
from critic_unlearn.rewards.preprocess import clip_pixels, uint8_to_unit
from critic_unlearn.rewards.prompts import PromptError, load_prompts, prompt_id


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"), "vit")


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


# --- loading -------------------------------------------------------------------------------


def test_local_folder_round_trips_weights_and_preprocess(tmp_path: Path) -> None:
    folder = tiny_clip_folder(tmp_path, "resnet", seed=3)
    clip = load_open_clip(str(folder))
    torch.manual_seed(3)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    original = open_clip.model.CLIP(**cfg["model_cfg"])
    for k, v in original.state_dict().items():
        torch.testing.assert_close(clip.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert clip.preprocess_cfg["mean"] == [0.48, 0.46, 0.41]
    assert clip.preprocess_cfg["size"] in (32, (32, 32))
    assert clip.tokenizer(["a red circle"]).shape == (1, 77)  # offline BPE tokenizer
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_missing_hub_model_offline_says_how_to_use_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ClipLoadError) as err:
        load_open_clip("ViT-B-32", "openai")
    msg = str(err.value)
    assert "'ViT-B-32'" in msg and "'openai'" in msg and "reward.clip_model=DIR" in msg


def test_unknown_name_and_incomplete_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ClipLoadError, match="neither an open_clip model name nor an existing"):
        load_open_clip("ViT-Nope-7")
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_open_clip(str(tmp_path / "absent"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "open_clip_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ClipLoadError, match="lacks open_clip_config.json and a .safetensors"):
        load_open_clip(str(tmp_path / "half"))


# --- preprocessing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "mode", "atol"),
    [((32, 32), "shortest", 1e-6), ((48, 64), "shortest", 0.01), ((96, 96), "shortest", 0.01),
     ((48, 64), "squash", 0.01), ((64, 48), "longest", 0.01)],
)
def test_tensor_preprocess_matches_open_clip_transform(size, mode, atol) -> None:
    cfg = {"size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25],
           "interpolation": "bicubic", "resize_mode": mode, "fill_color": 0}
    # smooth images, so that PIL's and torch's bicubic kernels differ only slightly
    small = torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    x = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    ours = clip_pixels(uint8_to_unit(images), cfg)
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    theirs = torch.stack([transform(Image.fromarray(im.numpy())) for im in images])
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    # PIL and torch bicubic kernels differ by about 1/255 after resizing; equal without it
    assert (ours - theirs).abs().max() < atol / 0.2  # atol in [0, 1] pixel units


# --- clip_concept --------------------------------------------------------------------------


def test_clip_concept_equals_cosine_formula(clip_dir: Path) -> None:
    clip = load_open_clip(str(clip_dir))
    reward = ClipConceptReward(clip, "a red shape", "a grey shape", anchor_weight=0.5, batch_size=3)
    images = _images(5)
    prompts = ["a red circle", "a red square", "a blue circle", "a green square", "a red circle"]
    roles = ["forget", "forget", "retain", "retain", "forget"]
    r = reward(images, prompts, roles)
    assert r.shape == (5,) and r.dtype == torch.float32

    # independently: open_clip's own PIL preprocessing and encoders
    transform = image_transform_v2(
        PreprocessCfg(**clip.preprocess_cfg), is_train=False
    )
    pix = torch.stack([transform(Image.fromarray(im.numpy())) for im in images])
    with torch.no_grad():
        img = F.normalize(clip.model.encode_image(pix), dim=-1)
        txt = F.normalize(clip.model.encode_text(clip.tokenizer(
            ["a red shape", "a grey shape", *prompts])), dim=-1)
    expected = torch.empty(5)
    for i, role in enumerate(roles):
        if role == "forget":
            expected[i] = -img[i] @ txt[0] + 0.5 * (img[i] @ txt[1])
        else:
            expected[i] = img[i] @ txt[2 + i]
    torch.testing.assert_close(r, expected, atol=1e-5, rtol=1e-5)


def test_clip_concept_signs(clip_dir: Path) -> None:
    clip = load_open_clip(str(clip_dir))
    images, prompts = _images(4, seed=2), ["p0", "p1", "p2", "p3"]
    forget = ["forget"] * 4
    ab = ClipConceptReward(clip, "concept A", "anchor B", 1.0)(images, prompts, forget)
    ba = ClipConceptReward(clip, "anchor B", "concept A", 1.0)(images, prompts, forget)
    torch.testing.assert_close(ab, -ba)  # swapping concept and anchor flips the sign
    # with alpha = 0 a forget image is scored by minus its similarity to the concept: exactly
    # the negative of a retain image whose prompt is the concept
    only = ClipConceptReward(clip, "concept A", "anchor B", 0.0)(images, prompts, forget)
    retain = ClipConceptReward(clip, "x", "y")(images, ["concept A"] * 4, ["retain"] * 4)
    torch.testing.assert_close(only, -retain)
    assert retain.abs().max() <= 1.0 + 1e-6
    # more anchor weight raises forget rewards exactly when the image is like the anchor
    more = ClipConceptReward(clip, "concept A", "anchor B", 2.0)(images, prompts, forget)
    anchor_sim = ClipConceptReward(clip, "x", "y")(images, ["anchor B"] * 4, ["retain"] * 4)
    torch.testing.assert_close(more - ab, anchor_sim)


def test_per_prompt_anchors_replace_the_concept_and_take_the_best(clip_dir: Path) -> None:
    clip = load_open_clip(str(clip_dir))
    reward = ClipConceptReward(clip, "red", "unused", 0.7, anchor_substitutes=["blue", "green"])
    images = _images(3, seed=4)
    prompts = ["a red circle", "a red square", "a blue cross"]
    r = reward(images, prompts, ["forget", "forget", "retain"])
    sim = ClipConceptReward(clip, "x", "y")  # retain role: plain s(x0, text)
    own = sim(images, prompts, ["retain"] * 3)
    blue = sim(images, ["a blue circle", "a blue square", "x"], ["retain"] * 3)
    green = sim(images, ["a green circle", "a green square", "x"], ["retain"] * 3)
    expected = -own[:2] + 0.7 * torch.maximum(blue[:2], green[:2])
    torch.testing.assert_close(r[:2], expected)
    torch.testing.assert_close(r[2], own[2])  # retain prompts are untouched


def test_clip_concept_rejects_mismatched_inputs(clip_dir: Path) -> None:
    reward = ClipConceptReward(load_open_clip(str(clip_dir)), "c", "a")
    with pytest.raises(ValueError, match="2 images, 1 prompts and 2 roles"):
        reward(_images(2), ["p"], ["forget", "retain"])
    with pytest.raises(ValueError, match="unknown prompt roles"):
        reward(_images(1), ["p"], ["keep"])


def test_build_reward_by_name(clip_dir: Path) -> None:
    cfg = RewardConfig(name="clip_concept", clip_model=str(clip_dir), anchor_weight=0.3)
    reward = build_reward(cfg, "cpu")
    assert reward.name == "clip_concept"
    assert reward(_images(2), ["a", "b"], ["forget", "retain"]).shape == (2,)


# --- classifier ----------------------------------------------------------------------------


# torch 2.14 deprecates TorchScript (FutureWarning) but it is the safe format users have
no_jit_warning = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def _colour_images() -> torch.Tensor:
    images = torch.zeros(3, 16, 16, 3, dtype=torch.uint8)
    images[0, ..., 0] = 255  # red
    images[1, ..., 1] = 255  # green
    images[2] = 128  # grey
    return images


@no_jit_warning
def test_classifier_reward_from_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "judge.pt"
    torch.jit.script(ColourClassifier(10.0)).save(str(path))
    cfg = RewardConfig(name="classifier",
                       classifier=ClassifierRewardConfig(path=path, class_index=0, head=0))
    reward = build_reward(cfg, "cpu")
    r = reward(_colour_images(), ["a", "b", "c"], ["forget", "retain", "forget"])
    e1 = torch.exp(torch.tensor(10.0))
    expected = torch.tensor([e1 / (e1 + 2), 1 / (e1 + 2), 1 / 3])
    torch.testing.assert_close(r, expected)
    assert cfg.classifier is not None
    not_prob = cfg.classifier.model_copy(update={"mode": "not_prob"})
    cfg = cfg.model_copy(update={"classifier": not_prob})
    torch.testing.assert_close(build_reward(cfg)(_colour_images(), ["a"] * 3, ["forget"] * 3),
                               1 - expected)


def test_classifier_from_json_and_safetensors(tmp_path: Path) -> None:
    save_file(ColourClassifier(4.0).state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "classifier.json").write_text(json.dumps(
        {"class": "_clip_fixtures:ColourClassifier", "kwargs": {"scale": 1.0}}
    ))
    model = load_classifier(tmp_path)  # a folder holding classifier.json
    assert float(model.scale) == 4.0  # the weights, not the constructor's default
    cfg = RewardConfig(name="classifier", classifier=ClassifierRewardConfig(
        path=tmp_path / "classifier.json", class_index=1, head=1, image_size=8))
    r = build_reward(cfg)(_colour_images(), ["a"] * 3, ["retain"] * 3)
    assert r.shape == (3,) and r[2] == pytest.approx(1 / 3)


def test_classifier_refuses_pickles_and_names_the_file(tmp_path: Path) -> None:
    pickled = tmp_path / "judge.pt"
    torch.save(ColourClassifier(), pickled)
    with pytest.raises(ClassifierLoadError, match="judge.pt.*is not a TorchScript file"):
        load_classifier(pickled)
    with pytest.raises(ClassifierLoadError, match="absent.pt' does not exist"):
        load_classifier(tmp_path / "absent.pt")
    (tmp_path / "bad.json").write_text('{"class": "no_such_pkg.mod:Net"}')
    with pytest.raises(ClassifierLoadError, match="cannot import class 'no_such_pkg.mod:Net'"):
        load_classifier(tmp_path / "bad.json")


@no_jit_warning
def test_classifier_head_and_class_errors(tmp_path: Path) -> None:
    path = tmp_path / "judge.pt"
    torch.jit.script(ColourClassifier()).save(str(path))
    def reward(**kw: object) -> RewardConfig:
        return RewardConfig(name="classifier", classifier=ClassifierRewardConfig(path=path, **kw))

    with pytest.raises(ValueError, match=r"reward\.classifier\.head"):
        build_reward(reward(class_index=0))(_colour_images(), ["a"] * 3, ["forget"] * 3)
    with pytest.raises(ValueError, match=r"reward\.classifier\.class_index = 7 is out of range"):
        build_reward(reward(class_index=7, head=0))(_colour_images(), ["a"] * 3, ["forget"] * 3)
    with pytest.raises(ValueError, match=r"reward\.classifier\.class_index is missing"):
        reward()


# --- prompts -------------------------------------------------------------------------------


def test_prompt_templates_files_and_ids(tmp_path: Path) -> None:
    forget_file = tmp_path / "forget.txt"
    forget_file.write_text("# red things\na red circle\n\n  a red square  \na red circle\n")
    cfg = PromptsConfig(
        concept="red", anchor="grey", forget=["a red cross"], forget_file=forget_file,
        retain=["a blue circle"], templates=["{}", "a photo of {}"],
    )
    ps = load_prompts(cfg)
    assert [p.text for p in ps.forget] == [
        "a red cross", "a photo of a red cross", "a red circle", "a photo of a red circle",
        "a red square", "a photo of a red square",
    ]
    assert [p.text for p in ps.retain] == ["a blue circle", "a photo of a blue circle"]
    assert {p.role for p in ps.forget} == {"forget"} and len(ps.all) == 8
    assert ps.forget[0].id == prompt_id("forget", "a red cross") == load_prompts(cfg).forget[0].id
    assert len({p.id for p in ps.all}) == 8


def test_prompt_errors_name_the_field_and_file(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=r"reward.prompts.retain_file = '.*nope.txt' does not"):
        load_prompts(PromptsConfig(forget=["x"], retain_file=tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(PromptError, match="empty.txt' holds no prompts"):
        load_prompts(PromptsConfig(forget_file=empty))
    with pytest.raises(PromptError, match="no forget prompts"):
        load_prompts(PromptsConfig(retain=["x"]))
    with pytest.raises(PromptError, match="'a {} of {}' must contain exactly one"):
        load_prompts(PromptsConfig(forget=["x"], templates=["a {} of {}"]))
    with pytest.raises(PromptError, match="both the forget and the retain set"):
        load_prompts(PromptsConfig(forget=["x"], retain=["x"]))


# --- per-prompt standardisation ------------------------------------------------------------


def test_stat_tracker_math_by_hand() -> None:
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    # batch 1: pool [1, 2, 4] (mean 7/3, std sqrt(14/9)); "a" has 1 reward (w = 1/2, its own
    # z-score is 0), "b" has 2 (w = 1: its own window only)
    r1 = tracker.update(["a", "b", "b"], torch.tensor([1.0, 2.0, 4.0]))
    z_a = 0.5 * 0.0 + 0.5 * (1 - 7 / 3) / ((14 / 9) ** 0.5 + 1e-6)
    torch.testing.assert_close(r1, torch.tensor([z_a, -1 / (1 + 1e-6), 1 / (1 + 1e-6)]))
    # batch 2: "a" window [1, 3] (mean 2, std 1, w = 1); "b" keeps the last 3: [2, 4, 6]
    r2 = tracker.update(["a", "b"], torch.tensor([3.0, 6.0]))
    std_b = (8 / 3) ** 0.5
    torch.testing.assert_close(r2, torch.tensor([1 / (1 + 1e-6), 2 / (std_b + 1e-6)]))
    assert tracker.stats()["b"]["count"] == 3


def test_stat_tracker_targets_do_not_jump_when_a_prompt_reaches_min_count() -> None:
    """A prompt's standardised reward moves gradually from pooled to per-prompt statistics.

    Two prompts with very different reward levels, the same rewards every batch: DDPO's tracker
    maps 'a' = 3.1 to about +1 (batch statistics) and then, at min_count, to +1 of the per-prompt
    window (mean 3, std 0.1) while 2.9 flips from ~+1 to -1: a jump of ~2 in one batch.
    """
    tracker = PerPromptStatTracker(buffer_size=16, min_count=16)
    outs = []
    for _ in range(12):
        out = tracker.update(["a", "a", "b", "b"], torch.tensor([2.9, 3.1, -3.1, -2.9]))
        outs.append(out[0].item())  # the standardised 2.9 of prompt "a"
    steps = [abs(b - a) for a, b in zip(outs, outs[1:], strict=False)]
    assert outs[0] > 0.5 and outs[-1] == pytest.approx(-1.0, abs=1e-3)  # it does get there
    assert max(steps) < 0.5, steps  # ... in steps, not one jump


def test_stat_tracker_state_is_json_and_resumes_exactly() -> None:
    a = PerPromptStatTracker(buffer_size=4, min_count=2)
    a.update(["x", "y", "x"], torch.tensor([0.1, 0.5, 0.3]))
    b = PerPromptStatTracker()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    nxt = (["x", "y", "z"], torch.tensor([0.7, -0.2, 0.4]))
    torch.testing.assert_close(a.update(*nxt), b.update(*nxt), rtol=0, atol=0)
    assert b.state_dict() == a.state_dict()


def test_a_trajectory_enters_the_statistics_once_however_often_it_is_drawn() -> None:
    """Replay draws repeat trajectories (samples_per_insert > 1): with ids, a window of 4 holds
    4 distinct rewards, not one reward 4 times; state (ids included) survives a JSON trip."""
    t = PerPromptStatTracker(buffer_size=4, min_count=2)
    t.add(["p", "p"], torch.tensor([1.0, 2.0]), ids=["a", "b"])
    t.add(["p", "p", "p"], torch.tensor([1.0, 2.0, 2.0]), ids=["a", "b", "b"])  # redrawn
    assert t.stats()["p"]["count"] == 2
    z = t.update(["p", "p"], torch.tensor([3.0, 3.0]), ids=["c", "c"])  # twice in one batch
    assert t.stats()["p"]["count"] == 3  # window [1, 2, 3]
    torch.testing.assert_close(z, torch.full((2,), 1 / ((2 / 3) ** 0.5 + 1e-6)))
    u = PerPromptStatTracker(buffer_size=4, min_count=2)
    u.load_state_dict(json.loads(json.dumps(t.state_dict())))
    u.add(["p"], torch.tensor([9.0]), ids=["a"])
    assert u.stats()["p"]["count"] == 3
    with pytest.raises(ValueError, match="2 trajectory ids for 1 rewards"):
        t.add(["p"], torch.tensor([1.0]), ids=["x", "y"])


def test_stat_tracker_affine_is_the_standardisation() -> None:
    """z = scale * r + shift per prompt, mixing per-prompt and pooled statistics as
    `transform` does: values mapped through it share the rewards' scale."""
    t = PerPromptStatTracker(buffer_size=8, min_count=4)
    t.add(["a", "a", "b", "b", "b"], torch.tensor([1.0, 3.0, -2.0, 0.0, 5.0]))
    prompts, r = ["a", "b", "c", "a"], torch.tensor([2.0, 1.0, -1.0, 7.0])
    scale, shift = t.affine(prompts)
    torch.testing.assert_close(scale * r.double() + shift, t.transform(prompts, r).double())
    # 'a': w = 2/4 of its own window (mean 2, std 1) and 2/4 of the pool
    pool = torch.tensor([1.0, 3.0, -2.0, 0.0, 5.0], dtype=torch.float64)
    pm, ps = pool.mean(), pool.std(correction=0) + 1e-6
    want = 0.5 * (2.0 - 2.0) / (1 + 1e-6) + 0.5 * (2.0 - pm) / ps
    assert float(scale[0] * 2.0 + shift[0]) == pytest.approx(float(want), rel=1e-9)


def test_pooled_scale_keeps_each_prompts_mean_and_one_std_for_all() -> None:
    """scale = pooled: z = (r - blended prompt mean) / std of every remembered reward. A prompt
    seen once, or with near-equal rewards, gets the shared scale, not 1 / 1e-6."""
    t = PerPromptStatTracker(buffer_size=8, min_count=2, scale="pooled")
    t.add(["a", "a", "b"], torch.tensor([1.0, 1.0 + 1e-9, 5.0]))
    pool = torch.tensor([1.0, 1.0 + 1e-9, 5.0], dtype=torch.float64)
    sd = pool.std(correction=0) + 1e-6
    scale, shift = t.affine(["a", "b"])
    torch.testing.assert_close(scale, torch.full((2,), 1 / sd, dtype=torch.float64))
    # a: two rewards, w = 1, its own mean; b: one reward, w = 1/2 of its mean, 1/2 the pool's
    mean_b = 0.5 * 5.0 + 0.5 * float(pool.mean())
    torch.testing.assert_close(shift, torch.tensor([-(1.0 + 5e-10) / sd, -mean_b / sd],
                                                   dtype=torch.float64))
    prompt = PerPromptStatTracker(buffer_size=8, min_count=2)
    prompt.add(["a", "a"], torch.tensor([1.0, 1.0 + 1e-9]))
    assert float(prompt.affine(["a"])[0][0]) > 1e5  # what "pooled" avoids for values
    with pytest.raises(ValueError, match="scale = 'x'"):
        PerPromptStatTracker(scale="x")


def test_build_stat_tracker_follows_config() -> None:
    assert build_stat_tracker(RewardConfig(standardize=False)) is None
    tracker = build_stat_tracker(RewardConfig(standardize_buffer=5, standardize_min_count=3))
    assert tracker is not None and (tracker.buffer_size, tracker.min_count) == (5, 3)
    assert tracker.scale == "pooled"
    ddpo = build_stat_tracker(RewardConfig(standardize_scale="prompt"))
    assert ddpo is not None and ddpo.scale == "prompt"


def test_tiny_resnet_tower_scores_too(tmp_path: Path) -> None:
    reward = ClipConceptReward(tiny_clip(tmp_path, "resnet"), "c", "a")
    r = reward(_images(3, size=40), ["p"] * 3, ["forget", "retain", "forget"])
    assert r.shape == (3,) and torch.isfinite(r).all()
