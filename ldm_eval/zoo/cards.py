"""Model folders a user can act on: the code plain diffusers loads, and one card template.

:func:`finish_folder` makes a pipeline folder loadable with ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`` (it copies :mod:`pipelines.hub_pipeline` and, for class models,
:mod:`pipelines.class_embedder` in, verbatim, and names them in ``model_index.json``) and renders its
card from what the folder holds (``training.json``, ``metrics.json``, configs), the other models of its
set (budgets) and ``evaluate`` runs of its weights. The exporter and ``build-zoo`` both call it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ldm_eval.metrics.recognisability import Recognisability
from ldm_eval.zoo.parts import source_part
from pipelines import class_embedder, hub_pipeline
from pipelines.atomic import write_json_atomic, write_text_atomic
from pipelines.conditioning import class_caption
from pipelines.data import FASHION_MNIST_CLASSES
from pipelines.loading import HUB_PIPELINE, weights_digest
from pipelines.records import FidRecord, ModelRecord, SamplingRecord
from pipelines.results_log import Results, read_results
from pipelines.training_summary import TrainingSummary

UTKFACE_LICENCE = ("Trained on UTKFace (Zhang, Song, Qi, CVPR 2017), released for non-commercial research only; "
                   "these weights inherit that licence: non-commercial research use only.")
FASHION_LICENCE = "Trained on Fashion-MNIST (Zalando Research, MIT licence)."
# the code a folder carries for plain diffusers: (source module, path in the folder)
PIPELINE_FILE = (Path(hub_pipeline.__file__), "pipeline.py")
EMBEDDER_FILE = (Path(class_embedder.__file__), "condition_encoder/class_embedder.py")
BACKENDS = {"domain": "domain-classifier features", "inception": "Inception"}


def hub_files(folder: Path) -> list[tuple[Path, str]]:
    """(source, path in folder) of the code this pipeline folder must carry."""
    index = json.loads((folder / "model_index.json").read_text())
    encoder = (index.get("condition_encoder") or [None, None])[1]
    return [PIPELINE_FILE, *([EMBEDDER_FILE] if encoder == "ClassEmbedder" else [])]


def write_hub_files(folder: Path) -> None:
    """Copy the remote code in and point ``model_index.json`` at it (weights untouched)."""
    index = json.loads((folder / "model_index.json").read_text())
    for source, target in hub_files(folder):
        shutil.copyfile(source, folder / target)
    index["_class_name"] = list(HUB_PIPELINE)
    if (index.get("condition_encoder") or [None, None])[1] == "ClassEmbedder":
        index["condition_encoder"] = ["class_embedder", "ClassEmbedder"]
    index.pop("_name_or_path", None)  # where it was saved from: a path on the training machine
    write_json_atomic(folder / "model_index.json", index)


# --- facts ---------------------------------------------------------------------------------------------------------

def data_line(facts: TrainingSummary) -> str:
    if facts.dataset == "fashion-mnist":
        return (f"Fashion-MNIST (Zalando's 28x28 grey-scale clothing photos, 10 classes; train split), "
                f"resized to {facts.resolution} px")
    if "utkface" in facts.dataset.lower():
        return (f"UTKFace (the aligned and cropped 200x200 face photos, 11 % held out; train part), "
                f"resized to {facts.resolution} px")
    return f"{Path(facts.dataset).name} at {facts.resolution} px"


def hardware(facts: TrainingSummary) -> str:
    precision = f", {facts.mixed_precision} mixed precision" if facts.mixed_precision not in (None, "no") else ""
    return f"{facts.device_name}{precision}"


def _budget_key(facts: TrainingSummary) -> tuple:
    """What a model was given: its device and its budget (seconds or steps) as configured, not the seconds it
    used: a 102-s step stops at 816 s of 900 rather than overrun, on the same budget as its set."""
    budget = facts.budget or {}
    given = ("s", budget["max_seconds"]) if budget.get("max_seconds") else (
        ("steps", budget["max_steps"]) if budget.get("max_steps") else ("s", round(facts.train_seconds, -1)))
    return facts.device_name, given


def budget_note(name: str, facts: TrainingSummary, set_facts: dict[str, TrainingSummary]) -> list[str]:
    """A line when the models of this one's set (same prefix) were given different budgets or hardware."""
    mine = _budget_key(facts)
    others: dict[tuple, list[str]] = {}
    for other, f in sorted(set_facts.items()):
        key = _budget_key(f)
        if key != mine:
            others.setdefault(key, []).append(other)
    if not others:
        return []
    rest = "; ".join(f"{', '.join(names)} trained {amount:.0f} {unit} on {device}"
                     for (device, (unit, amount)), names in others.items())
    unit, amount = mine[1]
    return [f"- **budgets differ within this set**: this model trained {amount:.0f} {unit} on {facts.device_name}, "
            f"while {rest}. Compare its FIDs only with models of the same budget."]


