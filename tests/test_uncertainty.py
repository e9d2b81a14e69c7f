"""Small-N honesty on real images: FID-infinity, bootstrap intervals and KID's spread.

Features here are the images' own pixels (Fashion-MNIST at 32 px: 1,024-d), so the tests
run the real FID code on real images in seconds; the statistics do not care which network
made the features, only that N is small against their dimension, as with Inception at the
N a CPU allows.
"""
from __future__ import annotations

import numpy as np
import pytest

from ldm_eval.metrics.frechet import (
    fid_from_features,
    kid_from_features,
    kid_subset_for,
)
from ldm_eval.metrics.uncertainty import (
    MIN_IMAGES_FOR_INTERVALS,
    FidAgainst,
    fid_with_uncertainty,
)
from pipelines.data import load_dataset

FULL_N = 4000


@pytest.fixture(scope="module")
def pixel_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two pairs of real image sets from one distribution each: FID at full N is near 0, the small-N bias is not."""
    train = load_dataset("fashion-mnist", 32, 1, split="train")
    test = load_dataset("fashion-mnist", 32, 1, split="test")

    def feats(images) -> np.ndarray:
        return (images.float() / 255).flatten(1).numpy().astype(np.float64)

    upper_train = train.images[train.labels["class"] >= 5]
    upper_test = test.images[test.labels["class"] >= 5]
    return {
        "all classes, train vs test": (feats(train.images[:FULL_N]), feats(test.images[:FULL_N])),
        "classes 5-9, train vs test": (feats(upper_train[:FULL_N]), feats(upper_test[:FULL_N])),
    }


def test_fast_subset_fid_matches_the_exact_formula(pixel_sets) -> None:
    ref, gen = pixel_sets["all classes, train vs test"]
    ref, gen = ref[:600], gen[:300]
    against = FidAgainst(ref, gen)
    assert against.fid_of(np.arange(300)) == pytest.approx(fid_from_features(ref, gen), rel=1e-6)
    rows = np.random.default_rng(0).choice(300, 120, replace=False)
    assert against.fid_of(rows) == pytest.approx(fid_from_features(ref, gen[rows]), rel=1e-6)


@pytest.mark.parametrize("pair", ["all classes, train vs test", "classes 5-9, train vs test"])
def test_fid_infinity_from_500_lands_closer_to_the_full_n_fid(pixel_sets, pair: str) -> None:
    ref, gen = pixel_sets[pair]
    full = fid_from_features(ref, gen)
    for draw in range(3):  # three disjoint sets of 500 samples: not one lucky draw
        subset = gen[draw * 500:(draw + 1) * 500]
        est = fid_with_uncertainty(ref, subset, resamples=0, seed=draw)
        assert est.fid == pytest.approx(fid_from_features(ref, subset))
        assert est.fid - full > 1.0  # the small-N bias this corrects is real here
        assert abs(est.fid_inf - full) < abs(est.fid - full), (pair, draw, full, est)
        assert est.fid_inf_sizes[-1] == 500 and est.fid_inf_sizes[0] == 100


def test_intervals_hold_the_fid_and_shrink_as_n_grows(pixel_sets) -> None:
    ref, gen = pixel_sets["all classes, train vs test"]
    widths = []
    for n in (100, 300, 900):
        est = fid_with_uncertainty(ref, gen[:n], resamples=50, seed=1)
        assert est.ci_low <= est.fid <= est.ci_high
        widths.append(est.ci_high - est.ci_low)
    assert widths[0] > widths[1] > widths[2] > 0


def test_too_few_images_for_an_interval_says_so(pixel_sets) -> None:
    ref, gen = pixel_sets["all classes, train vs test"]
    est = fid_with_uncertainty(ref[:100], gen[: MIN_IMAGES_FOR_INTERVALS - 1])
    assert est.ci_low is None and est.fid_inf is None and "too small" in est.note


def test_kid_std_needs_subsets_smaller_than_n(pixel_sets) -> None:
    ref, gen = pixel_sets["all classes, train vs test"]
    # N = 1,000 with clean-fid's subset size of 1,000: every subset would be the whole set
    assert kid_subset_for(1000, 1000, 1000) == 500
    assert kid_subset_for(5000, 5000, 1000) == 1000
    kid, std = kid_from_features(ref[:1000], gen[:1000], subsets=20, subset_size=1000)
    assert std is not None and std > 0
    kid, std = kid_from_features(ref[:3], gen[:3], subsets=20)  # too few images for two different subsets
    assert std is None


@pytest.mark.parametrize("n_ref, n_gen", [(120, 90), (36, 30)])  # wider than the features; the kernel path
def test_a_resample_is_the_exact_fid_of_the_resampled_sets(n_ref: int, n_gen: int) -> None:
    """A resample (and the both-sides path, on weighted distinct rows) gives the FID of the resampled sets themselves,
    whether its Gram matrix comes from the reference's side or from the precomputed kernel of the generated side."""
    from ldm_eval.metrics.frechet import fid_from_features
    from ldm_eval.metrics.uncertainty import FidAgainst

    rng = np.random.default_rng(3)
    ref, gen = rng.standard_normal((n_ref, 40)), rng.standard_normal((n_gen, 40)) * 1.3 + 0.1
    against = FidAgainst(ref, gen)
    assert (against.kernel is None) == (n_gen > 40)
    ia, ib = rng.integers(0, n_ref, n_ref), rng.integers(0, n_gen, n_gen)
    assert against.fid_of(ib) == pytest.approx(fid_from_features(ref, gen[ib]), rel=1e-6)
    assert against.fid_of_both(ia, ib) == pytest.approx(fid_from_features(ref[ia], gen[ib]), rel=1e-6)
    assert against.fid_of_both(np.arange(n_ref), ib) == pytest.approx(against.fid_of(ib), rel=1e-6)


def test_kid_with_kernels_computed_once_equals_torchmetrics_per_subset(monkeypatch) -> None:
    from ldm_eval.metrics import frechet

    rng = np.random.default_rng(4)
    fa, fb = rng.standard_normal((60, 16)), rng.standard_normal((50, 16)) + 0.2
    once = frechet.kid_from_features(fa, fb, subsets=20, subset_size=30)
    monkeypatch.setattr(frechet, "KID_KERNEL_ROWS", 0)  # every subset through torchmetrics' poly_mmd
    per_subset = frechet.kid_from_features(fa, fb, subsets=20, subset_size=30)
    assert once[0] == pytest.approx(per_subset[0], rel=1e-9) and once[1] == pytest.approx(per_subset[1], rel=1e-9)
    assert once[1] > 0


def test_resampling_the_reference_too_widens_the_interval() -> None:
    from ldm_eval.metrics.uncertainty import fid_with_uncertainty

    rng = np.random.default_rng(4)
    ref, gen = rng.standard_normal((200, 16)), rng.standard_normal((200, 16)) * 1.2 + 0.2
    one = fid_with_uncertainty(ref, gen, 200, seed=0)
    both = fid_with_uncertainty(ref, gen, 200, seed=0, resample_reference=True)
    assert both.fid == one.fid and both.ci_high - both.ci_low > one.ci_high - one.ci_low
