"""Read which class of each attribute a prompt names: "an azure disc" -> colour blue, shape circle.

A `Vocabulary` maps attribute -> class -> the words that name it (synonyms, multi-word phrases).
The toy world defines its words once (`toyworld/data.py`) and writes them into its judge's
`classifier.json` ("words"), so the evaluation reads prompts with the judge's own vocabulary and
never imports the toy world. Imports nothing of the project and no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


class Vocabulary:
    """Words per class per attribute; matching is whole-word and case-insensitive."""

    def __init__(self, words: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        self.words = {a: {c: tuple(ws) for c, ws in cs.items()} for a, cs in words.items()}
        self._patterns: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        for attr, classes in self.words.items():
            pairs = [(w, c) for c, ws in classes.items() for w in ws]
            pairs.sort(key=lambda p: -len(p[0]))  # longest first: "round shape" before "shape"
            self._patterns[attr] = [
                (re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE), c) for w, c in pairs
            ]

    @classmethod
    def from_classes(
        cls, heads: Mapping[str, Sequence[str]], skip: Sequence[str] = ()
    ) -> Vocabulary:
        """Each class named by its own name only (a judge that lists no words), minus `skip`."""
        return cls({h: {c: (c,) for c in names if c not in skip} for h, names in heads.items()})

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.words)

    def read(self, text: str) -> dict[str, str | None]:
        """Per attribute, the class `text` names (None where it names none).

        A text naming two classes of one attribute is ambiguous and refused (ValueError)."""
        out: dict[str, str | None] = {}
        for attr, patterns in self._patterns.items():
            found = {c for pat, c in patterns if pat.search(text)}
            if len(found) > 1:
                raise ValueError(
                    f"prompt {text!r} names several {attr} classes {sorted(found)}; a prompt "
                    f"names at most one of each attribute ({', '.join(self.words)})"
                )
            out[attr] = next(iter(found), None)
        return out

    def describe(self) -> str:
        """'colour (red, green), shape (circle, square)': for error messages."""
        return "; ".join(f"{a} ({', '.join(cs)})" for a, cs in self.words.items())


__all__ = ["Vocabulary"]
