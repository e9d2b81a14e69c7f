"""Small-N honesty for FID: bootstrap intervals and the extrapolated FID-infinity.

FID is biased at finite N (it falls as N grows, by roughly k/N) and noisy; at the N a CPU
allows, two models' FIDs can differ by less than either's uncertainty. Neither clean-fid
nor torchmetrics reports either effect, so this module adds, for a generated set against
fixed reference features:

* a bootstrap 95 % interval (resampling the *generated* set with replacement), and
* FID-infinity of Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where
  to find them" (CVPR 2020): FID at several subset sizes N_i of the generated set, a least-
  squares line FID = FID_inf + k / N_i, read at 1/N = 0.

Both need hundreds of FIDs against the same reference, so they share :class:`FidAgainst`,
which precomputes everything that depends on the reference alone. With R the reference's
centred features reduced by QR (at most min(N_ref, D) x D) and B a centred subset of the
generated features, Tr sqrt(S_ref S_gen) is the nuclear norm of R B^T / sqrt(...) (see
``fid._trace_sqrt_product``), and R B^T is a column subset of one precomputed product
``R X_gen^T``, re-centred -- so one resample costs a small eigenproblem, not a pass over D^2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ldm_eval.metrics.frechet import (
    MetricError,
    check_pair,
    fid_from_features,
    nuclear_norm,
    one_torch_thread,
    trace_sqrt_psd,
)

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 200
FID_INF_POINTS = 8  # subset sizes in the 1/N fit
FID_INF_REPEATS = 4  # random subsets averaged per size (the full set itself is used once)
FID_INF_MIN_SHARE = 0.2  # the smallest subset is this share of N ...
FID_INF_MIN_IMAGES = 10  # ... and at least this many images
MIN_IMAGES_FOR_INTERVALS = 20


@dataclass
class FidWithUncertainty:
    """One FID with its bootstrap interval and extrapolation; None (with ``note``) where N is too small."""

    fid: float
    n: int  # generated images
    n_reference: int
    ci_low: float | None = None
    ci_high: float | None = None
    resamples: int = 0
    fid_inf: float | None = None
    fid_inf_slope: float | None = None  # k in FID_N = FID_inf + k / N
    fid_inf_sizes: tuple[int, ...] = ()
    note: str = ""


class FidAgainst:
    """FIDs of subsets and resamples of one generated set against fixed reference features."""

    def __init__(self, reference: np.ndarray, generated: np.ndarray) -> None:
        ref, gen = check_pair(reference, generated)
        self.reference, self.generated = ref, gen
        self.n_ref = ref.shape[0]
        self.mu_ref = ref.mean(axis=0)
        centred = ref - self.mu_ref
        self.tr_ref = float(np.einsum("ij,ij->", centred, centred)) / (self.n_ref - 1)
        # R: the centred features themselves when N_ref <= D, else their QR factor (D x D, same singular values)
        r = centred if self.n_ref <= centred.shape[1] else np.linalg.qr(centred, mode="r")
        self.cross = torch.from_numpy(np.asarray(r, dtype=np.float64) @ np.asarray(gen, dtype=np.float64).T)
        self.sq_norms = np.einsum("ij,ij->i", gen.astype(np.float64), gen.astype(np.float64))
        # With no more generated images than R has rows, every resample's Gram matrix is read off C^T C (n x n,
        # computed once) instead of multiplying out R's side each time: half of a resample's cost at N = 1,000.
        self.kernel = self.cross.T @ self.cross if gen.shape[0] <= self.cross.shape[0] else None

    def fid_of(self, index: np.ndarray) -> float:
        """FID of the generated rows ``index`` (repeats allowed: a bootstrap resample).

        A resample's repeated rows enter once, weighted by their count: the Gram matrix, and so the nuclear
        norm, is unchanged, and it is ~63 % as wide (a quarter of the eigenvalue work at N = 1,000).
        """
        m = len(index)
        weights = np.bincount(index, minlength=self.generated.shape[0]).astype(np.float64)
        mu = weights @ self.generated / m
        tr_gen = (float(weights @ self.sq_norms) - m * float(mu @ mu)) / (m - 1)
        trace_sqrt = self._trace_sqrt(weights, m) / np.sqrt((self.n_ref - 1) * (m - 1))
        diff = self.mu_ref - mu
        return float(diff @ diff + self.tr_ref + tr_gen - 2.0 * trace_sqrt)

    def _trace_sqrt(self, weights: np.ndarray, m: int) -> float:
        """The nuclear norm of R (x_j - mu) over the resample: each distinct row once, scaled by sqrt(count)."""
        rows = np.flatnonzero(weights)
        r, w = torch.from_numpy(rows), torch.from_numpy(weights[rows])
        scale = w.sqrt()
        if self.kernel is None:
            cross = self.cross[:, r]
            return nuclear_norm((cross - (cross @ w / m)[:, None]) * scale)
        k = self.kernel[r][:, r]  # c_i . c_j; centred: minus c_i . c_mean and c_mean . c_j, plus |c_mean|^2
        kw = k @ w / m
        gram = (k - kw[:, None] - kw[None, :] + float(w @ kw) / m) * (scale[:, None] * scale[None, :])
        return trace_sqrt_psd(gram)

    def fid_of_both(self, ref_index: np.ndarray, gen_index: np.ndarray) -> float:
        """FID of resampled rows of both sets (repeats allowed), each set's distinct rows weighted by their counts."""
        stats = [_weighted(features, index) for features, index in ((self.reference, ref_index),
                                                                      (self.generated, gen_index))]
        (centred_a, mu_a, tr_a, m_a), (centred_b, mu_b, tr_b, m_b) = stats
        trace_sqrt = nuclear_norm(centred_a @ centred_b.T) / np.sqrt((m_a - 1) * (m_b - 1))
        diff = mu_a - mu_b
        return float(diff @ diff + tr_a + tr_b - 2.0 * trace_sqrt)

    def bootstrap(self, resamples: int, seed: int, fid: float, both: bool = False) -> tuple[float, float]:
        """95 % interval of the FID from resampling the generated set (``both``: and the reference set, so the
        reference draw's own variance is in it too), re-centred on the FID itself.

        Resampling with replacement leaves ~63 % distinct images, so every resampled FID carries
        a larger small-N bias than the FID itself and the resamples sit well above it (often
        not overlapping it at all). Their *spread* is what the bootstrap measures; the interval
        is F + (q - mean of resamples), F the exact ``fid`` given, for the 2.5 % and 97.5 %
        quantiles q, so it holds F and its width is the resamples' spread. (The plain percentile interval would exclude F, and
        the "basic" 2F - q overcorrects by the same shift.)
        """
        rng = np.random.default_rng(seed)
        n = self.generated.shape[0]
        with one_torch_thread():
            values = self._resampled(rng, n, resamples, both)
        alpha = (1 - CONFIDENCE) / 2
        q_low, q_high = np.quantile(values, [alpha, 1 - alpha]) - values.mean()
        return max(0.0, fid + float(q_low)), fid + float(q_high)

    def _resampled(self, rng: np.random.Generator, n: int, resamples: int, both: bool) -> np.ndarray:
        if both:
            values = np.array([self.fid_of_both(rng.integers(0, self.n_ref, self.n_ref), rng.integers(0, n, n))
                               for _ in range(resamples)])
        else:
            values = np.array([self.fid_of(rng.integers(0, n, n)) for _ in range(resamples)])
        return values

    def extrapolate(self, seed: int, points: int = FID_INF_POINTS,
                    repeats: int = FID_INF_REPEATS) -> tuple[float, float, tuple[int, ...]]:
        """(FID_inf, slope k, sizes): the least-squares line through (1/N_i, mean FID of N_i-subsets)."""
        n = self.generated.shape[0]
        smallest = max(FID_INF_MIN_IMAGES, int(FID_INF_MIN_SHARE * n))
        sizes = tuple(sorted({int(round(s)) for s in np.linspace(smallest, n, points)}))
        rng = np.random.default_rng(seed)
        means = []
        with one_torch_thread():
            for size in sizes:
                draws = 1 if size == n else repeats
                means.append(np.mean([self.fid_of(rng.choice(n, size, replace=False)) for _ in range(draws)]))
        slope, intercept = np.polyfit(1.0 / np.array(sizes, dtype=float), np.array(means), 1)
        return float(intercept), float(slope), sizes


