"""The Fréchet distance and KID between two sets of features: the maths, no networks."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from pipelines.errors import InputError


class MetricError(InputError):
    """A metric that cannot be computed: missing/empty folder, unknown backend, too few images."""


# --- the formulas --------------------------------------------------------------------------

def check_pair(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = np.asarray(fa, dtype=np.float64), np.asarray(fb, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise MetricError(f"Feature arrays must be (N, D) with the same D; got {fa.shape} and {fb.shape}.")
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        raise MetricError(f"FID/KID need at least 2 images per set; got {fa.shape[0]} and {fb.shape[0]}.")
    if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        raise MetricError("Features contain NaN or inf (broken images or network?).")
    return fa, fb


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> float:
    """Tr sqrtm(S_a S_b) for S = A^T A / (n - 1), A the centred features, computed exactly.

    Written by hand because clean-fid's (and pytorch-fid's) ``scipy.linalg.sqrtm`` of the
    2048x2048 product is slow on a CPU and, with N < 2048 (rank-deficient covariances), errs by
    ~1e-4 -- a set against itself does not give 0. The non-zero eigenvalues of S_a S_b are the
    squared singular values of A B^T / sqrt((n_a-1)(n_b-1)), so the trace is that matrix's nuclear
    norm: no matrix square root, no eigenvalues of a covariance. When N is below the feature width
    the product lives in the N-dimensional space of the samples (A B^T is n_a x n_b); above it, each
    side is first reduced by QR to at most D rows.
    """
    if max(n_a, n_b) > a.shape[1]:
        a, b = np.linalg.qr(a, mode="r"), np.linalg.qr(b, mode="r")
    m = torch.from_numpy(np.asarray(a, dtype=np.float64)) @ torch.from_numpy(np.asarray(b, dtype=np.float64)).T
    return nuclear_norm(m) / float(np.sqrt((n_a - 1) * (n_b - 1)))


def nuclear_norm(m: torch.Tensor) -> float:
    """The sum of a float64 matrix's singular values, through the eigenvalues of its smaller Gram matrix (torch's
    eigvalsh: much faster than an SVD here)."""
    return trace_sqrt_psd(m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T)


def trace_sqrt_psd(gram: torch.Tensor) -> float:
    """Tr sqrt(G) of a symmetric positive semi-definite float64 matrix: the sum of its eigenvalues' square roots."""
    return float(torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum())


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run many small eigenproblems on one thread (set once around them: each change of the thread count
    restarts the thread pool). LAPACK's symmetric eigensolver gains little from a second core (632x632:
    21 ms on one thread, 19 ms on two, idle), and when another process keeps the cores busy its threads
    wait on each other (0.35-2.7 s on two threads against 0.04 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fid_from_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (unbiased covariances).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr sqrt(S_a S_b); same definition as
    clean-fid's ``frechet_distance`` on ``np.cov`` statistics, evaluated exactly (see
    ``_trace_sqrt_product``). Agrees with the sqrtm route to ~1e-6 relative; a set against
    itself gives 0 to round-off (~1e-12).
    """
    fa, fb = check_pair(fa, fb)
    n_a, n_b = fa.shape[0], fb.shape[0]
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    a, b = fa - mu_a, fb - mu_b
    tr_a = float(np.einsum("ij,ij->", a, a)) / (n_a - 1)
    tr_b = float(np.einsum("ij,ij->", b, b)) / (n_b - 1)
    diff = mu_a - mu_b
    return float(diff @ diff + tr_a + tr_b - 2.0 * _trace_sqrt_product(a, b, n_a, n_b))


MIN_KID_STD_IMAGES = 4  # below this, no two subsets of half the set can differ enough to mean anything


def kid_subset_for(n_a: int, n_b: int, requested: int = 1000) -> int:
    """The KID subset size: ``requested`` (clean-fid's 1,000), but always fewer than the smaller set.

    clean-fid and torchmetrics draw subsets of min(requested, N); at N <= requested every
    subset is the whole set and the standard deviation over subsets is 0 by construction,
    which reads as certainty. Half the smaller set keeps subsets different, so their spread
    says something (it is the spread of a KID over m = N/2 images: an upper bound on that of
    the full-N estimate).
    """
    n = min(n_a, n_b)
    if requested < n:
        return requested
    return n // 2 if n >= MIN_KID_STD_IMAGES else n


def kid_from_features(
    fa: np.ndarray, fb: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float | None]:
    """KID (mean, std over subsets): unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3.

    Subsets have :func:`kid_subset_for` images, so they differ; the std is None when the
    sets are too small for that (under ``MIN_KID_STD_IMAGES``). A set against itself gives
    a small negative value (the estimator assumes independent sets). The per-subset MMD is
    torchmetrics' ``poly_mmd``; subsets are drawn here, with a seeded generator, because
    clean-fid's ``kernel_distance`` uses the global NumPy RNG and returns no std, and
    torchmetrics' class uses the global torch RNG and refuses N < subset_size.
    """
    fa, fb = check_pair(fa, fb)
    if subsets < 1:
        raise MetricError(f"KID needs at least one subset, got {subsets}.")
    m = kid_subset_for(fa.shape[0], fb.shape[0], subset_size)
    whole = m == min(fa.shape[0], fb.shape[0])
    rng = np.random.default_rng(seed)
    mmd_of = _subset_mmd(torch.from_numpy(fa), torch.from_numpy(fb))
    scores = np.empty(1 if whole else subsets)
    for s in range(len(scores)):
        ia = torch.from_numpy(rng.choice(fa.shape[0], m, replace=False))
        ib = torch.from_numpy(rng.choice(fb.shape[0], m, replace=False))
        scores[s] = mmd_of(ia, ib)
    return float(scores.mean()), None if whole else float(scores.std())


KID_KERNEL_ROWS = 4096  # up to this many images per set, the kernels are computed once (3 x at most 134 MB)


def _subset_mmd(ta: torch.Tensor, tb: torch.Tensor):
    """A function of two index sets giving the MMD^2 of those rows (torchmetrics' kernel and estimator).

    torchmetrics' ``poly_mmd`` recomputes the three kernels for every subset; up to ``KID_KERNEL_ROWS`` images
    they are computed once and each subset reads its blocks (100 subsets of 500 from 1,000 + 1,000 images:
    16 s became about 1 s, on 2 busy cores), with the same estimator, so the values agree to round-off.
    """
    # imported here: torchmetrics takes seconds to import, and most commands never compute a KID
    from torchmetrics.image.kid import maximum_mean_discrepancy, poly_kernel, poly_mmd

    if max(len(ta), len(tb)) > KID_KERNEL_ROWS:
        return lambda ia, ib: float(poly_mmd(ta[ia], tb[ib]))
    k_aa, k_bb, k_ab = poly_kernel(ta, ta), poly_kernel(tb, tb), poly_kernel(ta, tb)
    return lambda ia, ib: float(maximum_mean_discrepancy(k_aa[ia][:, ia], k_ab[ia][:, ib], k_bb[ib][:, ib]))

