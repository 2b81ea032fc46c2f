"""Export: stock diffusers / peft loading of a run's adapter, and the merged pipeline, reproduce
our adapted UNet exactly (fp32, atol 1e-5); the final adapter and a snapshot; clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors import safe_open

from critic_unlearn.config import dump_config, load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.lora import (
    adapter_manifest,
    attach_lora,
    get_adapter_state,
    lora_config_hash,
    set_adapter_state,
)
from critic_unlearn.export import (
    DIFFUSERS_WEIGHTS,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    ExportError,
    export_run,
)
from critic_unlearn.training.loop import export_adapter
from critic_unlearn.training.snapshots import save_snapshot
from critic_unlearn.types import WeightsPacket

ATOL = 1e-5
# alpha != rank: the exported scale alpha / rank must survive the trip through diffusers and peft
LORA = ["lora.rank=4", "lora.alpha=2.0", "reward.prompts.concept=red", "scenario=export-test"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critic_unlearn.cli", *args],
        capture_output=True, text=True, timeout=300,
    )


def random_adapter(unet, seed: int) -> dict[str, torch.Tensor]:
    """Non-zero values for every LoRA tensor (B too: a fresh adapter is a no-op)."""
    g = torch.Generator().manual_seed(seed)
    return {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in get_adapter_state(unet).items()}


def unet_inputs(unet) -> tuple:
    g = torch.Generator().manual_seed(7)
    c = unet.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    emb = torch.randn(2, 77, c.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 700]), emb


@torch.no_grad()
def output(unet, inputs) -> torch.Tensor:
    x, t, emb = inputs
    return unet(x, t, encoder_hidden_states=emb).sample


class Run:
    """A run folder as training leaves it (config.yaml, adapter/, snapshots), nothing trained:
    the adapters hold random values, and `reference` is our own adapted UNet's output."""

    def __init__(self, model_dir: Path, root: Path) -> None:
        self.dir = root / "run"
        self.dir.mkdir()
        self.cfg = load_config(None, [f"model.pretrained={model_dir}", *LORA])
        (self.dir / "config.yaml").write_text(dump_config(self.cfg))
        comps = load_components(str(model_dir))
        self.unet = comps.unet
        attach_lora(self.unet, self.cfg.lora)
        self.inputs = unet_inputs(self.unet)
        self.model_id = comps.model_id
        self.final = random_adapter(self.unet, seed=1)
        self.snapshot = random_adapter(self.unet, seed=2)
        h = lora_config_hash(self.cfg.lora)
        save_snapshot(self.dir, 3, 24, self.snapshot, adapter_manifest(self.model_id, h,
                                                                        self.snapshot, 3))
        packet = WeightsPacket(5, self.final, adapter_manifest(self.model_id, h, self.final, 5))
        export_adapter(self.dir, packet)

    def reference(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        set_adapter_state(self.unet, state)
        return output(self.unet, self.inputs)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> Run:
    return Run(tiny_model_dir, tmp_path_factory.mktemp("export"))


def stock_pipeline(model_dir) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(str(model_dir), dtype=torch.float32)


def test_every_run_adapter_folder_holds_the_standard_formats(run):
    folder = run.dir / "adapter"
    assert {"adapter.safetensors", DIFFUSERS_WEIGHTS, PEFT_WEIGHTS, PEFT_CONFIG} <= {
        p.name for p in folder.iterdir()
    }
    with safe_open(folder / DIFFUSERS_WEIGHTS, "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("unet.") and ".lora_" in k for k in keys)
    assert len(keys) == len(run.final)
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 2.0
    with safe_open(folder / PEFT_WEIGHTS, "pt") as f:
        assert all(k.startswith("base_model.model.") for k in f.keys())
    config = json.loads((folder / PEFT_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 2.0


def test_stock_diffusers_load_lora_weights_matches_our_unet(run, tiny_model_dir):
    ref = run.reference(run.final)
    pipe = stock_pipeline(tiny_model_dir)
    base = output(pipe.unet, run.inputs)
    pipe.load_lora_weights(str(run.dir / "adapter"))
    got = output(pipe.unet, run.inputs)
    assert (base - ref).abs().max() > 1e-2  # the adapter does change the UNet
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_peft_from_pretrained_matches_our_unet(run, tiny_model_dir):
    from peft import PeftModel

    ref = run.reference(run.final)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    model = PeftModel.from_pretrained(unet, str(run.dir / "adapter"))
    torch.testing.assert_close(output(model, run.inputs), ref, atol=ATOL, rtol=0)


def test_merged_pipeline_loads_with_from_pretrained_and_matches(run, tmp_path):
    (run.dir / "eval" / "grids").mkdir(parents=True)
    (run.dir / "eval" / "eval.md").write_text("| role | UA |\n|---|---|\n| forget | 0.93 |\n")
    Image.new("RGB", (8, 8)).save(run.dir / "eval" / "grids" / "a-red-circle-0.png")
    out = tmp_path / "merged"
    summary = export_run(run.dir, merged=out)
    assert summary["merged"] == str(out)
    pipe = StableDiffusionPipeline.from_pretrained(str(out))  # no LoRA code involved
    assert not any("lora_" in n for n, _ in pipe.unet.named_parameters())
    torch.testing.assert_close(
        output(pipe.unet, run.inputs), run.reference(run.final), atol=ATOL, rtol=0
    )
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "red" in card and str(run.model_id) in card
    assert "| forget | 0.93 |" in card and "grids/a-red-circle-0.png" in card
    assert (out / "grids" / "a-red-circle-0.png").is_file()
    with pytest.raises(ExportError, match="not empty"):
        export_run(run.dir, merged=out)


@pytest.mark.slow  # a fresh interpreter: ~6 s of importing torch and diffusers
def test_snapshot_exported_by_the_command_matches_our_unet(run, tiny_model_dir):
    proc = cli("export", str(run.dir), "--snapshot", "3")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    folder = run.dir / "export" / "step_000003"
    assert summary["adapter_dir"] == str(folder)
    pipe = stock_pipeline(tiny_model_dir)
    pipe.load_lora_weights(str(folder))
    torch.testing.assert_close(
        output(pipe.unet, run.inputs), run.reference(run.snapshot), atol=ATOL, rtol=0
    )


@pytest.mark.slow  # a fresh interpreter: ~6 s of importing torch and diffusers
def test_a_bad_run_folder_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no-such-run"
    proc = cli("export", str(missing))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "run folder" in lines[0]
    not_a_run = tmp_path / "plain"
    not_a_run.mkdir()
    with pytest.raises(ExportError, match="no config.yaml"):
        export_run(not_a_run)


def test_an_unfinished_run_points_at_its_snapshots(run, tmp_path):
    unfinished = tmp_path / "unfinished"
    (unfinished / "adapter" / "snapshots").mkdir(parents=True)
    (unfinished / "config.yaml").write_text((run.dir / "config.yaml").read_text())
    src = run.dir / "adapter" / "snapshots" / "step_000003.safetensors"
    (unfinished / "adapter" / "snapshots" / src.name).write_bytes(src.read_bytes())
    with pytest.raises(ExportError, match=r"not finished \(snapshots at steps \[3\]\)"):
        export_run(unfinished)
    with pytest.raises(ExportError, match="step_000009"):
        export_run(unfinished, snapshot=9)


def test_export_adapter_keeps_our_file_when_the_config_is_missing(run, tmp_path, caplog):
    packet = WeightsPacket(1, run.final, {"base_model": "x", "lora_config_hash": "h"})
    path = export_adapter(tmp_path, packet)  # no config.yaml here
    assert path.is_file() and not (tmp_path / "adapter" / DIFFUSERS_WEIGHTS).exists()
    assert "critic-unlearn export" in caplog.text
