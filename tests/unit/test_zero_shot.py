"""Zero-shot CLIP UA / IRA: class matching, the rates, the classifier against CLIP scores, errors,
and the report rows beside (or instead of) the judge's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from critic_unlearn.config import load_config
from critic_unlearn.evaluation.clip_score import clip_scores
from critic_unlearn.evaluation.judging import EvaluationError
from critic_unlearn.evaluation.report import markdown
from critic_unlearn.evaluation.zero_shot import (
    ZeroShotClassifier,
    class_names,
    load_zero_shot,
    prompt_class,
    zero_shot_rates,
    zero_shot_wanted,
)
from critic_unlearn.rewards.openclip_loading import ClipLoadError, load_open_clip
from tests.unit._clip_fixtures import tiny_clip_folder

CLASSES = ["church", "garbage truck", "truck", "golf ball"]


def test_prompt_names_its_class_by_whole_words_longest_first() -> None:
    assert prompt_class("a photo of a Garbage Truck", CLASSES) == 1  # not "truck"
    assert prompt_class("a truck on a road", CLASSES) == 2
    assert prompt_class("a churchyard at dawn", CLASSES) is None  # whole words only
    assert prompt_class("a cat", CLASSES) is None


def test_rates_count_concept_misses_and_retain_hits() -> None:
    texts = ["a church", "a church", "a church", "a golf ball", "a golf ball", "a cat", "a cat"]
    roles = ["forget"] * 3 + ["retain"] * 4
    pred = torch.tensor([0, 3, 1, 3, 0, 2, 0])
    # forget: 2 of 3 not "church"; retain: golf ball right once of twice, the cat (names no
    # class) right when not "church": once of twice
    r = zero_shot_rates(pred, texts, roles, CLASSES)
    assert r["ua"] == pytest.approx(2 / 3) and r["ira"] == pytest.approx(2 / 4)
    assert zero_shot_rates(pred[:3], texts[:3], roles[:3], CLASSES)["ira"] is None


def _cfg(*extra: str):
    return load_config(None, ["reward.prompts.concept=church", "eval.judge=null", *extra])


def test_classes_need_neighbours_and_use_follows_the_judge() -> None:
    assert zero_shot_wanted(_cfg()) and not zero_shot_wanted(_cfg("eval.judge=toyworld"))
    assert zero_shot_wanted(_cfg("eval.judge=toyworld", "eval.zero_shot.use=always"))
    assert not zero_shot_wanted(_cfg("eval.zero_shot.use=never"))
    assert class_names(_cfg("eval.zero_shot.neighbours=[tench, parachute]")) == [
        "church", "tench", "parachute"]
    with pytest.raises(EvaluationError, match=r"eval.zero_shot.neighbours"):
        class_names(_cfg())
    with pytest.raises(EvaluationError, match="distinct"):
        class_names(_cfg("eval.zero_shot.neighbours=[Church]"))
    with pytest.raises(EvaluationError, match="templates"):
        class_names(_cfg("eval.zero_shot.neighbours=[tench]", "eval.zero_shot.templates=[x]"))


def test_a_missing_zero_shot_model_is_a_clear_error(tmp_path: Path) -> None:
    cfg = _cfg("eval.zero_shot.neighbours=[tench]")  # ViT-L-14 / openai: not here, no network
    with pytest.raises(ClipLoadError, match=r"ViT-L-14.*save_open_clip"):
        load_zero_shot(cfg, "cpu")
    missing = tmp_path / "nope"
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_zero_shot(_cfg("eval.zero_shot.neighbours=[tench]",
                            f"eval.zero_shot.clip_model={missing}"), "cpu")


def test_classifier_picks_the_class_with_the_best_clip_score(tmp_path: Path) -> None:
    clip = load_open_clip(str(tiny_clip_folder(tmp_path)))
    one = ["a photo of a {}."]
    images = torch.randint(0, 256, (7, 40, 48, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    sims = ZeroShotClassifier(clip, CLASSES, one, batch_size=3).similarities(images)
    # independently: the CLIP score (100 x cosine) of each image with each class's prompt
    scores = torch.stack([clip_scores(clip, images, [one[0].format(c)] * len(images))
                          for c in CLASSES], dim=1)
    torch.testing.assert_close(100 * sims, scores, rtol=1e-4, atol=1e-4)
    two = ZeroShotClassifier(clip, CLASSES, [*one, "art of the {}"], batch_size=3)
    assert two(images).tolist() == two.similarities(images).argmax(1).tolist()
    assert not torch.allclose(two.similarities(images), sims)  # both templates count


def test_report_shows_zero_shot_and_fidelity_beside_or_instead_of_the_judge() -> None:
    base = {
        "ua": 0.5, "ira": 0.75, "base_ua": 0.0, "base_ira": 1.0, "clip_score": 30.0,
        "base_clip_score": 31.0, "forget_attribute_accuracy": None, "per_prompt": [],
        "zero_shot": {"ua": 0.25, "ira": 0.5, "base_ua": 0.125, "base_ira": 1.0,
                      "classes": CLASSES, "clip_model": "tiny"},
        "fidelity": {"fid": 12.345, "kid": 0.0123, "kid_std": 0.001, "images": 9},
        "settings": {"concept": "church", "images_per_prompt": 1, "seeds_offset": 0,
                     "templates": ["{}"], "ua_source": "judge"},
    }
    both = markdown(base)
    assert "| UA: forget images not judged \"church\" | 0.0% | 50.0% |" in both
    assert ("| UA (zero-shot CLIP over 4 classes): forget images not classified \"church\" | "
            "12.5% | 25.0% |") in both
    assert "| FID to base images, retain prompts (9 each; lower is closer) | 0 (reference) | " \
           "12.35 |" in both
    assert "0.0123 ± 0.0010" in both
    alone = markdown({**base, "settings": {**base["settings"], "ua_source": "zero_shot"}})
    assert "judged" not in alone.split("Per prompt")[0] and "zero-shot CLIP" in alone
