"""Configuration: scenarios load, overrides apply, every error is one line (field and value)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from critic_unlearn.config import ConfigError, RunConfig, dump_config, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_valid_and_frozen():
    cfg = RunConfig()
    assert cfg.sampler.eta > 0
    with pytest.raises(pydantic.ValidationError):
        cfg.sampler.eta = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_scenario_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config(dumped) == cfg


def test_dotted_overrides_apply_with_yaml_types():
    cfg = load_config(
        None,
        [
            "learner.lr=3e-5",
            "sampler.keep_steps=12",
            "lora.target_modules=[to_q]",
            "replay.namespace=run-a",
        ],
    )
    assert cfg.learner.lr == 3e-5 and cfg.sampler.keep_steps == 12
    assert cfg.lora.target_modules == ["to_q"] and cfg.replay.namespace == "run-a"


ERRORS = [
    (["sampler.eta=0"], r"sampler\.eta = 0\.0 is not allowed.*eta > 0"),
    (["sampler.eta=-1"], r"sampler\.eta = -1\.0"),
    (["learner.lrr=1"], r"learner\.lrr: unknown key"),
    (["nosuch.section=1"], r"nosuch: unknown key"),
    (["learner.minibatch_size=5"], r"learner\.minibatch_size = 5 does not divide"),
    (["learner.lr=abc"], r"learner\.lr = 'abc': .*number"),
    (["learner.lr=-1"], r"learner\.lr = -1: .*greater than 0"),
    (["sampler.keep_steps=30"], r"sampler\.keep_steps = 30 exceeds sampler\.num_steps = 20"),
    (["learner.train_steps=15", "sampler.keep_steps=8"], r"learner\.train_steps = 15 exceeds"),
    (["reward.name=classifier"], r"reward\.classifier\.path is missing"),
    (["reward.name=classifier", "reward.classifier.path=c.pt"],
     r"reward\.classifier\.class_index is missing"),
    (["reward.nudenet.resolution=640"],
     r"reward\.nudenet is set but reward\.name = 'clip_concept'.*set reward\.name = nudenet"),
    (["reward.name=nudenet", "reward.classifier.path=c.pt"],
     r"reward\.classifier is set but reward\.name = 'nudenet'"),
    (["reward.nudenet.size=640", "reward.name=nudenet"], r"reward\.nudenet\.size: unknown key"),
    # settings that were flat keys: the old key, its value and where it goes now
    (["reward.classifier_path=c.pt"],
     r"reward\.classifier_path = 'c\.pt': this setting moved; write it as "
     r"reward\.classifier\.path"),
    (["reward.classifier_class=3"],
     r"reward\.classifier_class = 3: .*reward\.classifier\.class_index"),
    (["reward.name=nudenet", "reward.nudenet_resolution=640"],
     r"reward\.nudenet_resolution = 640: .*reward\.nudenet\.resolution"),
    (["learner.esd_eta=2.5"],
     r"learner\.esd_eta = 2\.5: this setting moved; write it as learner\.esd\.eta"),
    (["learner.lr"], r"override 'learner.lr' is not KEY=VALUE"),
    (["learner.lr=1", "learner.lr.x=1"], r"'lr' is a value, not a section"),
]


@pytest.mark.parametrize(("overrides", "pattern"), ERRORS)
def test_each_error_is_one_readable_line(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="'nope.yaml' does not exist"):
        load_config("nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [unclosed")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(lst)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critic_unlearn.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_error_is_one_line_exit_2_no_traceback():
    proc = run_cli("config", "show", "sampler.eta=0")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "sampler.eta" in proc.stderr  # rich may wrap one long line


def test_cli_config_show_prints_resolved_yaml():
    path = CONFIGS[0]
    proc = run_cli("config", "show", str(path), "learner.lr=0.5")
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.5" in proc.stdout


def test_the_deadlock_message_names_the_staleness_the_reuse_needs() -> None:
    """At samples_per_insert = 4 one actor batch of 32 is 4 learner steps of 32: a bound of 2
    versions makes every batch too stale; the advice says what bound fits, not "lower it"."""
    from critic_unlearn.config import staleness_advice

    cfg = load_config(None, ["replay.samples_per_insert=4", "replay.max_staleness=2",
                             "sampler.batch_size=32", "learner.batch_size=32", "actors.num=1"])
    assert "replay.max_staleness >= 6 (now 2)" in staleness_advice(cfg)
    ok = load_config(None, ["replay.samples_per_insert=4", "replay.max_staleness=6",
                            "sampler.batch_size=32", "learner.batch_size=32", "actors.num=1"])
    assert "large enough" in staleness_advice(ok)


def test_reward_and_algorithm_settings_are_sections_in_yaml(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text(
        "reward:\n"
        "  name: classifier\n"
        "  classifier:\n"
        "    path: judge.pt\n"
        "    class_index: 3\n"
        "    mode: not_prob\n"
        "learner:\n"
        "  algorithm: esd\n"
        "  esd:\n"
        "    eta: 2.5\n"
    )
    cfg = load_config(path)
    c = cfg.reward.classifier
    assert c is not None and (str(c.path), c.class_index, c.mode) == ("judge.pt", 3, "not_prob")
    assert cfg.reward.nudenet is None and cfg.learner.esd.eta == 2.5
    # a resolved config (what a run folder's config.yaml holds) loads back to the same
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_nudenet_without_its_section_gets_the_detector_defaults():
    cfg = load_config(None, ["reward.name=nudenet"])
    assert cfg.reward.nudenet is not None and cfg.reward.nudenet.resolution == 320
    assert "FEMALE_BREAST_EXPOSED" in cfg.reward.nudenet.classes
    assert load_config(None, ["reward.name=nudenet", "reward.nudenet.resolution=640"]
                       ).reward.nudenet.resolution == 640
