"""The shipped model zoo: size cap, fp16 safetensors, model cards, conditional models among them."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from demo.zoo import discover_models, model_fid
from ldm_eval.zoo.build import MB, ZooBuildSettings
from ldm_eval.zoo.cards import finish_folder, zoo_facts
from ldm_eval.zoo.export import export_zoo
from pipelines.loading import load_pipeline
from pipelines.records import RecordError
from pipelines.results_log import read_results
from pipelines.training_summary import TrainingSummary

ZOO = ROOT / "models"
MAX_BYTES = ZooBuildSettings().max_total_mb * MB  # the cap build-zoo enforces


def test_zoo_fits_the_cap_and_every_model_has_a_card() -> None:
    folders = sorted(p.parent for p in ZOO.glob("*/model_index.json"))
    # nine pipelines (the Fashion-MNIST f = 32 model left: a 1x1 latent, now refused) and four first stages
    assert len(folders) >= 9 and len(list(ZOO.glob("first-stage/*/config.json"))) == 4
    total = sum(f.stat().st_size for f in ZOO.rglob("*") if f.is_file())
    assert total <= MAX_BYTES, f"the zoo holds {total / MB:.1f} MB, over the {MAX_BYTES / MB:g} MB cap"
    for folder in folders:
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
        card = (folder / "README.md").read_text()
        assert "## Licence" in card and "training:" in card and "FID" in card
        facts = json.loads((folder / "training.json").read_text())
        assert facts["train_steps"] > 0 and facts["device_name"]


def test_the_bar_model_card_shows_what_evaluate_measured() -> None:
    """The bar's UTKFace model shows its Inception FID against 1,000 held-out faces (reports/zoo-evaluate)."""
    bar = (ZOO / "utk64-ldm-kl-f4" / "README.md").read_text()
    assert "## Measured with evaluate" in bar and "Inception, N = 500 samples against 1,000 reference images" in bar
    assert "95 % interval [91.43, 100.61]" in bar


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


@pytest.mark.parametrize("name,run", [("fmnist32-ldm-kl-f8-class", "zoo-gpu/run1/fmnist32-class"),
                                      ("fmnist32-ldm-vq-f4", "zoo-gpu/run1/fmnist32-vq"), ("fmnist32-dm-f1", "zoo-cpu/fmnist32"),
                                      ("fmnist32-ldm-kl-f4", "zoo-cpu/fmnist32"), ("utk64-ldm-kl-f4", "zoo-cpu/utk64"),
                                      ("utk64-ldm-kl-f8", "zoo-cpu/utk64"), ("utk64-dm-f1", "zoo-cpu/utk64"),
                                      ("utk64-ldm-kl-f4-class", "zoo-cpu/utk64-cond"),
                                      ("utk128-ldm-kl-f8", "zoo-cpu/utk128")])
