"""`critic-unlearn attack RUN_DIR` end to end on the embedded toy world (real model, reward CLIP
and judge), with an adapter that is a no-op (LoRA B = 0): the unlearned model is then the base
model, so every attack must succeed exactly as often on both."""

import json

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from critic_unlearn.cli import app
from critic_unlearn.codec import encode_state_dict
from critic_unlearn.config import dump_config, load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.lora import attach_lora, get_adapter_state

pytestmark = pytest.mark.slow

SMALL = ["reward.prompts.forget=[red circle]", "eval.templates=['an image of a {}']",
         "attack.steps=2", "attack.batch_size=2", "attack.sample_steps=3",
         "attack.images_per_prompt=4", "attack.sweep_images=1", "runtime.num_threads=1"]


@pytest.fixture(scope="module")
def noop_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = load_config("configs/toy_forget_red.yaml", SMALL)
    comps = load_components("toyworld")
    attach_lora(comps.unet, cfg.lora)
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter.safetensors").write_bytes(
        encode_state_dict(get_adapter_state(comps.unet)))
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


def test_attack_on_a_noop_adapter_matches_the_base(noop_run) -> None:
    r = CliRunner().invoke(app, ["attack", str(noop_run)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["synonym_asr"] == out["synonym_base_asr"] >= 0.75  # 9 wordings of a red circle
    assert out["learned_asr"] == out["learned_base_asr"]
    report = json.loads((noop_run / "attack" / "attack.json").read_text())
    assert report["synonym"]["wordings"] == 9 and report["learned"]["images"] == 4
    base = load_file(str(noop_run / "attack" / "learned_base.safetensors"))["vectors"]
    assert base.shape == (3, 64)  # attack.num_tokens x the text encoder's token width
    assert (noop_run / "attack" / "grids" / "synonym.png").is_file()
    assert "ASR base" in (noop_run / "attack" / "attack.md").read_text()


def test_attack_without_a_run_folder_says_what_to_pass(tmp_path) -> None:
    r = CliRunner().invoke(app, ["attack", str(tmp_path)])
    assert r.exit_code != 0
    assert "config.yaml" in str(r.exception) or "config.yaml" in r.output
