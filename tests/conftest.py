"""Shared fixtures: a tiny random Stable Diffusion model saved with save_pretrained, loaded back."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from critic_unlearn.diffusion.loading import SDComponents, load_components  # noqa: E402
from critic_unlearn.diffusion.tiny import build_tiny_model  # noqa: E402

# Tiny models gain nothing from a second thread, and CI's 2 cores are shared with the
# Redis / Ray processes some tests start: one thread is faster and steadier (CU_TEST_THREADS).
torch.set_num_threads(int(os.environ.get("CU_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture
def tiny_components(tiny_model_dir) -> SDComponents:
    torch.manual_seed(0)
    return load_components(str(tiny_model_dir), device="cpu")
