"""Precision, recall, density and coverage on the Inception features FID uses, on real Fashion-MNIST.

The library's numbers are checked against an independent brute-force computation written from
the papers' definitions; the behaviour is checked on real images made worse in known ways
(half the classes gone: diversity lost; blurred: fidelity lost).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from ldm_eval.metrics.features import compute_features
from ldm_eval.metrics.frechet import MetricError
from ldm_eval.metrics.prdc import PRDC_K, prdc
from pipelines.data import load_dataset

N = 200


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The definitions, one sample at a time (the radius: distance to the k-th nearest *other* point of its set)."""
    def radii(points: np.ndarray) -> np.ndarray:
        out = []
        for i, p in enumerate(points):
            others = [float(np.sqrt(((p - q) ** 2).sum())) for j, q in enumerate(points) if j != i]
            out.append(sorted(others)[k - 1])
        return np.array(out)

    r_real, r_fake = radii(real), radii(fake)
    d = np.array([[float(np.sqrt(((r - f) ** 2).sum())) for f in fake] for r in real])  # real x fake
    inside_real = d < r_real[:, None]  # fake j inside real i's ball
    precision = np.mean([inside_real[:, j].any() for j in range(len(fake))])
    recall = np.mean([(d[i] < r_fake).any() for i in range(len(real))])
    density = np.mean([inside_real[:, j].sum() for j in range(len(fake))]) / k
    coverage = np.mean([d[i].min() < r_real[i] for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    """Inception features of: real images; as many other real images; others of only half the classes; blurred."""
    test = load_dataset("fashion-mnist", 32, split="test")
    classes = test.labels["class"]
    real, other = test.images[:N], test.images[N : 2 * N]
    rest = torch.arange(2 * N, len(test))
    half = test.images[rest[classes[rest] < 5][:N]]
    blurred = (gaussian_blur(other.float(), kernel_size=7, sigma=2.0)).round().clamp(0, 255).to(torch.uint8)
    return {name: compute_features(images, "inception", "cpu")
            for name, images in {"real": real, "other": other, "half": half, "blurred": blurred}.items()}


def test_library_matches_brute_force(features: dict) -> None:
    real, fake = features["real"][:120], features["half"][:100]
    got = prdc(real, fake, PRDC_K)
    want = brute_force(real, fake, PRDC_K)
    diff = max(abs(getattr(got, name) - value) for name, value in want.items())
    assert diff < 1e-9, (got, want)
    rng = np.random.default_rng(0)  # and on spread-out random vectors, with another k
    a, b = rng.normal(size=(80, 16)), rng.normal(0.5, 1.2, size=(90, 16))
    got, want = prdc(a, b, 5), brute_force(a, b, 5)
    assert max(abs(getattr(got, name) - value) for name, value in want.items()) < 1e-9


def test_identical_sets_score_at_the_top(features: dict) -> None:
    same = prdc(features["real"], features["real"])
    assert same.precision == 1.0 and same.recall == 1.0 and same.coverage == 1.0
    assert same.density >= 1.0


def test_dropping_half_the_classes_lowers_recall_and_coverage_not_precision(features: dict) -> None:
    base = prdc(features["real"], features["other"])
    half = prdc(features["real"], features["half"])
    assert base.precision > 0.6 and base.recall > 0.6, base
    assert half.recall < base.recall - 0.1, (base, half)
    assert half.coverage < base.coverage - 0.1, (base, half)
    assert half.precision > base.precision - 0.05, (base, half)


def test_blurring_lowers_precision_and_density(features: dict) -> None:
    base = prdc(features["real"], features["other"])
    blurred = prdc(features["real"], features["blurred"])
    assert blurred.precision < base.precision - 0.1, (base, blurred)
    assert blurred.density < base.density - 0.1, (base, blurred)


@pytest.mark.parametrize(("real", "fake", "message"), [
    (np.zeros((3, 8)), np.zeros((10, 8)), "at least 4 real samples"),
    (np.ones((10, 8)), np.ones((2, 8)), "at least 4 generated samples"),
    (np.ones((10, 8)), np.ones((10, 9)), "differ in width"),
    (np.ones((10, 8)), np.where(np.eye(10, 8) > 0, np.nan, 1.0), "NaN"),
    (np.ones(10), np.ones((10, 8)), "2-d array"),
])
def test_bad_input_is_a_clear_error(real, fake, message) -> None:
    with pytest.raises(MetricError, match=message):
        prdc(real, fake)


def test_k_must_be_a_positive_whole_number() -> None:
    with pytest.raises(MetricError, match="k"):
        prdc(np.ones((10, 8)), np.ones((10, 8)), k=0)
