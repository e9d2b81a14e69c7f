"""The command line's parsing: the small commands' settings and how flags become dataclasses."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

from transformers import HfArgumentParser

from ldm_eval.metrics.uncertainty import BOOTSTRAP_RESAMPLES
from ldm_eval.sweeps.settings import RunSettings, Sweep, help_text

# --- the small commands' settings ----------------------------------------------------------


@dataclass
class SampleSettings:
    """``sample MODEL``: write N samples of a trained model as PNG files."""

    n: int = field(metadata=help_text("number of images"))
    steps: int = field(metadata=help_text("denoising steps"))
    out: Path = field(metadata=help_text("output folder"))
    scheduler: Literal["ddim", "ddpm"] = field(default="ddim", metadata=help_text("sampler"))
    seed: int = field(default=0, metadata=help_text("image i of a seed is the same whatever the batch size"))
    batch_size: int = field(default=64, metadata=help_text("images per batch (never changes the images)"))
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))
    label: list[str] | None = field(default=None, metadata={
        "help": "class name or index (class models); several cycle over the images", "action": "extend"})
    prompt: list[str] | None = field(default=None, metadata={
        "help": "text prompt (text models); several cycle over the images", "action": "extend"})
    guidance: float = field(default=1.0, metadata=help_text("classifier-free guidance scale (1 = none)"))


@dataclass
class FidSettings:
    """``fid DIR_A DIR_B``: FID (and KID) between two folders of images."""

    backend: str = field(default="inception", metadata=help_text("inception or domain"))
    kid: bool = field(default=False, metadata=help_text("also compute KID"))
    intervals: bool = field(default=True, metadata=help_text(
        "bootstrap 95 % interval and FID-infinity for the second folder (--intervals false skips them)"))
    classifier: Path | None = field(default=None, metadata=help_text("domain classifier folder (a sweep's domain_classifier/)"))
    bootstrap_resamples: int = field(default=BOOTSTRAP_RESAMPLES, metadata=help_text(
        "bootstrap resamples behind the 95 % interval (0 skips the interval, FID-infinity is still given)"))
    resample_reference: bool = field(default=False, metadata=help_text(
        "resample the first folder too, so the interval holds its draw's own variance (default: it is held fixed)"))
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))


@dataclass
class RecogniseSettings:
    """``recognise MODEL [MODEL ...] --classifier DIR``: would a person recognise the samples?"""

    classifier: Path = field(metadata=help_text(
        "a class classifier trained on the real data (a sweep's domain_classifier/ folder)"))
    real: str = field(default="", metadata=help_text(
        "real images for scale: fashion-mnist or a folder (its held-out split)"))
    n: int = field(default=500, metadata=help_text("samples per model"))
    ddim_steps: int = field(default=50, metadata=help_text("sampling steps"))
    scheduler: str = field(default="ddim", metadata=help_text(
        "sampler: ddim (deterministic, eta 0) or ddpm (ancestral: slower, --ddim-steps then counts its steps)"))
    seed: int = field(default=0, metadata=help_text("seed of sampling"))
    batch_size: int = field(default=100, metadata=help_text("images per sampling batch (never changes the images)"))
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))
    out: Path | None = field(default=None, metadata=help_text("also write the results as JSON here"))


@dataclass
class TrainClassifierSettings:
    """``train-classifier DATA --out DIR``: a judge for ``recognise``, measured on real held-out images."""

    out: Path = field(metadata=help_text("folder the classifier is written to"))
    resolution: int = field(default=32, metadata=help_text("image size the classifier reads (the models' size)"))
    steps: int = field(default=5000, metadata=help_text("training steps"))
    width: int = field(default=16, metadata=help_text("channels of the first layer (the rest scale with it)"))
    shift: int = field(default=0, metadata=help_text("random translations of up to this many pixels"))
    batch_size: int = field(default=128, metadata=help_text("images per step"))
    seed: int = field(default=0, metadata=help_text("seed of initialisation and batches"))
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))


@dataclass
class ExportSettings:
    """``export-zoo RUN_DIR``: copy a sweep's models as fp16 with model cards (the demo's zoo)."""

    prefix: str = field(metadata=help_text("name prefix, e.g. fmnist32"))
    out: Path = field(default=Path("models"), metadata=help_text("zoo folder"))
    only: list[str] | None = field(default=None, metadata=help_text("model names, e.g. dm-f1,ldm-kl-f4"))


@dataclass
class BenchSettings:
    """``bench-train``: training speed and memory for every factor (prints a table)."""

    resolutions: list[int] = field(default_factory=lambda: [32, 64], metadata=help_text("image sides, e.g. 32,64"))
    factors: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32], metadata=help_text("factors"))
    batch_size: int = field(default=64, metadata=help_text("training batch size"))
    steps: int = field(default=4, metadata=help_text("timed steps per configuration"))
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))
    out: Path | None = field(default=None, metadata=help_text("also write the table as CSV and Markdown here"))
    recipe: bool = field(default=False, metadata=help_text(
        "instead: what each CPU speed setting of the denoiser recipe buys (EMA foreach, inference_mode, "
        "channels_last, bf16), each against its baseline, interleaved"))
    param_budget: int = field(default=4_000_000, metadata=help_text(
        "UNet parameters of the --recipe, --speedups and --profile tables (the zoo's: 2000000)"))
    speedups: bool = field(default=False, metadata=help_text(
        "instead: --speedups off against auto per factor, interleaved, with each step's share of this device's "
        "matmul peak"))
    profile: bool = field(default=False, metadata=help_text(
        "instead: where one eager training step's time goes, by kind of operator, per factor"))
    sampling: str = field(default="", metadata=help_text(
        "instead: DDIM sampling of this model folder (--batch-size images) against stock diffusers on the same "
        "weights, interleaved"))


@dataclass
class BenchFidSettings:
    """``bench-fid``: Inception feature extraction, each way of running it, side by side (prints a table)."""

    images: int = field(default=64, metadata=help_text("images to extract features of"))
    rounds: int = field(default=3, metadata=help_text("interleaved timing rounds"))
    batch_size: int = field(default=32, metadata=help_text("images per forward pass"))
    dataset: str = field(default="fashion-mnist", metadata=help_text("'fashion-mnist' or a folder of images"))
    resolution: int = field(default=32, metadata=help_text("image side before the resize to 299 px"))
    device: str = field(default="cpu", metadata=help_text("cpu or cuda"))
    out: Path | None = field(default=None, metadata=help_text("also write the table as Markdown here"))
    sensitivity: int = field(default=0, metadata=help_text(
        "also measure what each FID backend sees: N real images against N others, blurred and JPEG-compressed "
        "(0 skips it)"))
    interval_cost: int = field(default=0, metadata=help_text(
        "also time the uncertainty work of an N vs N comparison (bootstrap interval, FID-infinity, KID) against "
        "the Inception features it judges (0 skips it)"))


@dataclass
class BenchStartupSettings:
    """``bench-startup``: the web demo's time to its first HTTP 200 against the bare library imports."""

    rounds: int = field(default=3, metadata=help_text("interleaved rounds of both timings"))
    app: Path = field(default=Path("app.py"), metadata=help_text("the demo's entry point"))
    out: Path | None = field(default=None, metadata=help_text("also write the table as Markdown here"))