def made_by(name: str, facts: TrainingSummary) -> str:
    found = source_part(name, facts.device)
    if found is None:
        return "exported with `python -m ldm_eval` from a sweep's run (not a `build-zoo` part)"
    preset, part = found
    return f"produced by `python -m ldm_eval build-zoo --preset {preset} --parts {part.name}`"


# --- measurements ----------------------------------------------------------------------------------------------------

def fid_text(row: dict) -> str:
    """One FID with everything it needs to be read: backend, N, reference N, DDIM steps, interval."""
    backend = BACKENDS.get(row.get("fid_backend"), row.get("fid_backend") or "unknown features")
    if row.get("fid") is None:
        return f"FID not measured ({backend})"
    low, high = row.get("fid_ci_low"), row.get("fid_ci_high")
    interval = f"95 % interval [{low:.2f}, {high:.2f}]" if low is not None and high is not None \
        else "interval not measured"
    reference = row.get("reference_samples")
    against = f" against {reference:,} reference images" if reference else " (reference N not recorded)"
    kid = f", KID {row['kid']:.4f}" if row.get("kid") is not None else ""
    prdc = ""
    if row.get("precision") is not None:
        prdc = (f", precision {row['precision']:.3f}, recall {row['recall']:.3f}, density {row['density']:.3f}, "
                f"coverage {row['coverage']:.3f} (k = {row.get('prdc_k')})")
    return (f"FID {row['fid']:.2f}, {interval}{kid}{prdc}; {backend}, N = {row.get('fid_samples')} samples{against}, "
            f"DDIM {row['ddim_steps']} steps")


def speed_text(row: dict) -> str:
    if row.get("sec_per_image") is None:
        return "sampling speed not measured"
    speed = f"{row['sec_per_image']:.4f} s per image on {row.get('sampling_device') or 'an unrecorded device'}"
    if row.get("peak_mem_sample_mb") is not None:
        batch = f" at batch {row['sample_batch']}" if row.get("sample_batch") else ""
        speed += f", peak memory {row['peak_mem_sample_mb']:,.1f} MB{batch} ({row.get('memory_method')})"
    return speed


def metric_lines(metrics: dict) -> list[str]:
    lines = []
    for row in metrics.get("rows", []):
        head = ""
        if row.get("guidance") is not None:
            head = f"guidance {row['guidance']:g}: conditioning accuracy {row['accuracy']:.3f}, "
        lines.append(f"- {head}{fid_text(row)}; {speed_text(row)}")
    for r in metrics.get("recognisability", []):
        measured = Recognisability(n=r["n"], confidence=r["confidence"], confident_share=r["confident_share"],
                                   class_shares=r["class_shares"], real_confident_share=r.get("real_confident_share"),
                                   reconstructed_confident_share=r.get("reconstructed_confident_share"))
        lines.append("- recognisable: " + measured.sentence("a classifier trained on the real training images",
                                                            r["ddim_steps"]))
    ae = metrics.get("autoencoder")
    if ae:
        rfid = ""
        if ae.get("rfid") is not None:
            low, high = ae.get("rfid_ci_low"), ae.get("rfid_ci_high")
            interval = f"95 % interval [{low:.1f}, {high:.1f}]" if low is not None else "interval not measured"
            rfid = f", rFID {ae['rfid']:.1f}, {interval} (Inception, N = {ae['rfid_samples']})"
        lines.append(f"- autoencoder: PSNR {ae['psnr']:.2f} dB, SSIM {ae['ssim']:.3f} (N = {ae['recon_samples']} "
                     f"held-out images){rfid}")
    return lines or ["- nothing measured"]


