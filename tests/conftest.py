"""Shared fixtures: a tiny random Stable Diffusion model saved with save_pretrained, loaded back,
and a tiny random CLIP folder for reward.clip_model."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from critic_unlearn.diffusion.loading import SDComponents, load_components  # noqa: E402
from critic_unlearn.diffusion.tiny import build_tiny_model, build_tiny_sd3  # noqa: E402
from tests.unit._clip_fixtures import tiny_clip_folder  # noqa: E402

# Tiny models gain nothing from a second thread, and CI's 2 cores are shared with the
# Redis / Ray processes some tests start: one thread is faster and steadier (CU_TEST_THREADS).
torch.set_num_threads(int(os.environ.get("CU_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random SD3-class pipeline (MMDiT, flow matching, 16-channel latents, no T5)."""
    return build_tiny_sd3(tmp_path_factory.mktemp("models") / "tiny-sd3", seed=0)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (ViT tower) saved as a folder; a test file needing another tower
    defines its own `clip_dir`."""
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def tiny_components(tiny_model_dir) -> SDComponents:
    torch.manual_seed(0)
    return load_components(str(tiny_model_dir), device="cpu")


GPU_TESTS = Path(__file__).resolve().parent / "gpu"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` live in tests/gpu/, whose conftest skips them without CUDA."""
    misplaced = [item.nodeid for item in items
                 if item.get_closest_marker("gpu") and GPU_TESTS not in item.path.resolve().parents]
    if misplaced:
        raise pytest.UsageError(f"tests marked gpu must live in tests/gpu/: {misplaced}")
