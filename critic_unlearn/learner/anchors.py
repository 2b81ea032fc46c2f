"""Anchors to the base model where the adapted model must not change (docs/algorithm.md).

Retain prompts enter the RL objective only as reward to keep; nothing there stops the policy
from drifting on them, or on the concepts next to the forgotten one (a hue push that erases
"red" also moves "orange"). An anchor adds, to the policy loss of a trained transition, the KL
of the adapted DDIM step to the base model's step (adapters off) at the same state:

    KL(pi_theta(. | x_t, c) || pi_base(. | x_t, c)) = ||mu_theta - mu_base||^2 / (2 sigma_t^2)

(the same-sigma Gaussian KL, as DPOK's KL term; with `sum` reduction it is the mean-squared
difference of the guided noise predictions times a per-step constant). Two sets of anchored
transitions, each a setting (`learner.anchor_on`):

  retain      the retain prompts' own trained transitions, conditioned on their prompt;
  neighbours  the forget prompts' trained states, conditioned on a neighbour of the prompt:
              the prompt with the concept replaced by one of `reward.prompts.anchor_substitutes`
              ("a red circle" -> "a blue circle"), drawn at random per transition: the
              concept-ablation / ESD-style preservation term on the concepts most at risk.

The mean over the anchored transitions of a minibatch pick is weighted by
`learner.anchor_weight` and added to the PPO loss. This module holds the pure parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def neighbour_prompt(prompt: str, concept: str, substitute: str) -> str:
    """The prompt with the concept's word(s) replaced by a neighbouring concept's."""
    if concept not in prompt:
        raise ValueError(
            f"forget prompt {prompt!r} does not contain the concept {concept!r}: no neighbour "
            "to anchor; name the concept as the prompts spell it (reward.prompts.concept)"
        )
    return prompt.replace(concept, substitute)


def draw_neighbours(
    prompts: Sequence[str], concept: str, substitutes: Sequence[str], gen: torch.Generator
) -> list[str]:
    """One neighbour per prompt, the substitute drawn uniformly with `gen` (the learner's)."""
    if not substitutes:
        raise ValueError(
            "learner.anchor_on includes 'neighbours' but reward.prompts.anchor_substitutes is "
            "empty; list the concept's neighbours there, or anchor on 'retain' only"
        )
    picks = torch.randint(len(substitutes), (len(prompts),), generator=gen).tolist()
    return [neighbour_prompt(p, concept, substitutes[i]) for p, i in zip(prompts, picks,
                                                                           strict=True)]
