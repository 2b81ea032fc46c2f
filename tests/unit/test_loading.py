"""Model loading through from_pretrained: local folders, and clear errors when a model is absent."""

from __future__ import annotations

import shutil

import pytest
import torch

from critic_unlearn.diffusion.loading import ModelLoadError, load_components


def test_local_folder_loads_every_part(tiny_model_dir):
    c = load_components(str(tiny_model_dir), device="cpu")
    assert c.default_size == 16 and c.vae_scale_factor == 2
    assert type(c.scheduler).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in c.unet.parameters())
    assert c.tokenizer("a red circle").input_ids[0] == 49406  # CLIP's <|startoftext|>


def test_half_precision_load(tiny_model_dir):
    c = load_components(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert c.unet.dtype == torch.bfloat16


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist; point model.pretrained"):
        load_components(str(tmp_path / "nowhere"))


def test_incomplete_folder_names_the_missing_parts(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="lacks vae"):
        load_components(str(broken))


def test_offline_hub_id_gives_one_clear_error():
    with pytest.raises(ModelLoadError) as info:
        load_components("no-such-org/no-such-model", local_files_only=True)
    msg = str(info.value)
    assert "no-such-org/no-such-model" in msg and "model.pretrained=DIR" in msg
