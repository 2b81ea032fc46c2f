"""bench.micro.gpu_suite on the CPU: --quick runs every phase and ends with the JSON a GPU run
gives; without --quick and without CUDA it refuses rather than pass CPU numbers off as GPU ones; the
`actors.compile` hook compiles the actor's UNet in place, where peft and the weights still find it.
The real shapes on a GPU: tests/gpu/test_gpu_suite.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.micro import gpu_suite
from critic_unlearn.diffusion.lora import get_adapter_state
from critic_unlearn.learner.learner import Learner
from critic_unlearn.training.setup import build_actor

POSITIVE = (
    "diffusers_img_s", "actor_img_s", "actor_sampler_img_s", "actor_vs_diffusers",
    "sampler_vs_diffusers", "plain_step_s", "learner_step_s", "critic_off_step_s",
    "learner_vs_plain", "critic_off_vs_plain", "transitions", "stored_states", "wall_s",
)


@pytest.mark.slow
def test_quick_suite_on_cpu_reports_every_number(capsys: pytest.CaptureFixture[str]) -> None:
    gpu_suite.main(["--quick", "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("NOT GPU NUMBERS")
    out = json.loads(lines[-1])
    for key in POSITIVE:
        assert isinstance(out[key], int | float) and out[key] > 0, (key, out[key])
    assert (out["model"], out["device"], out["batch"], out["steps"]) == ("tiny", "cpu", 2, 4)
    assert out["gpu_numbers"] is False and out["targets_met"] is None and out["gpu"] is None
    # the learner trained the scenario's transitions (those with sigma >= min_train_std) of the
    # 4 stored ones, and the plain step was given as many passes
    assert 1 <= out["transitions"] <= out["stored_states"] == 4
    # every side has a memory entry; on a CPU there is no per-call peak to read
    assert set(out["peak_gib"]) == {"diffusers", "actor", "plain", "learner", "critic_off"}
    assert all(v is None for v in out["peak_gib"].values())
    assert out["mem_check"] is None and out["fits_24gb"] is None
    # inductor's C++ build takes minutes on a CPU: --quick there leaves the compiled actor out
    assert out["actor_compiled_img_s"] is None and out["compiled_vs_eager"] is None


@pytest.mark.slow
def test_quick_suite_runs_the_sd3_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    """--backbone sd3: the SD3 scenario's actor against StableDiffusion3Pipeline's own loop, and
    the learner against a plain flow-matching LoRA step, on the tiny SD3-class model."""
    gpu_suite.main(["--quick", "--device", "cpu", "--backbone", "sd3"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["model"], out["backbone"], out["guidance"]) == ("tiny-sd3", "sd3", 4.5)
    for key in POSITIVE:
        assert isinstance(out[key], int | float) and out[key] > 0, (key, out[key])
    assert out["transitions"] == out["stored_states"] == 4  # every SDE step is trainable


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_full_suite_without_cuda_refuses_and_names_quick() -> None:
    with pytest.raises(SystemExit) as e:
        gpu_suite.main([])
    assert "no CUDA device" in str(e.value) and "--quick" in str(e.value)


@pytest.mark.slow
def test_actors_compile_compiles_the_unet_in_place(tmp_path: Path) -> None:
    """build_actor with actors.compile=true: the UNet's call is compiled, the module, its
    parameter names (peft's lora_ keys) and the weight path are the same as without."""
    model, clip = gpu_suite.build_models(tmp_path, quick=True)
    args = gpu_suite.parse_args(["--quick", "--device", "cpu", "--dtype", "float32"])
    cfg = gpu_suite.suite_config(model, clip, args, 2)
    assert cfg.actors.compile is False
    eager = build_actor(cfg, 0)
    compiled = build_actor(gpu_suite.with_compile(cfg, True), 1)
    assert getattr(eager.c.unet, "_compiled_call_impl", None) is None
    assert compiled.c.unet._compiled_call_impl is not None
    names = [n for n, _ in compiled.c.unet.named_parameters()]
    assert names == [n for n, _ in eager.c.unet.named_parameters()]
    assert any("lora_" in n for n in names) and not any("_orig_mod" in n for n in names)
    # a learner's adapter applies to the compiled actor (in-place copies into the same tensors)
    no_critic = cfg.model_copy(update={"critic": cfg.critic.model_copy(update={"enabled": False})})
    learner = Learner(no_critic, eager.c)
    for p in learner.lora_params:
        torch.nn.init.normal_(p)
    packet = learner.weights()
    compiled.apply_weights(packet)
    got = get_adapter_state(compiled.c.unet)
    assert got.keys() == packet.state_dict.keys()
    for k, v in packet.state_dict.items():
        torch.testing.assert_close(got[k], v)
