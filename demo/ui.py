"""The Gradio app: five tabs over :class:`demo.service.Lab`, with named API endpoints (one builder per tab)."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from pipelines.conditioning import MAX_GUIDANCE
from pipelines.data import FASHION_MNIST_CLASSES, load_dataset
from pipelines.errors import quote
from pipelines.images import unit_to_uint8
from pipelines.results_log import read_results

from .service import MAX_IMAGES, MAX_STEPS, DemoInputError, Lab, is_colour, open_upload
from .views import (
    compare_chart,
    compare_grid_html,
    dataset_title,
    readable,
    reconstruction_grid_html,
)
from .zoo import CONDITION_WORDS, ModelEntry, best_measured, results_table

INTRO = """# LDM Lab: why latent diffusion works
Pixel-space diffusion (f = 1) against latent diffusion whose autoencoder shrinks each side by f.
Same denoiser size everywhere: watch time and memory fall as f grows, and detail go when f is too big."""

# "What am I looking at": one plain line under each tab's title
TAB_NOTES = {
    "generate": "Draw new images from one model. **f** is how much its autoencoder shrinks each side of the image "
                "before diffusion runs (f = 1: pixel space, no autoencoder); the denoiser works on the smaller latent.",
    "compare": "The same seed through several models, one column per f, grouped by data set. Under each image: "
               "sampling time, throughput, peak memory and the FID its report measured (lower is better). "
               "Cf. the paper's Fig. 6-7: small f is slow, large f loses detail; the middle wins.",
    "explorer": "Only the autoencoder (first stage): the image is encoded to a latent and decoded back. The latent "
                "shape is channels x height x width; the compression ratio is image values / latent values. "
                "PSNR (dB, higher is better) says how much detail survives. Cf. the paper's Tab. 8.",
    "trajectory": "One sample, step by step: left of each frame the noisy latent decoded (x_t), right the model's "
                  "current guess of the clean image (x0). Early steps settle the layout, late steps add detail.",
    "results": "The harness's measurements (`python -m ldm_eval`): pick a report or run folder to see its table "
               "and plots. Every number says what produced it (backend, N samples, steps) in the report itself.",
}

NO_LABEL = ("(no label)", "")
PROMPT_EXAMPLE = "a photo of an ankle boot"
GUIDANCE_INFO = "1 = plain conditional model; higher = more faithful, less diverse"


def _user_errors(fn):
    """Turn refused input into a message shown to the user (no traceback).

    ``DemoInputError`` carries the service's messages (the core's, named by control); other
    ValueErrors are the core's refusals the service does not rename (an unreadable model folder).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:  # DemoInputError included
            # a refused input is the user's to fix, not the server's: no traceback in the log
            raise gr.Error(str(err), print_exception=False) from None
    return wrapper


# Generate, Compare and Reconstruct run with ``preprocess=False``: their values reach the
# service as sent, and the service and the core check them and say what is wrong in words
# that name the control and the allowed range. Gradio's own checks would answer first, with
# messages that do neither ("Value 50.5 is greater than maximum value 50.", or, for a file
# that is not an image, only "the upstream Gradio app has raised an exception"). Gradio still
# validates the shape of each value and keeps uploads inside its cache.
RAW = {"preprocess": False}


def _upload_path(payload: dict | str | None) -> str | None:
    """The uploaded file (in Gradio's cache) from an unprocessed image value; the service reads it."""
    return payload.get("path") if isinstance(payload, dict) else payload


def _sampler(name: object) -> object:
    """The radio shows "DDIM"/"DDPM"; the core reads "ddim"/"ddpm" (anything else goes on as it is, to be refused)."""
    return name.lower() if isinstance(name, str) else name


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)


def _upscale(image: Image.Image, size: int = 128) -> Image.Image:
    return image.resize((size, size), Image.Resampling.NEAREST) if image.width < size else image