def _weighted(features: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, np.ndarray, float, int]:
    """A resample's distinct rows, centred on its mean and scaled by sqrt(count); the mean, Tr(cov) and size."""
    rows, counts = np.unique(index, return_counts=True)
    weights, x, m = counts.astype(np.float64), features[rows].astype(np.float64), len(index)
    mu = weights @ x / m
    tr = (float(weights @ np.einsum("ij,ij->i", x, x)) - m * float(mu @ mu)) / (m - 1)
    return torch.from_numpy((x - mu) * np.sqrt(weights)[:, None]), mu, tr, m


def fid_with_uncertainty(reference: np.ndarray, generated: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = 0, resample_reference: bool = False) -> FidWithUncertainty:
    """FID (exact), its bootstrap 95 % interval and FID-infinity, for generated features against a reference.

    The interval resamples the generated set (the reference held fixed, as a sweep compares models against one
    draw of real images); ``resample_reference`` resamples both, adding the reference draw's own variance. Below ``MIN_IMAGES_FOR_INTERVALS`` generated images neither interval nor extrapolation
    means anything; they are left None and ``note`` says why.
    """
    if resamples < 0:
        raise MetricError(f"The number of bootstrap resamples cannot be negative (got {resamples}).")
    fid = fid_from_features(reference, generated)
    out = FidWithUncertainty(fid=fid, n=int(len(generated)), n_reference=int(len(reference)))
    if out.n < MIN_IMAGES_FOR_INTERVALS:
        out.note = (f"N = {out.n} is too small for an interval or FID-infinity "
                    f"(they need at least {MIN_IMAGES_FOR_INTERVALS} images)")
        return out
    against = FidAgainst(reference, generated)
    if resamples:
        out.ci_low, out.ci_high = against.bootstrap(resamples, seed, fid, both=resample_reference)
        out.resamples = resamples
    out.fid_inf, out.fid_inf_slope, out.fid_inf_sizes = against.extrapolate(seed)
    return out
