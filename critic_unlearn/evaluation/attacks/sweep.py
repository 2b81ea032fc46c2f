"""The synonym and paraphrase sweep: every forget prompt in every wording the world knows.

Wordings come from the judge's vocabulary (classifier.json "words": the toy world's synonym table
travels there, so this module never imports the world) and from `attack.synonyms` (a list in the
config, for models whose judge names no words); each is put in the held-out templates plus
`attack.paraphrase_templates`. Pure functions on strings.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from critic_unlearn.vocabulary import Vocabulary


@dataclass(frozen=True)
class Wording:
    """One sweep prompt: the forget prompt it rewords, and its text."""

    source: str  # the forget prompt as configured, e.g. "red circle"
    text: str  # e.g. "an image of a crimson disc"


def _article(text: str) -> str:
    """'a azure disc' -> 'an azure disc', 'an crimson' -> 'a crimson' (English articles)."""
    text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)
    return re.sub(r"\b([Aa])n (?=[^aeiouAEIOU\W])", r"\1 ", text)


def synonym_groups(
    vocabulary: Vocabulary | None, extra: Mapping[str, Sequence[str]]
) -> list[tuple[str, ...]]:
    """Groups of interchangeable words: each class's words in the judge's vocabulary, and each
    `attack.synonyms` entry (its key first)."""
    groups: list[tuple[str, ...]] = []
    if vocabulary is not None:
        groups += [tuple(ws) for classes in vocabulary.words.values() for ws in classes.values()]
    groups += [(word, *alts) for word, alts in extra.items()]
    return groups


def rewordings(prompt: str, groups: Sequence[tuple[str, ...]]) -> list[str]:
    """Every text made by swapping each word of `prompt` that is in a group for each word of its
    group (whole words, longest match first); `prompt` itself comes first."""
    found: list[tuple[int, int, tuple[str, ...]]] = []  # (start, end, group) of matched words
    taken: set[int] = set()
    flat = sorted(((w, g) for g in groups for w in g), key=lambda p: -len(p[0]))
    for word, group in flat:
        for m in re.finditer(rf"\b{re.escape(word)}\b", prompt, re.IGNORECASE):
            span = set(range(m.start(), m.end()))
            if span & taken:
                continue
            taken |= span
            found.append((m.start(), m.end(), group))
    found.sort()
    out: list[str] = [prompt]
    for choice in itertools.product(*[g for _, _, g in found]):
        text, last = "", 0
        for (start, end, _), word in zip(found, choice, strict=True):
            text += prompt[last:start] + word
            last = end
        text += prompt[last:]
        if text not in out:
            out.append(text)
    return out


def sweep_wordings(
    forget: Sequence[str],
    templates: Sequence[str],
    vocabulary: Vocabulary | None,
    extra: Mapping[str, Sequence[str]],
) -> list[Wording]:
    """Each forget prompt, reworded every way, in every template, duplicates dropped in order."""
    groups = synonym_groups(vocabulary, extra)
    seen: dict[str, Wording] = {}
    for source in forget:
        for text in rewordings(source, groups):
            for template in templates:
                full = _article(template.replace("{}", text))
                seen.setdefault(full, Wording(source, full))
    return list(seen.values())
