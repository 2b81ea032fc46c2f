"""The synonym and paraphrase sweep: every wording of each forget prompt, in every template."""

from critic_unlearn.evaluation.attacks.sweep import rewordings, sweep_wordings, synonym_groups
from critic_unlearn.vocabulary import Vocabulary

VOCAB = Vocabulary({
    "colour": {"red": ("red", "crimson"), "blue": ("blue", "azure")},
    "shape": {"circle": ("circle", "round shape"), "square": ("square",)},
})


def test_rewordings_swap_every_named_word_for_each_synonym() -> None:
    out = rewordings("red circle", synonym_groups(VOCAB, {}))
    assert out[0] == "red circle"
    assert sorted(out) == sorted(["red circle", "red round shape", "crimson circle",
                                  "crimson round shape"])


def test_config_synonyms_reword_what_the_judge_does_not_know() -> None:
    out = rewordings("a nude person", synonym_groups(None, {"nude": ["naked", "unclothed"]}))
    assert out == ["a nude person", "a naked person", "a unclothed person"]  # articles: later


def test_sweep_puts_wordings_in_templates_with_right_articles() -> None:
    ws = sweep_wordings(["blue square"], ["a {}", "the {} here"], VOCAB, {})
    texts = [w.text for w in ws]
    assert "an azure square" in texts and "a blue square" in texts  # article follows the word
    assert "the azure square here" in texts
    assert len(texts) == 4 and all(w.source == "blue square" for w in ws)


def test_multi_word_synonym_is_matched_whole() -> None:
    out = rewordings("red round shape", synonym_groups(VOCAB, {}))
    assert "red circle" in out and "red round circle" not in out
