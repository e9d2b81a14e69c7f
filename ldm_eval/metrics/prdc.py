"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020).

FID folds two failures into one number; these tell them apart, on the same features:

* precision: the share of generated samples inside the real manifold (fidelity);
* recall: the share of real samples inside the generated manifold (diversity);
* density: how many real neighbourhoods contain each generated sample, over k (fidelity that
  does not reward outliers; about 1 when the two sets come from one distribution);
* coverage: the share of real samples with a generated sample inside their neighbourhood.

A manifold is the union of balls around each point with the radius to its k-th nearest
neighbour in its own set; k = 3 is the value of the papers' tables. The computation is
``prdc`` 0.2 (Naeem et al.'s own reference code, which also computes Kynkäänniemi's precision and
recall): pairwise Euclidean distances, so memory grows as N x M. tests/test_prdc.py checks it
against an independent brute-force computation.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from prdc import compute_prdc

from .frechet import MetricError

PRDC_K = 3


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float
    k: int


def _checked(features: np.ndarray, name: str, k: int) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2:
        raise MetricError(f"The {name} features must be a 2-d array (samples x width); got shape {array.shape}.")
    if len(array) < k + 1:
        raise MetricError(f"Precision/recall with k = {k} needs at least {k + 1} {name} samples (each needs k "
                          f"neighbours besides itself); got {len(array)}.")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise MetricError(f"{bad} of the {len(array)} {name} feature vectors hold NaN or infinite values.")
    return array.astype(np.float64, copy=False)


def prdc(real: np.ndarray, generated: np.ndarray, k: int = PRDC_K) -> PRDC:
    """Precision, recall, density and coverage of ``generated`` against ``real`` features (N x D, M x D)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricError(f"k (nearest neighbours) must be a whole number >= 1; got {k!r}.")
    real, generated = _checked(real, "real", k), _checked(generated, "generated", k)
    if real.shape[1] != generated.shape[1]:
        raise MetricError(f"The real and generated features differ in width ({real.shape[1]} vs "
                          f"{generated.shape[1]}): they must come from the same feature extractor.")
    with contextlib.redirect_stdout(io.StringIO()):  # the library prints the set sizes
        values = compute_prdc(real_features=real, fake_features=generated, nearest_k=int(k))
    return PRDC(precision=float(values["precision"]), recall=float(values["recall"]),
                density=float(values["density"]), coverage=float(values["coverage"]), k=int(k))
