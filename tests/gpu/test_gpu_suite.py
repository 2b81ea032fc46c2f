"""bench.micro.gpu_suite at SD-1.5 shapes on CUDA, at a small batch and a few steps: every phase
runs on the real shapes (UNet, VAE, ViT-L/14 text encoder and critic CLIP), the peaks are read from
the allocator, and the memory check runs. The numbers themselves come from the full suite
(scripts/gpu_check.sh); the compiled actor is left out here to keep this under two minutes."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bench.micro import gpu_suite

pytestmark = pytest.mark.gpu


def test_suite_at_sd15_shapes_small_batch(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the random SD-1.5 and ViT-L/14 are built on CPU
    try:
        gpu_suite.main(
            ["--batch", "2", "--steps", "4", "--repeats", "1", "--mem-batch", "2", "--no-compile"]
        )
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["gpu_numbers"] is True and out["model"] == "sd15-shapes"
    assert out["device"] == "cuda" and out["dtype"] == "float16" and out["gpu"]
    for key in ("diffusers_img_s", "actor_img_s", "actor_vs_diffusers", "plain_step_s",
                "learner_step_s", "critic_off_step_s", "learner_vs_plain"):
        assert out[key] > 0, key
    # each side holds at least SD-1.5's fp16 UNet (860M parameters, 1.6 GiB)
    assert set(out["peak_gib"]) == {"diffusers", "actor", "plain", "learner", "critic_off"}
    assert all(v > 1.6 for v in out["peak_gib"].values()), out["peak_gib"]
    # the learner holds the critic's ViT-L/14 image tower on top of the plain step's UNet
    assert out["peak_gib"]["learner"] > out["peak_gib"]["plain"]
    for side in ("actor", "learner"):
        m = out["mem_check"][side]
        assert 1.6 < m["allocated_gib"] <= m["reserved_gib"]
    assert set(out["targets_met"]) == {
        "actor_vs_diffusers >= 0.95", "compiled_vs_eager > 1.0", "learner_vs_plain <= 1.3",
        "fits_24gb",
    }
    assert out["targets_met"]["compiled_vs_eager > 1.0"] is None  # not measured here
    assert out["targets_met"]["fits_24gb"] is True  # batch 2 fits whatever else holds


def test_suite_at_sd35m_shapes_small_batch(capsys: pytest.CaptureFixture[str]) -> None:
    """--backbone sd3 on SD3.5 Medium's shapes (2.5B-parameter MMDiT, CLIP-L and CLIP-G, the
    16-channel VAE) at 256 px, batch 2, 4 steps: every phase runs and the peaks are read."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        gpu_suite.main(["--backbone", "sd3", "--batch", "2", "--steps", "4", "--repeats", "1",
                        "--mem-batch", "2", "--no-compile", "--size", "256"])
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model"] == "sd35m-shapes" and out["backbone"] == "sd3" and out["gpu"]
    for key in ("diffusers_img_s", "actor_img_s", "plain_step_s", "learner_step_s"):
        assert out[key] > 0, key
    # each side holds at least the fp16 MMDiT (2.5B parameters, ~4.6 GiB)
    assert all(v > 4.5 for v in out["peak_gib"].values()), out["peak_gib"]
