"""Forget and retain prompt sets from config lists and/or text files, expanded by templates.

Every prompt is put into every template at its "{}" ("a photo of {}" + "a red circle"), literal
lists first, then file lines, duplicates dropped in order. Each prompt gets a stable id from its
role and text, so replay, per-prompt statistics and reports agree on it across runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from critic_unlearn.config import PromptsConfig
from critic_unlearn.types import Role


class PromptError(ValueError):
    """A prompt file or template is unusable; the message names it and says what to do."""


@dataclass(frozen=True)
class Prompt:
    id: str  # "<role>-<8 hex chars of sha1(text)>"
    text: str
    role: Role


@dataclass(frozen=True)
class PromptSet:
    concept: str  # the concept to forget, as text for the reward
    anchor: str  # what forget images should look like instead
    forget: tuple[Prompt, ...]
    retain: tuple[Prompt, ...]

    @property
    def all(self) -> tuple[Prompt, ...]:
        return self.forget + self.retain


def prompt_id(role: str, text: str) -> str:
    return f"{role}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def read_prompt_file(path: Path, field: str) -> list[str]:
    """One prompt a line; blank lines and lines starting with '#' are skipped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PromptError(
            f"{field} = {str(path)!r} does not exist; give a text file with one prompt a line"
        )
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PromptError(f"{field} = {str(path)!r} is not UTF-8 text ({e.reason})") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise PromptError(
            f"{field} = {str(path)!r} holds no prompts (only blank or '#' lines); add one a line"
        )
    return prompts


def apply_templates(prompts: list[str], templates: list[str]) -> list[str]:
    """Every prompt in every template, prompt-major, duplicates dropped in order."""
    if not templates:
        raise PromptError("reward.prompts.templates is empty; use ['{}'] to keep prompts as given")
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise PromptError(
                f"reward.prompts.templates entry {t!r} must contain exactly one '{{}}' and no "
                "other braces, e.g. 'a photo of {}'"
            )
    return list(dict.fromkeys(t.replace("{}", p) for p in prompts for t in templates))


def load_prompts(cfg: PromptsConfig) -> PromptSet:
    """Build the forget and retain sets; forget must not end up empty."""
    sets = {}
    for role in ("forget", "retain"):
        texts = list(getattr(cfg, role))
        file = getattr(cfg, f"{role}_file")
        if file is not None:
            texts += read_prompt_file(file, f"reward.prompts.{role}_file")
        expanded = apply_templates(texts, cfg.templates) if texts else []
        sets[role] = tuple(Prompt(prompt_id(role, t), t, role) for t in expanded)
    if not sets["forget"]:
        raise PromptError(
            "no forget prompts: set reward.prompts.forget (a list) or reward.prompts.forget_file "
            "(a text file, one prompt a line) to prompts that show the concept"
        )
    overlap = {p.text for p in sets["forget"]} & {p.text for p in sets["retain"]}
    if overlap:
        raise PromptError(
            f"prompts {sorted(overlap)[:3]} are in both the forget and the retain set; a prompt "
            "has one role, remove it from one of them"
        )
    return PromptSet(cfg.concept, cfg.anchor, sets["forget"], sets["retain"])
