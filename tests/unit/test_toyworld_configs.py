"""The three toy-world scenarios: they load, and their prompts mean what the scenario says."""

from __future__ import annotations

from pathlib import Path

import pytest

from critic_unlearn.config import load_config
from critic_unlearn.evaluation.judging import (
    concept_attributes,
    judge_vocabulary,
    prompt_attributes,
    shows,
)
from critic_unlearn.rewards.prompts import load_prompts
from critic_unlearn.toyworld import judge_dir
from critic_unlearn.toyworld.data import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, phrase_templates

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SCENARIOS = ["toy_forget_red", "toy_forget_circle", "toy_forget_red_circle"]


def _shows_concept(prompt: str, concept: dict[str, str]) -> bool:
    attrs = prompt_attributes(prompt, judge_vocabulary(judge_dir()))
    return bool(shows({k: [v] for k, v in attrs.items()}, concept)[0]) if set(concept) <= set(
        attrs) else False


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_prompts_separate_the_concept(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.scenario == name
    assert cfg.model.pretrained == "toyworld" and cfg.reward.clip_model == "toyworld"
    concept = concept_attributes(cfg.reward.prompts.concept, judge_vocabulary(judge_dir()))
    prompts = load_prompts(cfg.reward.prompts)
    assert all(_shows_concept(p.text, concept) for p in prompts.forget)
    assert not any(_shows_concept(p.text, concept) for p in prompts.retain)
    # every forget prompt contains the concept text, so the anchor substitution changes it
    assert all(cfg.reward.prompts.concept in p.text for p in prompts.forget)
    # RL trains on the world's training phrasings; evaluation uses held-out ones
    assert set(cfg.reward.prompts.templates) <= set(phrase_templates(TRAIN_TEMPLATES))
    assert set(cfg.eval.templates) <= set(phrase_templates(HELDOUT_TEMPLATES))
    assert cfg.eval.templates


def test_red_circle_keeps_its_nearest_neighbours() -> None:
    cfg = load_config(CONFIGS / "toy_forget_red_circle.yaml")
    retain = set(cfg.reward.prompts.retain)
    assert {"red square", "blue circle"} <= retain
