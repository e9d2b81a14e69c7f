"""Every command's presets in one place: named settings a run starts from, and the one denoiser recipe.

``sweep --preset`` reads ``COMPRESSION_PRESETS``, ``cond-sweep`` ``CONDITIONING_PRESETS``, ``ae-sweep``
``FIRST_STAGE_PRESETS`` and ``build-zoo`` ``ZOO_PRESETS`` (a zoo preset is a list of parts, each an
ordinary sweep). A preset names only what it changes: every other field keeps its settings class's
default, and the autoencoders' defaults are the trainer's own (``AutoencoderTrainConfig``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ldm_eval.sweeps.compression import CompressionSettings
from ldm_eval.sweeps.conditioning import ConditioningSettings
from ldm_eval.sweeps.first_stage import FirstStageSettings
from ldm_eval.sweeps.settings import RunSettings
from ldm_eval.sweeps.tour import TourSet

UTKFACE = "../shared/data/utkface"  # where the UTKFace faces lie beside a checkout (the data's README)

# The denoiser recipe (docs/zoo.md: "the denoiser recipe"): learning rate 1e-3 with a warm-up and a cosine
# decay to 0 over the budget; each preset sets the warm-up for its budget.
DENOISER_RECIPE = dict(learning_rate=1e-3, lr_schedule="cosine")

# --- tour (the first command): the shipped compression sets -------------------------------------------------------

TOUR_SETS = {"fmnist32": TourSet("fmnist32", "fashion-mnist", 32), "utk64": TourSet("utk64", UTKFACE, 64)}

# --- sweep (the compression sweep) ---------------------------------------------------------------------------------

FACTORS_32PX = [1, 2, 4, 8, 16]  # at 32 px: every factor whose latent keeps at least 2x2


COMPRESSION_PRESETS: dict[str, tuple[RunSettings, CompressionSettings]] = {
    # for tests and CI: every code path, tiny sizes, under 3 minutes on 2 CPU cores
    "smoke": (RunSettings(budget="steps", ae_budget=6, train_budget=6, fid_samples=24, batch_size=8, ae_batch_size=8,
                          param_budget=30_000, ae_base_width=8, max_images=256, classifier_steps=40, sample_batch=24),
              CompressionSettings(factors=list(FACTORS_32PX), inception_samples=6, ddim_steps=[2, 4], progress_points=2,
                                  progress_samples=16)),
    # a sweep of your own on 2 CPU cores: Fashion-MNIST at 32 px, f = 1...16 (f = 32 would leave a 1x1 latent),
    # 45 s per denoiser; the warm-up is short because 45 s is few steps.
    "quick": (RunSettings(**DENOISER_RECIPE, warmup_steps=20, ae_batch_size=32),
              CompressionSettings(factors=list(FACTORS_32PX))),
    # real photos (e.g. the UTKFace faces) at 64 px, where f = 16 and 32 keep a spatial latent; hours on CPU
    # (autoencoders as in the first-stage study: the paper's objective with the patch GAN on)
    "standard": (RunSettings(**DENOISER_RECIPE, warmup_steps=200, resolution=64, ae_budget=600, train_budget=1800,
                             fid_samples=2000, param_budget=4_000_000, ae_batch_size=16, max_images=None),
                 CompressionSettings(kinds=["kl", "vq"], inception_samples=500, ddim_steps=[10, 20, 50, 100],
                                     progress_points=4, progress_samples=500)),
    # the paper's protocol scaled to the data, for a GPU
    "paper": (RunSettings(resolution=256, ae_batch_size=32, ae_budget=3600, train_budget=4 * 3600, fid_samples=5000,
                          param_budget=100_000_000, ae_base_width=64, ae_disc_weight=0.5, max_images=None,
                          classifier_steps=2000, sample_batch=100),
              CompressionSettings(kinds=["kl", "vq"], inception_samples=5000, ddim_steps=[10, 20, 50, 100, 200],
                                  progress_points=8, progress_samples=2000)),
}


# --- cond-sweep ----------------------------------------------------------------------------------------------------

CONDITIONING_PRESETS: dict[str, tuple[RunSettings, ConditioningSettings]] = {
    # tests and CI: every code path in about a minute on 2 CPU cores
    "cond-smoke": (RunSettings(resolution=16, budget="steps", ae_budget=6, train_budget=6, fid_samples=40,
                               batch_size=8, ae_batch_size=8, param_budget=30_000, ae_base_width=8, max_images=256,
                               classifier_steps=40, sample_batch=40),
                   ConditioningSettings(factors=[1, 4], guidance=[1.0, 3.0], samples_per_class=4, ddim_steps=2,
                                        condition_width=16)),
    # 2 CPU cores: f = 1, 4, 8, 16, class and text, guidance 1 / 3 / 7 (about an hour)
    "cond-quick": (RunSettings(train_budget=60, ae_batch_size=32), ConditioningSettings()),
    # the same on one GPU: longer training, 3x the samples
    "cond-gpu": (RunSettings(ae_budget=20, train_budget=30, fid_samples=1500, batch_size=256, ae_batch_size=128,
                             max_images=None, classifier_steps=1500, sample_batch=1500, learning_rate=4e-4),
                 ConditioningSettings(samples_per_class=150, ddim_steps=25)),
}


# --- ae-sweep ------------------------------------------------------------------------------------------------------

FIRST_STAGE_PRESETS: dict[str, tuple[RunSettings, FirstStageSettings]] = {
    # for tests and CI: every code path (KL and VQ, GAN on and off, rFID), tiny sizes, seconds on 2 CPU cores
    "ae-smoke": (RunSettings(budget="steps", ae_budget=6, ae_batch_size=4, ae_base_width=8, ae_disc_weight=0.5,
                             max_images=64, fid_samples=12, sample_batch=12, ae_codebook_size=32),
                 FirstStageSettings(factors=[4, 8], no_gan_factors=[4], gan_start_shares=[0.3], rfid_samples=6,
                                    grid_images=4)),
    # UTKFace faces at 64 px on 2 CPU cores, the trainer's recipe, rFID on 1,000 held-out faces; f = 4, 8, 16 (add
    # 2 and 32 with --factors 2,4,8,16,32). Equal steps rather than equal seconds, so a busy machine changes the
    # wall time, never the models.
    "ae-quick": (RunSettings(dataset=UTKFACE, resolution=64, budget="steps", ae_budget=1100, max_images=None,
                             fid_samples=1000, sample_batch=100),
                 FirstStageSettings(factors=[4, 8, 16])),
    # the same study on one GPU (reports/first-stage-gpu): 4x wider models, 30 s each, rFID on 1,000 faces with
    # 50 bootstrap resamples. Longer budgets: --ae-budget.
    "ae-gpu": (RunSettings(dataset=UTKFACE, resolution=64, ae_budget=30, ae_batch_size=32, ae_base_width=64,
                           ae_learning_rate=1e-3, ae_disc_weight=0.1, max_images=None, fid_samples=1000, device="cuda",
                           sample_batch=250, bootstrap_resamples=50),
               FirstStageSettings(factors=[4, 8, 16], rfid_samples=1000)),
    # Tab. 8 at 128 px on 2 CPU cores: KL and VQ at f = 4...32 with the utk128 zoo part's autoencoder settings, so
    # `--share-from runs/zoo-cpu/utk128` reuses that part's KL autoencoders and trains only the VQ ones
    "ae-128": (RunSettings(dataset=UTKFACE, resolution=128, budget="seconds", ae_budget=900, ae_batch_size=8,
                           max_images=None, fid_samples=1000, sample_batch=50),
               FirstStageSettings(factors=[4, 8, 16, 32], no_gan_factors=[], rfid_samples=1000)),
}


@dataclass
class ZooPart:
    """One sweep whose trained pipelines go into the zoo as ``PREFIX-FOLDER``."""

    name: str  # the part's run folder under the build's runs folder
    prefix: str  # the zoo names' prefix: fmnist32, utk64
    sweep: Literal["compression", "conditioning"]
    run: RunSettings
    settings: CompressionSettings | ConditioningSettings
    share_from: str | None = None  # another part whose autoencoders and classifier this one uses (same data, recipe)


# --- build-zoo ---------------------------------------------------------------------------------------------------------

def _denoiser_recipe(**kw) -> RunSettings:
    """The denoiser recipe every zoo part shares (docs/zoo.md: the denoiser recipe); budgets in wall-clock seconds
    for denoisers and autoencoders alike, the autoencoders on the trainer's recipe."""
    base = dict(**DENOISER_RECIPE, budget="seconds", warmup_steps=200, batch_size=64, ae_budget=300,
                max_images=None, resume=True)
    base.update(kw)
    return RunSettings(**base)