# --- parsing -----------------------------------------------------------------------------


def list_flags(types: Sequence[type]) -> set[str]:
    """The flags (both spellings) of list-valued fields."""
    flags = set()
    for cls in types:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            inner = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) is not list else [hint]
            if any(get_origin(t) is list for t in inner):
                flags |= {f"--{f.name}", f"--{f.name.replace('_', '-')}"}
    return flags


def split_commas(argv: list[str], list_flags: set[str]) -> list[str]:
    """``--factors 1,2,4`` as ``--factors 1 2 4`` (the form the README has always shown)."""
    out: list[str] = []
    expecting = False
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            expecting = name in list_flags
            if expecting and eq:
                out += [name, *[v for v in value.split(",") if v]]
                expecting = False
                continue
            out.append(arg)
        elif expecting and "," in arg:
            out += [v for v in arg.split(",") if v]
        else:
            out.append(arg)
    return out


def make_parser(prog: str, types: Sequence[type], positionals: Sequence[tuple[str, str]] = ()) -> HfArgumentParser:
    """The dataclasses' flags, each listed in ``--help`` by its dashed spelling first (the underscore one still
    works), and the ``--no-X`` switch of a flag that defaults to true described as what it does."""
    parser = HfArgumentParser(list(types), prog=prog)
    for name, text in positionals:
        parser.add_argument(name, type=Path, help=text)
    for action in parser._actions:  # argparse keeps no public list of them
        action.option_strings.sort(key=lambda flag: "_" in flag)
        if any(flag.startswith("--no") and flag.endswith(action.dest.replace("_", "-")) for flag in action.option_strings) \
                and action.const is False:
            action.help = f"turn off --{action.dest.replace('_', '-')}"
    return parser


def parse(prog: str, types: Sequence[type], argv: list[str], positionals: Sequence[tuple[str, str]] = (),
          defaults: dict | None = None) -> tuple:
    """The dataclasses of ``types`` filled from ``argv`` (plus a namespace of positionals, when any)."""
    parser = make_parser(prog, types, positionals)
    if defaults:
        parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=split_commas(argv, list_flags(types)))


# --- commands ------------------------------------------------------------------------------


@dataclass
class PresetChoice:
    preset: str = field(default="", metadata=help_text("named settings this run starts from"))


def parse_sweep(prog: str, presets: dict, default: str, settings: type, argv: list[str]) -> Sweep:
    """A sweep's flags parsed over the defaults of its ``--preset`` (``settings``: the sweep kind's own dataclass)."""
    probe = HfArgumentParser([PresetChoice], prog=prog, add_help=False)
    name = probe.parse_known_args(argv)[0].preset or default
    preset = Sweep.from_preset(presets, name)
    defaults = {"preset": name, **dataclasses.asdict(preset.run), **dataclasses.asdict(preset.sweep)}
    choice, run, sweep = parse(prog, [PresetChoice, RunSettings, settings], argv, defaults=defaults)
    return Sweep(choice.preset, run, sweep)