def _label_choices(names: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """Class names for the label picker, led by the empty choice (= no label: unconditional sample)."""
    return [NO_LABEL] + [(n, n) for n in names]


def _all_class_names(models: list[ModelEntry]) -> list[str]:
    """The union of the class models' names in order, or Fashion-MNIST's, so API callers can name any class."""
    names = list(dict.fromkeys(n for m in models if m.condition == "class" for n in m.class_names))
    return names or list(FASHION_MNIST_CLASSES)


def _class_names(entry: ModelEntry | None) -> list[str]:
    return list(entry.class_names) if entry is not None and entry.condition == "class" else []


def _condition_note(entry: ModelEntry | None) -> str:
    """One line under the model picker saying what this model reads."""
    if entry is None:
        return ""
    if entry.condition == "none":
        return "This model is **unconditional**: label, prompt and guidance do not apply (keep guidance at 1)."
    return f"This model is conditioned on **{CONDITION_WORDS[entry.condition]}**."


DEFAULT_PICKS = 6  # models ticked at first in Compare and in the explorer


def _main_set(models: list[ModelEntry]) -> list[ModelEntry]:
    """The unconditional models of the data set with the most factors, the largest images among equals: what the
    demo opens on (the paper's question is clearest where every factor leaves a real latent)."""
    sets: dict[tuple[str, int], list[ModelEntry]] = {}
    for m in models:
        if m.condition == "none":
            sets.setdefault((m.dataset, m.resolution), []).append(m)
    return max(sets.values(), key=lambda ms: (len({m.factor for m in ms}), ms[0].resolution), default=[])


def default_model(models: list[ModelEntry]) -> str | None:
    """Generate's first model: the main set's best by its own run's FID, else its f = 4 (the paper's sweet
    spot), else its first, else any."""
    main = _main_set(models)
    best = best_measured(main)
    if best is not None:
        return best.label
    return next((m.label for m in main if m.factor == 4), main[0].label if main else
                (models[0].label if models else None))


def compare_default(models: list[ModelEntry]) -> list[str]:
    """Compare's first choice: one model per (kind, factor) of the main set, smallest f first."""
    first: dict[tuple[str, int], ModelEntry] = {}
    for m in _main_set(models):
        first.setdefault((m.kind, m.factor), m)
    chosen = sorted(first.values(), key=lambda m: (m.factor, m.kind)) or models
    return [m.label for m in chosen][:DEFAULT_PICKS]


def explorer_default(entries: list[ModelEntry], channels: int | None = None) -> list[str]:
    """The explorer's choice for an image of ``channels`` (1 grey, 3 colour; None: before any image).

    Models trained on data like the image (a colour photo through grey Fashion-MNIST models
    comes back as grey mush): a KL and a VQ autoencoder of each of the first two factors that
    have both, else one model per (kind, factor), smallest factor first.
    """
    pool = [e for e in entries if channels is None or e.channels == channels] or entries
    first = {}  # one model per (kind, factor): stand-alone autoencoders before pipelines, then by name
    for e in sorted(pool, key=lambda e: (not e.first_stage_only, e.factor, e.kind, e.name)):
        first.setdefault((e.kind, e.factor), e)
    both = sorted({f for k, f in first if k == "kl"} & {f for k, f in first if k == "vq"})[:2]
    chosen = [first[(kind, f)] for f in both for kind in ("kl", "vq")]
    if not chosen:
        chosen = sorted(first.values(), key=lambda e: (e.factor, e.kind))[:DEFAULT_PICKS]
    return [e.label for e in chosen]


def build_app(lab: Lab) -> gr.Blocks:
    """The five tabs, in order; each tab's builder lays out its controls and wires its handlers."""
    with gr.Blocks(title="LDM Lab") as app:
        gr.Markdown(INTRO)
        if not lab.models:
            gr.Markdown("**No models found.** Train some with `python -m ldm_eval` (they appear from `runs/`).")
        _generate_tab(lab)
        _compare_tab(lab)
        _explorer_tab(lab)
        _trajectory_tab(lab)
        _results_tab(lab, app)
    return app


def _generate_tab(lab: Lab) -> None:
    labels = [m.label for m in lab.models]
    default = default_model(lab.models)
    default_entry = lab.entry(default) if default else None
    default_kind = default_entry.condition if default_entry is not None else "none"

    @_user_errors
    def generate(model, sampler, steps, seed, n, label=None, prompt=None, guidance=1.0):
        timed, timing = lab.generate(model, _sampler(sampler), steps, seed, n, label=label, prompt=prompt,
                                     guidance=1.0 if guidance is None else guidance)
        images = [_upscale(_pil(img)) for img in unit_to_uint8(timed.images)]
        return images, timing.__dict__

    def generate_model_changed(model, label):
        """Offer the chosen model's own classes, and clear the inputs it cannot read (so Generate works)."""
        try:
            entry = lab.entry(model)
        except DemoInputError:
            entry = None
        kind, names = (entry.condition if entry is not None else "none"), _class_names(entry)
        label = gr.Dropdown(choices=_label_choices(names), value=label if label in names else "",
                            interactive=kind == "class")
        prompt = gr.Textbox(interactive=True) if kind == "text" else gr.Textbox(value="", interactive=False)
        guidance = gr.Slider(interactive=True) if kind != "none" else gr.Slider(value=1, interactive=False)
        return label, prompt, guidance, _condition_note(entry)

    with gr.Tab("Generate"):
        gr.Markdown(TAB_NOTES["generate"], elem_classes="tab-note")
        with gr.Row():
            g_model = gr.Dropdown(labels, value=default, label="Model")
            g_sampler = gr.Radio(["DDIM", "DDPM"], value="DDIM", label="Sampler")
        g_note = gr.Markdown(_condition_note(default_entry), elem_id="generate-condition-note")
        with gr.Row():
            g_steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
            g_seed = gr.Number(0, precision=0, label="Seed")
            g_n = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Images")
        with gr.Row():
            # API callers never fire the model-change event: until it fires, offer every known class
            g_label = gr.Dropdown(_label_choices(_all_class_names(lab.models)), value="", label="Class label",
                                  elem_id="generate-label", interactive=default_kind == "class",
                                  info="Class-conditional models only")
            g_prompt = gr.Textbox("", label="Prompt", placeholder=PROMPT_EXAMPLE, elem_id="generate-prompt",
                                  interactive=default_kind == "text", info="Text-conditional models only")
            g_guidance = gr.Slider(0, MAX_GUIDANCE, value=1, step=0.5, label="Guidance scale",
                                   info=GUIDANCE_INFO, elem_id="generate-guidance",
                                   interactive=default_kind != "none")
        g_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        g_gallery = gr.Gallery(label="Samples", columns=8, height="auto", object_fit="contain",
                               elem_id="generate-gallery")
        g_timing = gr.JSON(label="Timing", elem_id="generate-timing")
        g_model.change(generate_model_changed, [g_model, g_label], [g_label, g_prompt, g_guidance, g_note],
                       api_visibility="private")
        g_button.click(generate, [g_model, g_sampler, g_steps, g_seed, g_n, g_label, g_prompt, g_guidance],
                       [g_gallery, g_timing], api_name="generate", **RAW)


def _compare_tab(lab: Lab) -> None:
    @_user_errors
    def compare(models, sampler, steps, seed, label=None, prompt=None, guidance=1.0):
        rows = lab.compare(models or [], _sampler(sampler), steps, seed, label=label, prompt=prompt,
                           guidance=1.0 if guidance is None else guidance)
        table = [{"model": r.entry.short_name, "data": dataset_title(r.entry), "factor": r.entry.factor,
                  "kind": r.entry.kind_text, "condition": r.condition.caption, "guidance": r.timing.guidance,
                  "wall_s": r.timing.wall_seconds, "samples_per_s": r.timing.samples_per_s,
                  "peak_memory_mb": r.timing.peak_memory_mb, "memory": r.timing.memory_method,
                  "fid (its report)": r.fid} for r in rows]
        return compare_grid_html(rows), compare_chart(rows), readable(pd.DataFrame(table))

    with gr.Tab("Compare factors"):
        gr.Markdown(TAB_NOTES["compare"], elem_classes="tab-note")
        c_models = gr.CheckboxGroup([m.label for m in lab.models], value=compare_default(lab.models),
                                    label="Models", elem_id="compare-models")
        with gr.Row():
            c_sampler = gr.Radio(["DDIM", "DDPM"], value="DDIM", label="Sampler")
            c_steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
            c_seed = gr.Number(0, precision=0, label="Seed")
        with gr.Row():
            c_label = gr.Dropdown(_label_choices(_all_class_names(lab.models)), value="", label="Class label",
                                  elem_id="compare-label",
                                  info="Class models use it; text models without a prompt use its caption")
            c_prompt = gr.Textbox("", label="Prompt", placeholder=PROMPT_EXAMPLE, elem_id="compare-prompt",
                                  info="Text-conditional models only; unconditional models ignore both")
            c_guidance = gr.Slider(0, MAX_GUIDANCE, value=1, step=0.5, label="Guidance scale",
                                   info=GUIDANCE_INFO, elem_id="compare-guidance")
        c_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
        c_grid = gr.HTML(elem_id="compare-grid")
        c_chart = gr.Plot(label="Seconds per image and FID per model", elem_id="compare-chart")
        c_table = gr.Dataframe(label="Time, memory and FID", elem_id="compare-table")
        c_button.click(compare, [c_models, c_sampler, c_steps, c_seed, c_label, c_prompt, c_guidance],
                       [c_grid, c_chart, c_table], api_name="compare", **RAW)


def _explorer_tab(lab: Lab) -> None:
    explorer = lab.explorer_models

    @_user_errors
    def reconstruct(image, models):
        rows = lab.reconstruct(_upload_path(image), models or [])
        latents = [(Image.fromarray(p), f"{r['kind'].upper()} f={r['factor']} · {i}")
                   for r in rows for i, p in enumerate(r["latents"])]
        table = pd.DataFrame([{"model": r["entry"].short_name, "kind": r["kind"].upper(), "factor": r["factor"],
                               "latent": "x".join(map(str, r["latent_shape"])),
                               "compression_ratio": r["compression_ratio"], "psnr_db": r["psnr"], "ssim": r["ssim"]}
                              for r in rows])
        return reconstruction_grid_html(rows), latents, readable(table)

    def explorer_upload(image):
        """Check an upload at once (a file that is not an image is named and cleared) and tick the models
        trained on data like it: colour photos -> the colour (face) models, grey -> the grey ones."""
        try:
            picture = open_upload(_upload_path(image))
        except DemoInputError as err:
            gr.Warning(str(err))
            return None, gr.CheckboxGroup()
        return gr.Image(), gr.CheckboxGroup(value=explorer_default(explorer, 3 if is_colour(picture) else 1))

    def pick_from_data(index):
        resolution = max((m.resolution for m in lab.models), default=32)
        data = _test_images(resolution)
        i = int(index or 0) % len(data)
        return _pil(data[i]), gr.CheckboxGroup(value=explorer_default(explorer, 1))  # Fashion-MNIST: grey

    with gr.Tab("Autoencoder explorer"):
        gr.Markdown(TAB_NOTES["explorer"], elem_classes="tab-note")
        with gr.Row():
            r_image = gr.Image(type="filepath", label="Upload an image (up to 10 MB)", elem_id="explorer-image")
            with gr.Column():
                r_index = gr.Number(0, precision=0, label="...or a held-out image from the data set (index)")
                r_pick = gr.Button("Use data set image")
        r_models = gr.CheckboxGroup([m.label for m in explorer], value=explorer_default(explorer),
                                    label="Models (uploading an image ticks those trained on data like it)",
                                    elem_id="explorer-models")
        r_button = gr.Button("Reconstruct", variant="primary", elem_id="explorer-button")
        r_grid = gr.HTML(elem_id="explorer-grid")
        r_latents = gr.Gallery(label="Latent channels", columns=8, height="auto", object_fit="contain")
        r_table = gr.Dataframe(label="Quality and compression", elem_id="explorer-table")
        r_image.upload(explorer_upload, [r_image], [r_image, r_models], api_visibility="private", **RAW)
        r_pick.click(pick_from_data, [r_index], [r_image, r_models], api_visibility="private")
        r_button.click(reconstruct, [r_image, r_models], [r_grid, r_latents, r_table], api_name="reconstruct",
                       **RAW)


def _trajectory_tab(lab: Lab) -> None:
    @_user_errors
    def trajectory(model, steps, seed):
        timed, timing = lab.generate(model, "ddim", steps, seed, 1, trajectory=True)
        xt, x0 = unit_to_uint8(timed.trajectory_xt[:, 0]), unit_to_uint8(timed.trajectory_x0[:, 0])
        frames = [np.concatenate([a, b], axis=1) for a, b in zip(xt, x0)]
        pil = [_pil(f).resize((256, 128), Image.Resampling.NEAREST) for f in frames]
        gif = Path(_tmpdir()) / f"trajectory-{abs(hash((model, steps, seed)))}.gif"
        pil[0].save(gif, save_all=True, append_images=pil[1:], duration=120, loop=0)
        gallery = [(img, f"t={t}") for img, t in zip(pil, timed.timesteps)]
        return str(gif), gallery, timing.__dict__

    with gr.Tab("Denoising trajectory"):
        gr.Markdown(TAB_NOTES["trajectory"], elem_classes="tab-note")
        with gr.Row():
            t_model = gr.Dropdown([m.label for m in lab.models], value=default_model(lab.models), label="Model")
            t_steps = gr.Slider(2, 100, value=20, step=1, label="DDIM steps")
            t_seed = gr.Number(0, precision=0, label="Seed")
        t_button = gr.Button("Show trajectory", variant="primary")
        with gr.Row():
            t_gif = gr.Image(label="Animation (x_t | predicted x0)", type="filepath", height=280)
            t_timing = gr.JSON(label="Timing")
        t_frames = gr.Gallery(label="Every step (x_t | predicted x0)", columns=5, height="auto",
                              object_fit="contain", elem_id="trajectory-frames")
        t_button.click(trajectory, [t_model, t_steps, t_seed], [t_gif, t_frames, t_timing], api_name="trajectory")


def _results_tab(lab: Lab, app: gr.Blocks) -> None:
    folders, newest = lab.result_folders()
    first_report = next((name for name, path in folders.items() if path == newest), next(iter(folders), None))

    def show_results(name):
        """The chosen run's table (rounded), its plots and where its full report is."""
        if not name:
            return (gr.Markdown("No harness report found yet: run `python -m ldm_eval`."), None,
                    gr.Gallery(value=[], visible=False))
        if name not in folders:
            raise gr.Error(f"Unknown report folder {quote(name)}; pick one from the list.", print_exception=False)
        path = folders[name]
        table = results_table(read_results(path), path)
        report = next((f"`{name}/{file}`" for file in ("report.html", "report.md") if (path / file).is_file()),
                      "none rendered yet (`python -m ldm_eval report FOLDER`)")
        plots = [(str(p), p.stem.replace("_", " ")) for p in sorted((path / "plots").glob("*.png"))]
        return (gr.Markdown(f"Results of `{name}`; full report: {report}."), readable(table),
                gr.Gallery(value=plots, visible=bool(plots)))

    with gr.Tab("Results"):
        gr.Markdown(TAB_NOTES["results"], elem_classes="tab-note")
        s_folder = gr.Dropdown(list(folders), value=first_report, label="Report or run folder",
                               elem_id="results-folder")
        s_where = gr.Markdown(elem_id="results-where")
        s_table = gr.Dataframe(label="Results", elem_id="results-table")
        s_plots = gr.Gallery(label="Plots", columns=2, height="auto", object_fit="contain",
                             elem_id="results-plots")
        s_folder.change(show_results, [s_folder], [s_where, s_table, s_plots], api_name="results")
        app.load(show_results, [s_folder], [s_where, s_table, s_plots], api_visibility="private")


@functools.lru_cache(maxsize=4)
def _test_images(resolution: int) -> np.ndarray:
    data = load_dataset("fashion-mnist", resolution, split="test").subset(256)
    return data.images.permute(0, 2, 3, 1).numpy()


@functools.lru_cache(maxsize=1)
def _tmpdir() -> str:
    return tempfile.mkdtemp(prefix="ldm-lab-")