_SMOKE = dict(budget="steps", ae_budget=6, train_budget=6, fid_samples=24, batch_size=8, ae_batch_size=8,
              param_budget=30_000, ae_base_width=8, max_images=256, classifier_steps=40, sample_batch=24,
              warmup_steps=2)

# The zoo's CPU sets: 2 M-parameter UNets on the denoiser recipe (docs/zoo.md); Fashion-MNIST's domain classifier
# trains long enough to be sure of real images, so that its recognisability judgement means something; UTKFace's
# judges race x gender and trains less (its quality measure is Inception FID).
_FMNIST = dict(train_budget=900, param_budget=2_000_000, batch_size=64, fid_samples=500, classifier_steps=5000)
_UTK_RUN = dict(dataset=UTKFACE, resolution=64, train_budget=900, param_budget=2_000_000, batch_size=32, ae_budget=570,
                fid_samples=500, sample_batch=100, classifier_steps=1000)
# UTKFace at 128 px, where every factor leaves a real latent (f = 4: 32x32 ... f = 32: 4x4): the same 15 minutes per
# denoiser and the same 2 M parameters; the autoencoders get 15 minutes too (4x the pixels of 64 px per step)
_UTK128_RUN = {**_UTK_RUN, "resolution": 128, "ae_budget": 900, "ae_batch_size": 8, "sample_batch": 50}