def test_export_reproduces_the_shipped_card_from_the_run(tmp_path: Path, name: str, run: str, monkeypatch) -> None:
    """Re-exporting a shipped model from its committed run gives the shipped card and metrics again."""
    prefix = name.split("-")[0]
    run_dir = tmp_path / "run"
    shutil.copytree(ZOO / name, run_dir / "models" / name.removeprefix(f"{prefix}-"))
    shutil.copy(ROOT / "reports" / run / "results.jsonl", run_dir)
    [out] = export_zoo(run_dir, tmp_path / "zoo", prefix)
    assert out.name == name and not list((tmp_path / "zoo").glob(".tmp-*"))
    monkeypatch.chdir(ROOT)  # as build-zoo does after exporting, with its defaults, in the shipped zoo's company
    runs = [Path(run) for run in ZooBuildSettings().evaluations]
    finish_folder(out, {run: read_results(run) for run in runs}, zoo_facts(ZOO))
    assert (out / "README.md").read_text() == (ZOO / name / "README.md").read_text()
    for code in ("pipeline.py", "condition_encoder/class_embedder.py", "model_index.json"):
        assert (out / code).is_file() == (ZOO / name / code).is_file(), code
    assert json.loads((out / "training.json").read_text()) == json.loads((ZOO / name / "training.json").read_text())
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    first = ["fid", "kid", "fid_backend", "fid_samples", "ddim_steps", "accuracy", "guidance", "reference_samples",
             "fid_ci_low", "fid_ci_high", "sec_per_image", "sampling_device"]
    later = ["precision", "recall", "density", "coverage", "prdc_k", "peak_mem_sample_mb", "memory_method",
             "sample_batch"]  # measured by runs since these folders were made: None here, not an old run's RSS
    assert rows and all(list(r) == first + later for r in rows)
    measured_later = name.startswith("utk128")  # the one set exported since these fields exist
    if measured_later:  # a run that measured them: on the Inception rows, from the run itself
        assert all(r["precision"] is not None and r["peak_mem_sample_mb"] > 0 for r in rows
                   if r["fid_backend"] == "inception")
    else:
        assert all(r[k] is None for r in rows for k in later)
    shipped = ZOO / name / "metrics.json"
    if shipped.is_file():
        kept = first + later if measured_later else first  # older metrics.json files lack the later
        assert [{k: r[k] for k in kept} for r in rows] == json.loads(shipped.read_text())["rows"]
    else:  # unconditional: FID rows only
        assert all(r["accuracy"] is None and r["guidance"] is None for r in rows)


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_shipped_first_stages_load_and_reexport_to_the_same_card(tmp_path: Path, kind: str, factor: int) -> None:
    """The first-stage study's f = 4 and 8 autoencoders: fp16 weights, finite codebook, card from the committed run."""
    from safetensors import safe_open

    from pipelines.first_stage import FirstStage, load_autoencoder

    name = f"utk64-ae-{kind}-f{factor}"
    shipped = ZOO / "first-stage" / name
    with safe_open(shipped / "diffusion_pytorch_model.safetensors", "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"F16"}
    stage = FirstStage(load_autoencoder(shipped).float())
    side = 64 // factor
    assert stage.kind == kind and stage.factor == factor and stage.latent_shape(64) == ({4: 3, 8: 4}[factor], side, side)
    card = (shipped / "README.md").read_text()
    assert "PatchGAN" in card and "PSNR" in card and "rFID" in card and "## Licence" in card
    assert ("codebook usage" in card) == (kind == "vq")
    run_dir = tmp_path / "run"
    shutil.copytree(shipped, run_dir / "models" / name.removeprefix("utk64-"))
    shutil.copy(ROOT / "reports" / "first-stage" / "results.jsonl", run_dir)
    [out] = export_zoo(run_dir, tmp_path / "zoo", "utk64")
    assert out.name == name and (out / "README.md").read_text() == card


def test_training_summaries_of_every_generation_load(tmp_path: Path) -> None:
    # the first layout, as the first zoo's fmnist32-ldm-kl-f4 was shipped
    shipped = json.loads((Path(__file__).parent / "fixtures" / "training-first-layout.json").read_text())
    names = {f.name for f in dataclasses.fields(TrainingSummary)}
    summary = dataclasses.asdict(TrainingSummary(**{k: v for k, v in shipped.items() if k in names}))
    for i, data in enumerate((shipped, summary, {**shipped, "condition": None})):
        path = tmp_path / f"training-{i}.json"
        path.write_text(json.dumps(data))
        facts = TrainingSummary.load(path)
        assert facts.condition == "none" and facts.train_steps == shipped["train_steps"]
    path.write_text(json.dumps({k: v for k, v in shipped.items() if k != "seed"}))
    with pytest.raises(RecordError, match=r"lacks \['seed'\]: it is not a training summary"):
        TrainingSummary.load(path)


def test_a_card_compares_the_budgets_models_were_given_not_the_seconds_they_used() -> None:
    """utk128's pixel model stopped at 816 s of its 900 (its next 102-s step would have overrun): the same
    budget as its set, so no warning; a model given 180 s on another device is flagged with both budgets."""
    from dataclasses import replace

    from ldm_eval.zoo.cards import budget_note, zoo_facts

    facts = {name: f for name, f in zoo_facts(ZOO).items() if name.startswith("utk128")}
    pixel = facts["utk128-dm-f1"]
    assert pixel.train_seconds < 850 and pixel.budget["max_seconds"] == 900
    assert budget_note("utk128-dm-f1", pixel, facts) == []
    short = replace(facts["utk128-ldm-kl-f8"], budget={"max_steps": None, "max_seconds": 180.0}, device_name="GPU X")
    [line] = budget_note("other", short, facts)
    assert "this model trained 180 s on GPU X" in line and "trained 900 s on CPU" in line and "utk128-dm-f1" in line
