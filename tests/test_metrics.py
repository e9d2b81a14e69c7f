"""Metrics on real Fashion-MNIST images: FID/KID (clean-fid Inception, torchmetrics, domain
classifier), the domain classifier itself, and PSNR/SSIM/rFID.

Inception runs at a few images per second on a 2-core CPU, so Inception tests share one
cached set of features on 20 + 20 real images and 20 noise images; the domain backend is
cheap and gets 1,000 images per set.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from conftest import run_cli, write_pngs

from ldm_eval.metrics.domain_classifier import (
    ClassifierError,
    DomainClassifier,
    train_domain_classifier,
)
from ldm_eval.metrics.features import compute_features
from ldm_eval.metrics.fid import (
    FIDResult,
    fid_between_folders,
    fid_between_images,
    torchmetrics_fid,
)
from ldm_eval.metrics.frechet import MetricError, fid_from_features, kid_from_features
from ldm_eval.metrics.reconstruction import reconstruction_metrics
from pipelines.data import FASHION_MNIST_CLASSES, load_dataset
from pipelines.errors import InputError
from pipelines.fidelity import psnr, ssim
from pipelines.images import ImageFormatError, uint8_to_unit

N_INCEPTION = 20
N_DOMAIN = 1000


def scipy_fid(fa: np.ndarray, fb: np.ndarray) -> float:
    """Independent textbook FID: np.cov statistics and scipy.linalg.sqrtm."""
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    s_a, s_b = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # rank-deficient at small N: expected
        covmean = scipy.linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean).real)


def noise_like(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmnist_test():
    return load_dataset("fashion-mnist", 32, split="test")


@pytest.fixture(scope="module")
def fmnist_train():
    return load_dataset("fashion-mnist", 32, split="train")


@pytest.fixture(scope="module")
def inception(fmnist_test):
    """Real A, real B (disjoint) and noise images with their clean-fid Inception features."""
    a = fmnist_test.images[:N_INCEPTION]
    b = fmnist_test.images[N_INCEPTION : 2 * N_INCEPTION]
    noise = noise_like(a)
    return {
        "a": a, "b": b, "noise": noise,
        "fa": compute_features(a, "inception", "cpu"),
        "fb": compute_features(b, "inception", "cpu"),
        "fn": compute_features(noise, "inception", "cpu"),
    }


@pytest.fixture(scope="module")
def classifier(fmnist_train) -> DomainClassifier:
    return train_domain_classifier(fmnist_train.images, fmnist_train.labels["class"], steps=300, batch_size=128, seed=0,
                                   class_names=FASHION_MNIST_CLASSES)


@pytest.fixture(scope="module")
def domain(fmnist_test, classifier):
    a = fmnist_test.images[:N_DOMAIN]
    b = fmnist_test.images[N_DOMAIN : 2 * N_DOMAIN]
    noise = noise_like(a, seed=1)
    return {"a": a, "b": b, "noise": noise, **{
        f"f{k}": compute_features(v, "domain", "cpu", classifier=classifier)
        for k, v in (("a", a), ("b", b), ("n", noise))
    }}


# --- Inception FID ---------------------------------------------------------------------------

def test_inception_features_shape(inception):
    assert inception["fa"].shape == (N_INCEPTION, 2048)
    assert np.isfinite(inception["fa"]).all()


def test_inception_fid_self_is_zero(inception):
    assert abs(fid_from_features(inception["fa"], inception["fa"])) < 1e-6


def test_inception_fid_noise_far_above_real_halves(inception):
    real = fid_from_features(inception["fa"], inception["fb"])
    noise = fid_from_features(inception["fa"], inception["fn"])
    assert 0 < real < noise
    assert noise > 1.5 * real  # measured ~215 vs ~453 at N=20 (small-N bias inflates both)


def test_inception_fid_matches_scipy_sqrtm(inception):
    fa, fb = inception["fa"], inception["fb"]
    assert fid_from_features(fa, fb) == pytest.approx(scipy_fid(fa, fb), rel=1e-3)


def test_nhwc_and_gray_inputs_give_same_features(inception):
    a = inception["a"][:4]  # (4, 1, 32, 32) gray
    nhwc_rgb = a.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    f = compute_features(nhwc_rgb, "inception", "cpu")
    np.testing.assert_allclose(f, inception["fa"][:4], rtol=1e-4, atol=1e-4)


def test_folders_match_in_memory_clean_fid(inception, tmp_path):
    """The folder route is clean-fid's own get_files_features; in memory must agree with it."""
    a, b = inception["a"][:10], inception["b"][:10]
    dir_a = write_pngs(a, tmp_path / "a")
    dir_b = write_pngs(b, tmp_path / "b")
    result = fid_between_folders(dir_a, dir_b, backend="inception", kid=True, device="cpu")
    assert isinstance(result, FIDResult)
    assert (result.n_a, result.n_b, result.backend) == (10, 10, "inception")
    assert "clean" in result.resize and "clean-fid" in result.extractor
    expected = fid_from_features(inception["fa"][:10], inception["fb"][:10])
    assert result.fid == pytest.approx(expected, rel=1e-4)
    assert result.kid is not None and result.kid_subset_size == 5 and result.kid_std > 0  # subsets smaller than N
    assert set(result.to_dict()) >= {"fid", "kid", "kid_std", "backend", "n_a", "n_b", "resize", "device"}