def _cpu_parts() -> list[ZooPart]:
    return [
        ZooPart("fmnist32", "fmnist32", "compression", _denoiser_recipe(**_FMNIST),
                CompressionSettings(factors=[4, 8, 2, 16, 1], inception_samples=0, ddim_steps=[10, 50],
                                    progress_points=1, progress_samples=200)),
        ZooPart("utk64", "utk64", "compression", _denoiser_recipe(**_UTK_RUN),
                CompressionSettings(factors=[4, 8, 2, 16, 1], inception_samples=500, ddim_steps=[50],
                                    progress_points=1, progress_samples=200)),
        ZooPart("fmnist32-vq", "fmnist32", "compression", _denoiser_recipe(**_FMNIST),
                CompressionSettings(factors=[4, 8], kinds=["vq"], inception_samples=0, ddim_steps=[10, 50],
                                    progress_points=1, progress_samples=200), share_from="fmnist32"),
        ZooPart("fmnist32-text", "fmnist32", "conditioning", _denoiser_recipe(**_FMNIST),
                ConditioningSettings(factors=[4], conditions=["text"], guidance=[1.0, 3.0], samples_per_class=50,
                                     ddim_steps=25), share_from="fmnist32"),
        ZooPart("fmnist32-class", "fmnist32", "conditioning", _denoiser_recipe(**_FMNIST),
                ConditioningSettings(factors=[8], conditions=["class"], guidance=[1.0, 3.0], samples_per_class=50,
                                     ddim_steps=25), share_from="fmnist32"),
        ZooPart("utk64-vq", "utk64", "compression", _denoiser_recipe(**_UTK_RUN),
                CompressionSettings(factors=[4], kinds=["vq"], inception_samples=500, ddim_steps=[50],
                                    progress_points=1, progress_samples=200), share_from="utk64"),
        ZooPart("utk64-cond", "utk64", "conditioning", _denoiser_recipe(**_UTK_RUN),  # race x gender classes
                ConditioningSettings(factors=[4], conditions=["class"], guidance=[1.0, 3.0], samples_per_class=50,
                                     ddim_steps=25), share_from="utk64"),
        # the paper's question at a size that leaves every factor a real latent; pixel space last, as the slowest
        ZooPart("utk128", "utk128", "compression", _denoiser_recipe(**_UTK128_RUN),
                CompressionSettings(factors=[8, 16, 4, 32, 1], inception_samples=500, ddim_steps=[10, 50],
                                    pixel_ddim_steps=[10], progress_points=3, progress_samples=100)),
    ]


def _gpu_parts() -> list[ZooPart]:
    """The cpu preset's parts with GPU budgets: bf16 autocast, seconds shared by all cells.

    UNets keep the CPU recipe's 2 M parameters (the shipped zoo has a size budget). A UNet this small is
    launch-bound on a GPU, so steps rather than images seen decide: UTKFace trains at batch 64
    (reports/zoo-gpu/README.md).
    """
    gpu = dict(device="cuda", mixed_precision="bf16", ae_budget=60, train_budget=180, fid_samples=500,
               warmup_steps=200)
    fmnist = _denoiser_recipe(**{**_FMNIST, **gpu, "batch_size": 512, "ae_batch_size": 64, "sample_batch": 500})
    utk = {**gpu, "batch_size": 64, "train_budget": 120, "ae_batch_size": 32, "sample_batch": 250}
    runs = {"fmnist32": fmnist, "utk64": _denoiser_recipe(**{**_UTK_RUN, **utk}),
            "utk128": _denoiser_recipe(**{**_UTK128_RUN, **utk, "ae_batch_size": 16, "sample_batch": 100})}
    parts = []
    for part in _cpu_parts():
        run = runs[part.prefix]
        settings = part.settings
        if isinstance(settings, CompressionSettings):  # Inception FID is measured afterwards (evaluate), on CPU
            settings = replace(settings, inception_samples=0)
        parts.append(replace(part, run=run, settings=settings))
    return parts


ZOO_PRESETS: dict[str, list[ZooPart]] = {
    # for tests and CI: two tiny parts, seconds on 2 CPU cores
    "smoke": [
        ZooPart("fmnist16", "fmnist16", "compression", _denoiser_recipe(resolution=16, **_SMOKE),
                CompressionSettings(factors=[1, 4], inception_samples=0, ddim_steps=[2], progress_points=1,
                                    progress_samples=8)),
        ZooPart("fmnist16-cond", "fmnist16", "conditioning", _denoiser_recipe(resolution=16, **_SMOKE),
                ConditioningSettings(factors=[4], conditions=["class"], guidance=[1.0], samples_per_class=2,
                                     ddim_steps=2, condition_width=16), share_from="fmnist16"),
    ],
    # 2 CPU cores: every model of a set trains for the same 15 minutes (hours in all, in several resumed runs).
    # The models the docs' bars are about come first; pixel space last, as the slowest.
    "cpu": _cpu_parts(),
    # One GPU with --jobs N: a part's cells train at once, each in its own process (a 2 M-parameter UNet leaves
    # the GPU mostly idle), so within a set every model gets the same seconds on the same shared GPU.
    "gpu": _gpu_parts(),
}
