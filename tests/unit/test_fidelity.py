"""FID / KID: torchmetrics' numbers against the textbook formulas on the same features, the FID
Inception loaded from a safetensors file (random weights: the real layout, no download), and a
clear error for every way the weights file can be unusable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import linalg

from critic_unlearn.config import FidelityConfig
from critic_unlearn.evaluation.fidelity import (
    FEATURES,
    fid_kid,
    fidelity_report,
    inception_features,
    load_inception,
    random_inception_state,
)
from critic_unlearn.evaluation.judging import EvaluationError


def _features(n: int, shift: float, seed: int, dim: int = 24) -> torch.Tensor:
    """Feature sets of a small width: the metrics' arithmetic does not depend on it (an exact
    2048-wide FID costs a 2048 x 2048 eigendecomposition, ~20 s on a busy core)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.5 + shift).abs()


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al.: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), scipy's sqrtm."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def _reference_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3 (Binkowski et al.), all images."""
    k = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    m = len(a)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    off = lambda q: (q.sum() - np.trace(q)) / (m * (m - 1))  # noqa: E731
    return float(off(kaa) + off(kbb) - 2 * kab.mean())


def test_fid_and_kid_match_the_formulas() -> None:
    real, fake = _features(40, 0.0, 1), _features(40, 0.3, 2)
    cfg = FidelityConfig(kid_subsets=3, kid_subset_size=1000)  # capped at 40: every subset = all
    out = fid_kid(real, fake, cfg)
    assert out["images"] == 40 and out["kid_subset_size"] == 40
    assert out["fid"] == pytest.approx(_reference_fid(real.numpy(), fake.numpy()), rel=1e-3)
    assert out["kid"] == pytest.approx(_reference_kid(real.numpy(), fake.numpy()), rel=1e-6)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-12)
    assert abs(fid_kid(real, real, cfg)["fid"]) < 1e-6 * out["fid"]


def test_kid_subsets_are_seeded_and_too_few_images_give_none() -> None:
    real, fake = _features(30, 0.0, 3), _features(30, 0.2, 4)
    cfg = FidelityConfig(kid_subsets=4, kid_subset_size=10, seed=5)
    first, again = fid_kid(real, fake, cfg), fid_kid(real, fake, cfg)
    assert first["kid"] == again["kid"] and first["kid_std"] > 0  # subsets differ, reproducibly
    assert fid_kid(real[:1], fake, cfg) == {"fid": None, "kid": None, "kid_std": None,
                                            "images": 1}


def test_unusable_weights_files_are_explained(tmp_path: Path) -> None:
    missing = tmp_path / "none.safetensors"
    with pytest.raises(EvaluationError, match=r"eval.fidelity.weights = .*none.safetensors.* "
                                              r"does not exist.*python -m critic_unlearn"):
        load_inception(missing)
    pickled = tmp_path / "inception.pth"
    torch.save({"x": torch.zeros(1)}, pickled)
    with pytest.raises(EvaluationError, match="is not a safetensors file"):
        load_inception(pickled)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(EvaluationError, match="does not hold the FID Inception's weights"):
        load_inception(wrong)


@pytest.mark.slow
def test_inception_from_safetensors_measures_distance_between_image_sets(tmp_path: Path) -> None:
    state = random_inception_state(0)
    for v in state.values():  # He-scaled convolutions: features of order 1, not vanishing
        if v.ndim == 4:
            v.normal_(0, (2 / v[0].numel()) ** 0.5, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "inception.safetensors"
    save_file(state, str(path))
    net = load_inception(path)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (6, 24, 24, 3), dtype=torch.uint8, generator=g)
    other = (base.float() * 0.3).to(torch.uint8)  # darker copies
    feats = inception_features(net, base, batch_size=4)
    assert feats.shape == (6, FEATURES) and torch.isfinite(feats).all()
    assert feats.std(0).mean() > 1e-3  # images are told apart
    torch.testing.assert_close(inception_features(net, base, batch_size=6), feats)  # per image
    cfg = FidelityConfig(weights=path, kid_subsets=5, batch_size=4)
    moved = fidelity_report(net, base, other, cfg)  # one 2048-wide FID: ~20 s here
    assert moved["images"] == 6 and moved["weights"] == str(path)
    assert moved["fid"] > 0 and moved["kid"] > 0
