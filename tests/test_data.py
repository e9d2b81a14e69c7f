import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.data import DatasetError, load_dataset, parse_utkface_name


def test_fashion_mnist_real_images() -> None:
    train = load_dataset("fashion-mnist", 32)
    test = load_dataset("fashion-mnist", 32, split="test")
    assert train.images.shape == (60000, 1, 32, 32) and test.images.shape == (10000, 1, 32, 32)
    assert train.labels["class"].max() == 9 and train.class_names["class"][9] == "ankle boot"
    assert 50 < float(train.images.float().mean()) < 90  # real clothes on black: mean grey ~73
    rgb = load_dataset("fashion-mnist", 16, channels=3, split="test")
    assert rgb.images.shape == (10000, 3, 16, 16)


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(40):
        mode = ["RGB", "L", "RGBA", "P"][i % 4]
        size = (30 + i, 50 + 2 * i)  # any size, not square
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
        folder = root if i % 2 else root / "sub" / "deeper"
        img.save(folder / f"{20 + i}_{i % 2}_{i % 5}_2017010{i:04d}.jpg.chip.{'png' if mode != 'RGB' else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "nolabel.png").write_bytes((root / next(p.name for p in root.glob("*.png"))).read_bytes()[:60])  # a cut-off PNG


def _load_both_splits(root: Path, **kwargs):
    """Both splits (a tiny folder may leave one empty) and the skip warnings raised."""
    loaded = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for split in ("train", "test"):
            try:
                loaded.append(load_dataset(root, split=split, **kwargs))
            except DatasetError as err:
                assert "No readable images" in str(err)
    return loaded, [str(w.message) for w in caught]


def test_image_folder_recursive_resized_with_labels(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    loaded, messages = _load_both_splits(tmp_path, resolution=24)
    assert sum(len(d) for d in loaded) == 40  # every real image, in one split or the other
    assert all(d.images.shape[1:] == (3, 24, 24) for d in loaded)
    assert sum(int(m.split()[1]) for m in messages if m.startswith("Skipped")) == 3  # txt, broken jpg, cut png
    assert all(set(d.labels) == {"age", "gender", "race", "class"} for d in loaded)
    for d in loaded:  # UTKFace's class is race x gender: 'Asian woman' is race 2, gender 1
        assert (d.labels["class"] == d.labels["race"] * 2 + d.labels["gender"]).all()
        assert d.class_names["class"][2 * 2 + 1] == "Asian woman"
    gray, _ = _load_both_splits(tmp_path, resolution=20, channels=1)
    assert all(d.images.shape[1:] == (1, 20, 20) for d in gray)


def test_utkface_names() -> None:
    assert parse_utkface_name("30_1_2_20170116174525125.jpg.chip.jpg") == {"age": 30, "gender": 1, "race": 2}
    assert parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg") is None  # a field missing
    assert parse_utkface_name("cat.jpg") is None


def test_missing_empty_and_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing", 32)
    with pytest.raises(DatasetError, match="No readable images"):
        load_dataset(tmp_path, 32)
    (tmp_path / "junk.png").write_text("not really a png")
    loaded, messages = _load_both_splits(tmp_path, resolution=32)
    assert loaded == [] and len(messages) == 1 and "junk.png" in messages[0]
    with pytest.raises(DatasetError, match="Resolution"):
        load_dataset("fashion-mnist", 100000)


def test_sixteen_bit_png_small_images_and_tiny_sets_are_read_right_and_warned(tmp_path: Path) -> None:
    """A 16-bit greyscale PNG loads as its picture (PIL's convert clips it to white); images
    smaller than the resolution and a handful of images each get a warning."""
    ramp = np.tile(np.linspace(0, 65535, 20), (20, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(tmp_path, 32, channels=1, split="all")
    row = ds.images[0, 0, 16].numpy().astype(int)
    assert row[0] < 20 and row[-1] > 235 and (np.diff(row) >= 0).all()  # a dark-to-light ramp, not all white
    messages = " ".join(str(w.message) for w in caught)
    assert "smaller than 32 px (down to 20 px)" in messages and "--resolution 20" in messages
    assert "Only 1 image(s)" in messages  # split "all" and "train" warn; a held-out split is small by design
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_dataset(tmp_path, 16, channels=1, split="all")
    assert [str(w.message) for w in caught if "smaller than" in str(w.message)] == []  # 20 px read at 16: no upscaling


def test_representative_order_is_a_seeded_stratified_shuffle() -> None:
    """Every prefix of the reordered held-out set holds each class in its share (file order did not)."""
    from pipelines.data import representative_order

    test = load_dataset("fashion-mnist", 16, split="test")
    drawn, description = representative_order(test, seed=3)
    assert description == "a random draw (seed 3) stratified by class"
    assert sorted(drawn.labels["class"].tolist()) == sorted(test.labels["class"].tolist())  # nothing lost
    for n in (10, 64, 500):
        counts = np.bincount(drawn.labels["class"][:n].numpy(), minlength=10)
        assert counts.max() - counts.min() <= 1 + n // 100, (n, counts)
    again, _ = representative_order(test, seed=3)
    other, _ = representative_order(test, seed=4)
    assert (again.images == drawn.images).all() and not (other.images[:64] == drawn.images[:64]).all()
    unlabelled = type(test)(test.images[:100], "plain")
    shuffled, description = representative_order(unlabelled, seed=0)
    assert description == "a random draw (seed 0)" and not (shuffled.images == unlabelled.images).all()
