"""The shipped model zoo: size cap, fp16 safetensors, model cards, conditional models among them."""
import json

import numpy as np
import pytest

from conftest import ROOT
from demo.zoo import discover_models, model_fid
from pipelines.pipeline import load_pipeline

ZOO = ROOT / "models"
MAX_BYTES = 60_000_000


def test_zoo_fits_the_cap_and_every_model_has_a_card() -> None:
    folders = sorted(p.parent for p in ZOO.glob("*/model_index.json"))
    assert len(folders) >= 10
    total = sum(f.stat().st_size for f in ZOO.rglob("*") if f.is_file())
    assert total <= MAX_BYTES, f"the zoo holds {total / 1e6:.1f} MB, over the 60 MB cap"
    for folder in folders:
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
        card = (folder / "README.md").read_text()
        assert "## Licence" in card and "training:" in card and "FID" in card
        facts = json.loads((folder / "training.json").read_text())
        assert facts["train_steps"] > 0 and facts["device_name"]


@pytest.mark.parametrize("name,condition,kwargs", [
    ("fmnist32-ldm-kl-f8-class", "class", {"labels": ["ankle boot", "trouser"]}),
    ("fmnist32-ldm-kl-f4-text", "text", {"prompt": ["a photo of an ankle boot", "a photo of a trouser"]}),
])
def test_conditional_zoo_models_load_in_fp16_and_follow_their_condition(name: str, condition: str, kwargs: dict) -> None:
    from safetensors import safe_open

    for weights in (ZOO / name).glob("*/*.safetensors"):  # stored in fp16 (loading upcasts to fp32)
        with safe_open(weights, "pt") as fh:
            assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"F16"}, weights
    pipe = load_pipeline(ZOO / name)
    assert pipe.condition == condition
    entry = next(e for e in discover_models([ZOO]) if e.path.name == name)
    assert entry.condition == condition and "accuracy" in model_fid(None, entry)
    images = pipe(num_images=2, num_inference_steps=10, seed=0, guidance_scale=3.0, **kwargs).images
    assert images.shape == (2, 32, 32, 1) and np.isfinite(images).all()
    # an ankle boot and a trouser from the same noise are different pictures
    assert np.abs(images[0] - images[1]).mean() > 0.05