def evaluation_lines(run_dir: Path, results: Results, digest: str | None) -> list[str]:
    """What the ``evaluate`` run in ``run_dir`` measured of the weights with this digest."""
    models = [m for m in results.of(ModelRecord) if digest and m.weights_sha256 == digest]
    scores = [f for m in models for f in results.of(FidRecord, model=m.model)]
    if not scores:
        return []
    env = results.environment
    cfg = env.config if env else {}
    where = f" on {env.device_name}, {env.started[:10]}" if env else ""
    reference = Path(str(cfg.get("reference", "?"))).name
    lines = [f"Measured by `python -m ldm_eval evaluate`{where}, against held-out `{reference}` images "
             f"(split {cfg.get('reference_split', '?')}); results in `{run_dir.as_posix()}`:", ""]
    for f in sorted(scores, key=lambda f: (f.fid_backend, f.ddim_steps)):
        speed = results.one(SamplingRecord, model=f.model, ddim_steps=f.ddim_steps)
        row = {**vars(f), **(vars(speed) if speed else {}), "sampling_device": env.device_name if env and speed else None}
        lines.append(f"- {fid_text(row)}; {speed_text(row)}")
    return lines


# --- the card --------------------------------------------------------------------------------------------------------

def condition_lines(folder: Path, facts: TrainingSummary) -> list[str]:
    if facts.condition == "class":
        names = json.loads((folder / "condition_encoder" / "config.json").read_text())["class_names"]
        return ["## Labels", "", "Pass `labels=` (a name, case-insensitive, or an index; one for all images or one "
                "per image); no label samples the unconditional model:", "",
                ", ".join(f"{i} `{n}`" for i, n in enumerate(names)), ""]
    if facts.condition == "text":
        tokens = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] - 2
        classes = ", ".join(f"`{class_caption(n)}`" for n in FASHION_MNIST_CLASSES)
        return ["## Prompt format", "", "Pass `prompt=` (one for all images or one per image). The model was "
                "trained on one caption per image, `a photo of a(n) {class}`, with the Fashion-MNIST classes:", "",
                classes, "", f"Other wordings are out of its training; prompts may be at most {tokens} tokens.", ""]
    return []


def example_args(folder: Path, facts: TrainingSummary) -> str:
    if facts.condition == "class":
        names = json.loads((folder / "condition_encoder" / "config.json").read_text())["class_names"]
        return f', labels=["{names[-1]}", {0}], guidance_scale=3.0'
    if facts.condition == "text":
        return f', prompt="{class_caption(FASHION_MNIST_CLASSES[-1])}", guidance_scale=3.0'
    return ""


def usage_lines(name: str, folder: Path, facts: TrainingSummary) -> list[str]:
    count = 2 if facts.condition == "class" else 4  # a class model's example: one label per image, by name and index
    args = f"num_images={count}, num_inference_steps=50, seed=0{example_args(folder, facts)}"
    shape = f"({count}, {facts.resolution}, {facts.resolution}, {1 if facts.dataset == 'fashion-mnist' else 3})"
    return ["## Use it", "", "With plain diffusers (the folder carries its pipeline, `pipeline.py`, and any custom "
            "component; no LDM Lab code needed):", "", "```python", "from diffusers import DiffusionPipeline", "",
            f'pipe = DiffusionPipeline.from_pretrained("models/{name}", trust_remote_code=True)',
            f"images = pipe({args}).images  # floats in [0, 1], shape {shape}", "```", "",
            "With LDM Lab's own loader (from the repository root):", "", "```python",
            "from pipelines.loading import load_pipeline", "", f'pipe = load_pipeline("models/{name}")',
            f"images = pipe({args}).images", "```", "",
            "The same seed gives the same images both ways; `scheduler=\"ddpm\"` samples with DDPM instead of DDIM.",
            ""]


