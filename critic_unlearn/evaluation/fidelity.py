"""FID and KID of the unlearned model's retain images against the base model's (torchmetrics).

Unlearning should leave retain prompts alone: the distance between the base model's and the
unlearned model's images on the same retain prompts and seeds measures the collateral damage.
The metrics are torchmetrics' `FrechetInceptionDistance` and `KernelInceptionDistance` (in-memory
tensors, FID and KID from one set of features, maintained by Lightning); the features are those of
the FID Inception network (the TF 2015-12-05 weights as ported by torch-fidelity, which
torchmetrics itself uses), so numbers compare with the literature at equal image counts.

Both libraries fetch these weights from the internet, or unpickle a local copy. Here they are read
from a safetensors file (`eval.fidelity.weights`) and handed to torch-fidelity's constructor in
place of its download, so nothing is fetched and nothing is unpickled.
`python -m critic_unlearn.evaluation.fidelity PATH` writes that file where there is internet.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from critic_unlearn.config import FidelityConfig
from critic_unlearn.evaluation.judging import EvaluationError

FEATURES = 2048  # the pool3 features FID is defined on


def _how_to_make(path: Path) -> str:
    return (
        f"write it where there is internet with `python -m critic_unlearn.evaluation.fidelity "
        f"{path}` and copy it here, set eval.fidelity.weights=PATH, or eval.fidelity.enabled=false"
    )


@contextmanager
def _weights_instead_of_download(state: dict[str, Tensor] | None) -> Iterator[None]:
    """torch-fidelity's constructor downloads its weights; give it `state` instead."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    original = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *_a, **_k: state
    try:
        yield
    finally:
        fe.load_state_dict_from_url = original


def _inception(state: dict[str, Tensor] | None) -> nn.Module:
    """The FID Inception (pool3 features, uint8 images in), with `state`'s weights."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    class FidInception(NoTrainInceptionV3):
        def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
            if state_dict is None:  # random_inception_state: keep PyTorch's initialisation
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    with _weights_instead_of_download(state):
        return FidInception("inception-v3-compat", [str(FEATURES)])


def random_inception_state(seed: int = 0) -> dict[str, Tensor]:
    """A randomly initialised FID Inception's weights: the real network's layout for tests and
    offline smoke runs (its distances are not FIDs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: v.clone() for k, v in _inception(None).state_dict().items()}


def load_inception(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The FID Inception from a safetensors file of its weights; a clear error when unusable."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(
            f"eval.fidelity.weights = {str(path)!r} does not exist: FID/KID need the FID "
            f"Inception's weights as safetensors; {_how_to_make(path)}"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise EvaluationError(
            f"eval.fidelity.weights = {str(path)!r} is not a safetensors file ({e}); "
            f"{_how_to_make(path)}"
        ) from None
    try:
        return _inception(state).to(device)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise EvaluationError(
            f"eval.fidelity.weights = {str(path)!r} does not hold the FID Inception's weights "
            f"({first}); {_how_to_make(path)}"
        ) from None


@torch.no_grad()
def inception_features(net: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 2048) float64 pool3 features (resized to 299 inside)."""
    device = next(net.parameters()).device
    out = [net(chunk.permute(0, 3, 1, 2).contiguous().to(device)).double().cpu()
           for chunk in images.split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, FEATURES, dtype=torch.float64)


class _Given(nn.Module):
    """Feature 'extractor' for torchmetrics that passes features computed once through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid_kid(real: Tensor, fake: Tensor, cfg: FidelityConfig) -> dict[str, Any]:
    """FID, KID mean and std (torchmetrics) between two (N, D) feature sets (D = 2048 for FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < 2:
        return {"fid": None, "kid": None, "kid_std": None, "images": n}
    size = min(cfg.kid_subset_size, n)
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    with warnings.catch_warnings():  # "will save all extracted features": they are, by design
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=cfg.kid_subsets,
                                      subset_size=size)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG
        torch.manual_seed(cfg.seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "images": n, "kid_subset_size": size}


def fidelity_report(net: nn.Module, base: Tensor, after: Tensor,
                    cfg: FidelityConfig) -> dict[str, Any]:
    """eval.json's "fidelity" entry: base images are 'real', unlearned ones 'fake'."""
    real = inception_features(net, base, cfg.batch_size)
    fake = inception_features(net, after, cfg.batch_size)
    return {**fid_kid(real, fake, cfg), "weights": str(cfg.weights)}


def save_inception_weights(path: Path) -> Path:
    """Download torch-fidelity's FID Inception and write it as safetensors (needs internet)."""
    from torch.hub import load_state_dict_from_url
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    state = load_state_dict_from_url(URL_INCEPTION_V3, weights_only=True, progress=True)
    _inception(state)  # the layout must match before it is written
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=save_inception_weights.__doc__)
    p.add_argument("path", type=Path, help="where to write the .safetensors file")
    print(save_inception_weights(p.parse_args(argv).path))


if __name__ == "__main__":
    main()