def test_torchmetrics_cross_check(inception):
    """torchmetrics' FrechetInceptionDistance around the same network.

    It cannot match clean-fid exactly: for a custom feature module torchmetrics leaves the
    resize to the module, which (like torchmetrics' own Inception) uses bilinear with
    antialias instead of clean-fid's PIL bicubic, and 32 -> 299 px upsampling magnifies the
    difference. So: finite, same ordering, and within 25 % (measured ~8 % at N=20).
    """
    n = 10
    a, b, noise = inception["a"][:n], inception["b"][:n], inception["noise"][:n]
    tm_real = torchmetrics_fid(a, b, device="cpu")
    tm_noise = torchmetrics_fid(a, noise, device="cpu")
    ours_real = fid_from_features(inception["fa"][:n], inception["fb"][:n])
    ours_noise = fid_from_features(inception["fa"][:n], inception["fn"][:n])
    assert tm_real.backend == "torchmetrics" and "antialias" in tm_real.resize
    assert math.isfinite(tm_real.fid) and math.isfinite(tm_noise.fid)
    assert tm_real.fid < tm_noise.fid and ours_real < ours_noise
    assert tm_real.fid == pytest.approx(ours_real, rel=0.25)
    assert tm_noise.fid == pytest.approx(ours_noise, rel=0.25)


def test_inception_kid(inception):
    fa, fb, fn = inception["fa"], inception["fb"], inception["fn"]
    k_self, _ = kid_from_features(fa, fa, subsets=20, subset_size=1000)  # shrinks to 20
    k_real, _ = kid_from_features(fa, fb, subsets=20)
    k_noise, _ = kid_from_features(fa, fn, subsets=20)
    # x vs itself: the unbiased estimator is slightly negative (shared samples), near 0
    assert abs(k_self) < 0.15 * k_noise
    assert k_noise > k_real


# --- FID formula -----------------------------------------------------------------------------

