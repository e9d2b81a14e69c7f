"""The presets: one table per command, and a sweep's autoencoder is the trainer's default one plus what a preset changes."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from ldm_eval.presets import (
    COMPRESSION_PRESETS,
    CONDITIONING_PRESETS,
    FIRST_STAGE_PRESETS,
    ZOO_PRESETS,
)
from ldm_eval.sweeps.run_folder import first_stage_config
from ldm_eval.sweeps.settings import RunSettings
from pipelines.autoencoder_training import AutoencoderTrainConfig

# the trainer's fields a sweep's ae_* settings set, by their sweep name
AE_FIELDS = {"ae_learning_rate": "learning_rate", "ae_warmup_steps": "warmup_steps", "ae_lr_schedule": "lr_schedule",
             "ae_disc_weight": "disc_weight", "ae_batch_size": "batch_size", "ae_base_width": "base_width",
             "ae_codebook_size": "codebook_size"}


def _recipe(cfg: AutoencoderTrainConfig) -> dict:
    return {name: getattr(cfg, name) for name in AE_FIELDS.values()}


def test_every_ae_setting_of_a_sweep_reaches_the_trainer():
    sweep_side = {f.name for f in fields(RunSettings) if f.name.startswith("ae_")} - {"ae_budget"}
    assert sweep_side == set(AE_FIELDS)


def test_a_sweeps_default_autoencoder_is_the_trainers_default():
    got = first_stage_config(RunSettings(), "kl", 4, Path("ae"), cpu=True)
    assert _recipe(got) == _recipe(AutoencoderTrainConfig(out=Path("ae")))  # learning rate, warm-up and schedule included


ALL_RUNS = [(f"{table}:{name}", run) for table, presets in (("sweep", COMPRESSION_PRESETS),
            ("cond-sweep", CONDITIONING_PRESETS), ("ae-sweep", FIRST_STAGE_PRESETS)) for name, (run, _) in presets.items()]
ALL_RUNS += [(f"build-zoo:{name}:{part.name}", part.run) for name, parts in ZOO_PRESETS.items() for part in parts]


@pytest.mark.parametrize("name,run", ALL_RUNS, ids=[name for name, _ in ALL_RUNS])
def test_a_presets_autoencoder_is_the_trainers_default_plus_its_overrides(name, run):
    default = RunSettings()
    overrides = {AE_FIELDS[f]: getattr(run, f) for f in AE_FIELDS if getattr(run, f) != getattr(default, f)}
    got = first_stage_config(run, "vq", 8, Path("ae"), cpu=True)
    assert _recipe(got) == {**_recipe(AutoencoderTrainConfig(out=Path("ae"))), **overrides}


def test_an_override_of_a_variant_wins():
    got = first_stage_config(FIRST_STAGE_PRESETS["ae-quick"][0], "kl", 4, Path("ae"), cpu=True, disc_weight=0.0)
    assert got.disc_weight == 0.0 and got.lr_schedule == AutoencoderTrainConfig.lr_schedule


@pytest.mark.parametrize("factor", [4, 8, 16, 32])
def test_the_128px_first_stage_study_trains_the_very_autoencoders_of_the_utk128_zoo_part(factor: int) -> None:
    """ae-128 with --share-from the utk128 part's run reuses its KL autoencoders: the trainer's configs are equal."""
    (part,) = [p for p in ZOO_PRESETS["cpu"] if p.name == "utk128"]
    study = FIRST_STAGE_PRESETS["ae-128"][0]
    out = Path("runs/zoo-cpu/utk128/models/ae-kl")
    assert first_stage_config(part.run, "kl", factor, out, True) == first_stage_config(study, "kl", factor, out, True)
    assert part.run.resolution == study.resolution == 128
