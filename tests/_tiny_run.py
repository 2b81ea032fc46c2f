"""The tiny run the tests start from: configs/tiny_run.yaml with a test's own paths on top."""

from __future__ import annotations

from pathlib import Path

from critic_unlearn.config import RunConfig, load_config

TINY_RUN = Path(__file__).resolve().parents[1] / "configs" / "tiny_run.yaml"


def tiny_run_config(model_dir: Path, clip_dir: Path, run_dir: Path, *extra: str) -> RunConfig:
    """configs/tiny_run.yaml on the given tiny model, tiny CLIP and run folder, then `extra`."""
    return load_config(
        TINY_RUN,
        [
            f"model.pretrained={model_dir}",
            f"reward.clip_model={clip_dir}",
            f"runtime.run_dir={run_dir}",
            *extra,
        ],
    )
