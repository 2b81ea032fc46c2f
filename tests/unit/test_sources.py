"""Named sources (critic_unlearn/sources.py): names resolve to folders; providers load lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from critic_unlearn import sources
from critic_unlearn.evaluation.judging import EvaluationError, judge_vocabulary
from critic_unlearn.rewards.openclip_loading import load_open_clip
from tests.unit._clip_fixtures import tiny_clip_folder


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are dropped after it (the providers' own are kept)."""
    sources.names("model")  # import the providers into the real registry first
    monkeypatch.setattr(sources, "_resolvers", dict(sources._resolvers))
    monkeypatch.setattr(sources, "_imported", set(sources._imported))


def test_registered_names_resolve_and_others_pass_through(registry, tmp_path: Path) -> None:
    calls = []
    sources.register("model", "mine", lambda: calls.append(1) or tmp_path)
    assert calls == []  # resolvers run at resolve time, not at registration
    assert sources.is_source("model", "mine") and not sources.is_source("judge", "mine")
    assert sources.resolve("model", "mine") == str(tmp_path) and calls == [1]
    assert sources.resolve("model", "org/some-hub-id") == "org/some-hub-id"
    assert sources.resolve("judge", "mine") == "mine"  # kinds are separate namespaces
    assert "mine" in sources.names("model")
    with pytest.raises(ValueError, match="unknown source kind 'weights'"):
        sources.register("weights", "x", lambda: tmp_path)


def test_the_toy_world_registers_itself_on_first_lookup() -> None:
    code = (
        "import sys; from critic_unlearn import sources; "
        "assert 'critic_unlearn.toyworld' not in sys.modules; "
        "print(sources.resolve('judge', 'toyworld')); "
        "assert 'critic_unlearn.toyworld' in sys.modules and 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from critic_unlearn.toyworld import TOYWORLD, judge_dir  # noqa: PLC0415

    assert out.stdout.strip() == str(judge_dir())
    assert {TOYWORLD} <= set(sources.names("model")) & set(sources.names("reward_clip"))


def test_missing_provider_is_skipped_but_a_broken_one_is_not(registry, monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "PROVIDERS", ["critic_unlearn.no_such_provider"])
    monkeypatch.setattr(sources, "_imported", set())
    assert sources.resolve("model", "absent") == "absent"
    broken = tmp_path / "broken_provider.py"
    broken.write_text("import critic_unlearn.no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sources, "PROVIDERS", ["broken_provider"])
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        sources.names("model")


def test_loaders_read_a_registered_source(registry, tmp_path: Path) -> None:
    folder = tiny_clip_folder(tmp_path / "clip")
    sources.register("reward_clip", "my-clip", lambda: folder)
    assert load_open_clip("my-clip").name == str(folder)


def test_judge_vocabulary_from_words_or_class_names(tmp_path: Path) -> None:
    spec = {"heads": {"colour": ["red", "blue", "none"], "shape": ["circle", "none"]}}
    (tmp_path / "classifier.json").write_text(json.dumps(spec))
    plain = judge_vocabulary(tmp_path)  # no "words": each class by its name, "none" never asked
    assert plain.read("a red circle") == {"colour": "red", "shape": "circle"}
    assert plain.read("a scarlet circle") == {"colour": None, "shape": "circle"}
    assert plain.read("none") == {"colour": None, "shape": None}
    spec["words"] = {"colour": {"red": ["red", "scarlet"], "blue": ["blue"]},
                     "shape": {"circle": ["circle", "round shape"]}}
    (tmp_path / "classifier.json").write_text(json.dumps(spec))
    assert judge_vocabulary(tmp_path).read("a scarlet round shape") == {"colour": "red",
                                                                        "shape": "circle"}
    spec["words"]["shape"]["hexagon"] = ["hexagon"]
    (tmp_path / "classifier.json").write_text(json.dumps(spec))
    with pytest.raises(EvaluationError, match="hexagon"):
        judge_vocabulary(tmp_path)