@pytest.mark.parametrize("n_a,n_b,dim", [(30, 40, 64), (300, 200, 64)])  # N < D and N > D branches
def test_fid_formula_matches_scipy_on_random_features(n_a, n_b, dim):
    rng = np.random.default_rng(0)
    fa = rng.normal(size=(n_a, dim))
    fb = rng.normal(loc=0.3, scale=1.5, size=(n_b, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim)
    assert fid_from_features(fa, fb) == pytest.approx(scipy_fid(fa, fb), rel=1e-3)
    assert abs(fid_from_features(fa, fa)) < 1e-6


def test_too_few_features():
    with pytest.raises(MetricError, match="at least 2 images per set; got 1 and 5"):
        fid_from_features(np.zeros((1, 8)), np.zeros((5, 8)))


# --- domain backend --------------------------------------------------------------------------

def test_domain_classifier_accuracy(classifier, fmnist_test):
    acc = classifier.accuracy(fmnist_test.images, fmnist_test.labels["class"])
    assert acc > 0.80
    pred = classifier.predict(fmnist_test.images[:100])
    assert pred.shape == (100,) and pred.dtype == torch.int64


def test_domain_classifier_save_load_round_trip(classifier, fmnist_test, tmp_path):
    classifier.save(tmp_path / "clf")
    loaded = DomainClassifier.load(tmp_path / "clf")
    x = fmnist_test.images[:64]
    assert loaded.config == classifier.config
    f0, f1 = classifier.features(x), loaded.features(x)
    assert f0.shape == (64, classifier.config.feature_dim)
    np.testing.assert_array_equal(f0, f1)
    assert torch.equal(classifier.predict(x), loaded.predict(x))
    with pytest.raises(ClassifierError, match="No domain classifier in .*nothing-here"):
        DomainClassifier.load(tmp_path / "nothing-here")


def test_domain_fid_and_kid(domain):
    fa, fb, fn = domain["fa"], domain["fb"], domain["fn"]
    assert abs(fid_from_features(fa, fa)) < 1e-6
    real, noise = fid_from_features(fa, fb), fid_from_features(fa, fn)
    assert noise > 10 * real
    assert fid_from_features(fa, fn) == pytest.approx(scipy_fid(fa, fn), rel=1e-3)
    assert real == pytest.approx(scipy_fid(fa, fb), rel=1e-3)
    k_self, _ = kid_from_features(fa, fa, subsets=50, subset_size=200)
    k_real, _ = kid_from_features(fa, fb, subsets=50, subset_size=200)
    k_noise, s_noise = kid_from_features(fa, fn, subsets=50, subset_size=200)
    assert abs(k_self) < 0.05 * k_noise
    assert k_noise > k_real and s_noise >= 0


def test_domain_fid_matches_clean_fid_frechet_distance(domain):
    from cleanfid.fid import fid_from_feats

    fa, fb = domain["fa"], domain["fb"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's LinAlgWarning / deprecation of sqrtm(disp=...)
        reference = fid_from_feats(fa, fb)
    assert fid_from_features(fa, fb) == pytest.approx(reference, rel=1e-3)


def test_domain_between_images_and_folders(domain, classifier, tmp_path):
    a, noise = domain["a"][:50], domain["noise"][:50]
    in_memory = fid_between_images(a, noise, backend="domain", kid=True, classifier=classifier, device="cpu")
    assert in_memory.backend == "domain" and in_memory.kid is not None and in_memory.n_a == 50
    classifier.save(tmp_path / "clf")
    from_folders = fid_between_folders(
        write_pngs(a, tmp_path / "a"), write_pngs(noise, tmp_path / "n"),
        backend="domain", kid=True, classifier_path=tmp_path / "clf", device="cpu",
    )
    assert from_folders.fid == pytest.approx(in_memory.fid, rel=1e-6)
    assert from_folders.kid == pytest.approx(in_memory.kid, rel=1e-6)


def test_rotation_classifier_without_labels(fmnist_train, fmnist_test):
    clf = train_domain_classifier(fmnist_train.images[:5000], None, steps=60, batch_size=64, seed=0)
    assert clf.config.task == "rotation" and clf.config.num_classes == 4
    assert clf.accuracy(fmnist_test.images[:500]) > 0.5  # chance is 0.25
    assert clf.features(fmnist_test.images[:8]).shape == (8, 128)


# --- errors ----------------------------------------------------------------------------------

def _one_png(folder: Path, n: int = 1) -> Path:
    return write_pngs(noise_like(torch.zeros(n, 1, 16, 16, dtype=torch.uint8)), folder)


def test_folder_errors(tmp_path):
    good = _one_png(tmp_path / "good", n=3)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    single = _one_png(tmp_path / "single", n=1)
    with pytest.raises(MetricError, match="does not exist"):
        fid_between_folders(tmp_path / "missing", good)
    with pytest.raises(MetricError, match="No images"):
        fid_between_folders(good, empty)
    with pytest.raises(MetricError, match="Unknown backend"):
        fid_between_folders(good, good, backend="vgg")  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="at least 2"):
        fid_between_folders(good, single)
    with pytest.raises(MetricError, match="classifier_path"):
        fid_between_folders(good, good, backend="domain")
    with pytest.raises(MetricError, match="No domain classifier"):
        fid_between_folders(good, good, backend="domain", classifier_path=tmp_path / "nope")
    assert issubclass(MetricError, ValueError)


def test_folders_skip_unreadable_files_and_read_16_bit_png(inception, tmp_path, capsys):
    """A truncated JPEG and a text file named .png are skipped and counted, not a traceback;
    a 16-bit greyscale PNG reads as its image (PIL's own convert would make it all white)."""
    from PIL import Image

    from ldm_eval.cli import main

    a = write_pngs(inception["a"][:3], tmp_path / "a")
    jpeg = tmp_path / "whole.jpg"
    Image.fromarray(inception["b"][0, 0].numpy()).save(jpeg, quality=95)
    (a / "cut.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (a / "notes.png").write_text("not an image")
    gray8 = inception["b"][:3, 0].numpy()
    b8, b16 = tmp_path / "b8", tmp_path / "b16"
    b8.mkdir(), b16.mkdir()
    for i, img in enumerate(gray8):
        Image.fromarray(img).save(b8 / f"{i}.png")
        Image.fromarray(img.astype(np.uint16) * 257).save(b16 / f"{i}.png")  # the same picture in 16 bits
    assert Image.open(b16 / "0.png").mode.startswith("I")
    eight = fid_between_folders(a, b8, device="cpu")
    sixteen = fid_between_folders(a, b16, device="cpu")
    assert (sixteen.n_a, sixteen.n_b) == (3, 3)
    assert sorted(Path(p).name for p in sixteen.skipped_a) == ["cut.jpg", "notes.png"] and not sixteen.skipped_b
    assert sixteen.fid == pytest.approx(eight.fid, rel=1e-6)
    assert "too small" in sixteen.small_n_warning
    assert main(["fid", str(a), str(b16), "--intervals", "false"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 unreadable file(s)" in out and "cut.jpg" in out and "N = 3 is too small" in out


def test_unknown_backend_and_bad_images():
    x = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(MetricError, match="Unknown"):
        compute_features(x, "vgg")  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="classifier"):
        compute_features(x, "domain")
    with pytest.raises(ImageFormatError, match="Images must be uint8 in \\[0, 255\\], got dtype torch.float32"):
        compute_features(x.float(), "inception")


# --- reconstruction ----------------------------------------------------------------------------

def test_psnr_ssim(fmnist_test):
    real = uint8_to_unit(fmnist_test.images[:64])
    assert psnr(real, real) == math.inf
    assert ssim(real, real) == pytest.approx(1.0, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    values = []
    for sigma in (0.02, 0.1, 0.3):
        noisy = (real + sigma * torch.randn(real.shape, generator=gen)).clamp(0, 1)
        values.append((psnr(real, noisy), ssim(real, noisy)))
    assert values[0][0] > values[1][0] > values[2][0] > 0
    assert 1.0 > values[0][1] > values[1][1] > values[2][1]


def test_reconstruction_metrics(fmnist_test):
    real = fmnist_test.images[:8]
    recon = (real.float() + torch.randn(real.shape, generator=torch.Generator().manual_seed(0)) * 20).clamp(0, 255).byte()
    out = reconstruction_metrics(real, recon, device="cpu")
    assert out.n == 8 and 10 < out.psnr < 40 and 0 < out.ssim < 1
    assert out.rfid is not None and math.isfinite(out.rfid) and out.rfid > 0
    assert out.rfid_backend.startswith("inception")
    single = reconstruction_metrics(real[:1], real[:1], device="cpu")
    assert single.rfid is None and "at least 2" in single.rfid_skipped and single.psnr == math.inf
    with pytest.raises(InputError, match="differ in shape"):
        reconstruction_metrics(real[:2], real[:3])


def test_bench_fid_prints_every_runtime_with_the_same_features(tmp_path, capsys):
    """``bench-fid`` times each way of running the network on real images, and each gives the
    features of the former PyTorch path to 1e-4 (ONNX Runtime, the CPU default, included)."""
    from ldm_eval.cli import main

    out = tmp_path / "bench.md"
    assert main(["bench-fid", "--images", "4", "--rounds", "1", "--batch-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torch (before)" in printed and "onnxruntime" in printed and out.read_text().strip() in printed
    rows = [line for line in printed.splitlines() if line.startswith("| torch") or line.startswith("| onnx")]
    assert len(rows) == 3 and all(line.rstrip(" |").endswith("True") for line in rows)


def test_each_backends_fid_rises_under_blur_and_jpeg(inception, domain, classifier):
    """What each backend sees, on real Fashion-MNIST images: FID against other real images as they
    are, then the same images blurred or JPEG-compressed. Both backends rise under blur and heavy
    JPEG (measured here: Inception at N = 20, whose real-vs-real floor is ~215 from small-N bias,
    x1.12 / x1.45 / x1.11 for blur 1 / blur 2 / JPEG 10; the domain features at N = 500 x6.5 /
    x31 / x2.2). The images are fixed and the features deterministic: the margins are not noise."""
    from ldm_eval.bench.fid import backend_sensitivity

    table = backend_sensitivity(inception["a"], inception["b"], {"inception": lambda x: compute_features(
        x, "inception", "cpu")})
    table = pd.concat([table, backend_sensitivity(domain["a"][:500], domain["b"][:500], {
        "domain": lambda x: compute_features(x, "domain", "cpu", classifier=classifier)})])
    x_real = {(r.backend, r.images): r.x_real for r in table.itertuples()}
    for how, inception_rise, domain_rise in (("blur radius 1", 1.05, 2.0), ("blur radius 2", 1.3, 5.0),
                                              ("JPEG quality 10", 1.05, 1.5)):
        assert x_real[("inception", how)] > inception_rise, (how, x_real)
        assert x_real[("domain", how)] > domain_rise, (how, x_real)
    assert x_real[("inception", "blur radius 2")] > x_real[("inception", "blur radius 1")]  # more blur, higher


def test_recognisability_sees_real_images_one_class_and_noise(classifier, fmnist_test):
    """Real images pass the zoo's bar; a model that draws one class, or noise, does not."""
    from ldm_eval.metrics.recognisability import recognisability

    real = fmnist_test.images[:500]
    scores = recognisability(real, classifier, real_uint8=fmnist_test.images[500:1000])
    assert set(scores.class_shares) == set(FASHION_MNIST_CLASSES)
    assert abs(sum(scores.class_shares.values()) - 1) < 1e-6
    assert all(0.05 <= v <= 0.2 for v in scores.class_shares.values()), scores  # a stratified-ish real draw
    assert scores.confident_share > 0.6 and abs(scores.confident_share - scores.real_confident_share) < 0.1
    trousers = fmnist_test.images[fmnist_test.labels["class"] == 1][:200]
    one_class = recognisability(trousers, classifier)
    assert one_class.class_shares["trouser"] > 0.9 and not one_class.meets_bar()
    noise = recognisability(noise_like(real[:200], seed=3), classifier)
    assert noise.confident_share < scores.confident_share and not noise.meets_bar()
    assert "of 200 samples assigned to one class" in noise.sentence()


def test_reconstructions_set_a_latent_models_ceiling(classifier, fmnist_test, tiny_ldm):
    """The ceiling is the judge's share on the autoencoder's output for real images; pixel space has none."""
    from ldm_eval.metrics.recognisability import recognisability, reconstructions
    from pipelines.first_stage import FirstStage
    from pipelines.loading import load_pipeline

    real = fmnist_test.images[:300]
    assert reconstructions(FirstStage(None, 1), real) is None
    stage = load_pipeline(tiny_ldm).first_stage  # a 16 px autoencoder, barely trained
    small = torch.nn.functional.interpolate(real.float(), size=16, mode="area").round().to(torch.uint8)
    recon = reconstructions(stage, small, batch_size=128)
    assert recon.shape == small.shape and recon.dtype == torch.uint8 and not torch.equal(recon, small)
    # a first stage that keeps only an 8x8 sketch of each garment: the judge is less sure of what it gives back
    sketch = torch.nn.functional.interpolate(torch.nn.functional.interpolate(real.float(), size=8, mode="area"),
                                             size=32, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    scores = recognisability(real, classifier, real_uint8=real, reconstructed_uint8=sketch)
    assert scores.reconstructed_confident_share == recognisability(sketch, classifier).confident_share
    assert scores.reconstructed_confident_share < scores.real_confident_share - 0.1, scores
    assert f"their reconstructions by this autoencoder: {scores.reconstructed_confident_share:.0%}" in scores.sentence()


def test_shifted_batches_move_each_image_and_keep_its_size():
    """The judge's translation augmentation: every image moves by at most ``shift`` px, edges replicated."""
    from ldm_eval.metrics.domain_classifier import _shift_batch

    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.uint8).reshape(2, 1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    moved = [_shift_batch(x, 2, generator) for _ in range(20)]
    assert all(m.shape == x.shape and m.dtype == torch.uint8 for m in moved)
    offsets = set()
    for m in moved:
        for i in range(2):  # the centre 4x4 of the original is inside the moved image at some offset of -2..2
            hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                    if torch.equal(m[i, :, 2 + dy : 6 + dy, 2 + dx : 6 + dx], x[i, :, 2:6, 2:6])]
            assert len(hits) == 1, hits
            offsets.add(hits[0])
    assert len(offsets) > 5  # the offsets vary
    with pytest.raises(ClassifierError, match="shift must be 0 to a quarter"):
        train_domain_classifier(x.repeat(4, 1, 2, 2), torch.tensor([0, 1] * 4), steps=1, shift=5)


def test_train_classifier_command_writes_a_judge_with_its_real_image_quality(tiny_ldm, tmp_path, capsys):
    """``train-classifier``: a judge measured on the held-out split, whose quality ``recognise`` repeats."""
    import json

    judge = tmp_path / "judge"
    assert run_cli("train-classifier", "fashion-mnist", "--out", judge, "--resolution", 16, "--steps", 30,
                   "--batch-size", 64, "--width", 8, "--shift", 2) == 0
    printed = capsys.readouterr().out
    quality = json.loads((judge / "held_out.json").read_text())
    assert quality["n"] == 10_000 and quality["shift"] == 2 and quality["label"] == "class"
    assert 0.3 < quality["accuracy"] < 1 and 0 <= quality["confident_share"] <= 1  # 30 steps: well above 10 % chance
    assert f"{quality['accuracy']:.1%} accurate on 10000 real held-out images" in printed
    assert DomainClassifier.load(judge).config.width == 8
    assert run_cli("recognise", tiny_ldm, "--classifier", judge, "--n", 8, "--ddim-steps", 2) == 0
    assert f"judge {judge}: {quality['accuracy']:.1%} accurate" in capsys.readouterr().out
    unlabelled = write_pngs(torch.zeros(8, 3, 16, 16, dtype=torch.uint8), tmp_path / "flat")
    assert run_cli("train-classifier", unlabelled, "--out", tmp_path / "j2", "--resolution", 16, "--steps", 2) == 2
    assert "has no class labels to train a judge on" in capsys.readouterr().err
    assert run_cli("train-classifier", "fashion-mnist", "--out", tmp_path / "j3", "--steps", 0) == 2
    assert "Classifier steps must be a whole number" in capsys.readouterr().err
    assert not (tmp_path / "j2").exists() and not (tmp_path / "j3").exists()


def test_recognise_command_judges_models_with_one_loaded_classifier(tiny_ldm, classifier, tmp_path, capsys):
    """``recognise``: samples of a saved model named by a saved real-data classifier; a size mismatch is refused."""
    import json

    train16 = load_dataset("fashion-mnist", 16, split="train")
    small = train_domain_classifier(train16.images[:512], train16.labels["class"][:512], steps=20, batch_size=64,
                                    seed=0, class_names=FASHION_MNIST_CLASSES)
    small.save(tmp_path / "clf16")
    out = tmp_path / "recognised.json"
    assert run_cli("recognise", tiny_ldm, "--classifier", tmp_path / "clf16", "--real", "fashion-mnist", "--n", 16,
                   "--ddim-steps", 2, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "of 16 samples assigned to one class with probability >= 0.9 (real held-out images: " in printed
    assert "; their reconstructions by this autoencoder: " in printed  # the latent model's own ceiling
    result = json.loads(out.read_text())["models"][str(tiny_ldm)]
    assert result["n"] == 16 and abs(sum(result["class_shares"].values()) - 1) < 1e-6
    assert 0 <= result["real_confident_share"] <= 1 and result["meets_bar"] is False
    assert 0 <= result["reconstructed_confident_share"] <= 1
    ancestral = tmp_path / "ddpm.json"  # the ancestral sampler, for models whose DDIM samples come out soft
    assert run_cli("recognise", tiny_ldm, "--classifier", tmp_path / "clf16", "--n", 4, "--ddim-steps", 3,
                   "--scheduler", "ddpm", "--out", ancestral) == 0
    assert json.loads(ancestral.read_text())["scheduler"] == "ddpm"
    assert run_cli("recognise", tiny_ldm, "--classifier", tmp_path / "clf16", "--scheduler", "euler") == 2
    assert "Unknown sampler 'euler'; choose ddim or ddpm" in capsys.readouterr().err
    classifier.save(tmp_path / "clf32")
    assert run_cli("recognise", tiny_ldm, "--classifier", tmp_path / "clf32") == 2
    assert "draws 1-channel 16 px images; the classifier reads 1-channel 32 px" in capsys.readouterr().err