def render_card(folder: Path, set_facts: dict[str, TrainingSummary], evaluated: list[str]) -> str:
    """The one card template (see the module docstring); ``evaluated``: lines from ``evaluate`` runs."""
    name = folder.name
    facts = set_facts.get(name) or TrainingSummary.load(folder / "training.json")
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    what = "pixel-space diffusion model (no autoencoder)" if facts.factor == 1 else \
        f"latent diffusion model on a {facts.kind.upper()} autoencoder"
    condition = {"none": "unconditional", "class": "class-conditional", "text": "text-conditional"}[facts.condition]
    params = f"UNet {facts.unet_params:,}" + (f", autoencoder {facts.ae_params:,}" if facts.factor > 1 else "") + \
        (f", condition encoder {facts.condition_params:,}" if facts.condition != "none" else "")
    lines = [f"# {name}", "", f"An LDM Lab {condition} {what}, trained from scratch on {data_line(facts)}.", "",
             "## Model", "", f"- data: {data_line(facts)}", f"- compression: f = {facts.factor}, latent "
             f"{'x'.join(map(str, facts.latent_shape))} (channels x height x width)", f"- parameters: {params}",
             f"- training: {facts.train_steps:,} steps of batch {facts.batch_size} ({facts.train_images:,} images), "
             f"{facts.train_seconds:.0f} s on {hardware(facts)}, seed {facts.seed}",
             *budget_note(name, facts, {k: v for k, v in set_facts.items() if k != name}),
             f"- {made_by(name, facts)}; weights stored in fp16"]
    if facts.condition != "none":
        lines.append(f"- conditioning: cross-attention on {facts.condition} tokens, condition dropout "
                     f"{facts.condition_dropout}, so classifier-free guidance works (`guidance_scale`)")
    lines += ["", "## Measured", "", "Measured by the harness in the same run (95 % intervals: bootstrap over the "
              "sample set; sampling speed of that run):", "", *metric_lines(metrics), ""]
    if evaluated:
        lines += ["## Measured with evaluate", "", *evaluated, ""]
    lines += condition_lines(folder, facts)
    lines += usage_lines(name, folder, facts)
    licence = FASHION_LICENCE if facts.dataset == "fashion-mnist" else UTKFACE_LICENCE
    lines += ["## Licence", "", licence, ""]
    return "\n".join(lines)


def zoo_facts(models: Path) -> dict[str, TrainingSummary]:
    return {p.parent.name: TrainingSummary.load(p.parent / "training.json")
            for p in sorted(models.glob("*/model_index.json")) if (p.parent / "training.json").is_file()}


def finish_folder(folder: Path, evaluations: dict[Path, Results] | None = None,
                  zoo: dict[str, TrainingSummary] | None = None) -> bool:
    """Remote code, model_index.json and card of one pipeline folder; whether its card changed.

    ``zoo``: the training facts of the zoo it sits in (default: its parent folder's), for the budget line.
    """
    write_hub_files(folder)
    zoo = zoo_facts(folder.parent) if zoo is None else zoo
    prefix = folder.name.split("-")[0]
    set_facts = {k: v for k, v in zoo.items() if k.split("-")[0] == prefix}
    digest = weights_digest(folder)
    evaluated: list[str] = []
    for run, results in (evaluations or {}).items():
        found = evaluation_lines(run, results, digest)
        evaluated += (["", *found] if evaluated and found else found)
    card = render_card(folder, set_facts, evaluated)
    path = folder / "README.md"
    if path.is_file() and path.read_text() == card:
        return False
    write_text_atomic(path, card)
    return True


def render_zoo(models: Path, evaluation_runs: list[Path]) -> list[Path]:
    """Finish every pipeline folder of the zoo (code, index, card); the cards that changed."""
    runs = {run: read_results(run) for run in evaluation_runs if (run / "results.jsonl").is_file()}
    zoo = zoo_facts(models)
    return [folder / "README.md" for folder in sorted(models / n for n in zoo) if finish_folder(folder, runs, zoo)]
