"""The Gradio app: five tabs over :class:`demo.service.Lab`, with named API endpoints."""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from pipelines.conditioning import MAX_GUIDANCE
from pipelines.data import FASHION_MNIST_CLASSES, load_dataset
from pipelines.images import unit_to_uint8

from .service import MAX_IMAGES, MAX_STEPS, DemoInputError, Lab
from .zoo import CONDITION_WORDS, ModelEntry

INTRO = """# LDM Lab: why latent diffusion works
Pixel-space diffusion (f = 1) against latent diffusion whose autoencoder shrinks each side by f.
Same denoiser size everywhere: watch time and memory fall as f grows, and detail go when f is too big."""

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
            raise gr.Error(str(err)) from None
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


def explorer_default(entries: list[ModelEntry]) -> list[str]:
    """The explorer's first choice: a KL and a VQ autoencoder of each of the first two shared factors, if any."""
    pairs = [e for e in entries if e.first_stage_only]
    both = sorted({e.factor for e in pairs if e.kind == "kl"} & {e.factor for e in pairs if e.kind == "vq"})[:2]
    chosen = [e.label for e in pairs if e.factor in both]
    return chosen or [e.label for e in entries][:5]


def build_app(lab: Lab) -> gr.Blocks:
    labels = [m.label for m in lab.models]
    default = next((m.label for m in lab.models if m.factor == 4 and m.condition == "none"),
                   next((m.label for m in lab.models if m.factor == 4), labels[0] if labels else None))
    default_entry = lab.entry(default) if default else None
    default_kind = default_entry.condition if default_entry is not None else "none"
    all_classes = _all_class_names(lab.models)

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

    @_user_errors
    def compare(models, sampler, steps, seed, label=None, prompt=None, guidance=1.0):
        rows = lab.compare(models or [], _sampler(sampler), steps, seed, label=label, prompt=prompt,
                           guidance=1.0 if guidance is None else guidance)
        gallery, table = [], []
        for entry, timed, timing, fid, condition in rows:
            caption = (f"f={entry.factor} ({condition.caption}): {timing.wall_seconds:.2f} s, "
                       f"{timing.peak_memory_mb or 0:.0f} MB; {fid}")
            gallery.append((_upscale(_pil(unit_to_uint8(timed.images)[0])), caption))
            table.append({"model": entry.label, "factor": entry.factor, "condition": condition.caption,
                          "guidance": timing.guidance, "wall_s": timing.wall_seconds,
                          "samples_per_s": timing.samples_per_s, "peak_memory_mb": timing.peak_memory_mb,
                          "memory": timing.memory_method, "fid (latest report)": fid})
        return gallery, pd.DataFrame(table)

    @_user_errors
    def reconstruct(image, models):
        rows = lab.reconstruct(_upload_path(image), models or [])
        gallery = [(_upscale(_pil(rows[0]["input"])), "input")]
        gallery += [(_upscale(_pil(r["reconstruction"])),
                     f"{r['kind'].upper()} f={r['factor']}: PSNR {r['psnr']:.1f} dB, SSIM {r['ssim']:.3f}") for r in rows]
        latents = [(Image.fromarray(p), f"{r['kind'].upper()} f={r['factor']} channel {i}")
                   for r in rows for i, p in enumerate(r["latents"])]
        table = pd.DataFrame([{"model": r["model"], "factor": r["factor"], "latent": "x".join(map(str, r["latent_shape"])),
                               "compression_ratio": round(r["compression_ratio"], 1), "psnr_db": round(r["psnr"], 2),
                               "ssim": round(r["ssim"], 4), "kind": r["kind"]} for r in rows])
        return gallery, latents, table

    @_user_errors
    def trajectory(model, steps, seed):
        timed, timing = lab.generate(model, "ddim", steps, seed, 1, trajectory=True)
        xt, x0 = unit_to_uint8(timed.trajectory_xt[:, 0]), unit_to_uint8(timed.trajectory_x0[:, 0])
        frames = [np.concatenate([a, b], axis=1) for a, b in zip(xt, x0)]
        pil = [_upscale(_pil(f), 256) for f in frames]
        gif = Path(_tmpdir()) / f"trajectory-{abs(hash((model, steps, seed)))}.gif"
        pil[0].save(gif, save_all=True, append_images=pil[1:], duration=120, loop=0)
        gallery = [(img, f"t={t}: x_t | predicted x0") for img, t in zip(pil, timed.timesteps)]
        return str(gif), gallery, timing.__dict__

    def pick_from_data(index):
        resolution = max((m.resolution for m in lab.models), default=32)
        data = _test_images(resolution)
        i = int(index) % len(data)
        return _pil(data[i])

    results, report_dir = lab.results()
    with gr.Blocks(title="LDM Lab") as app:
        gr.Markdown(INTRO)
        if not labels:
            gr.Markdown("**No models found.** Train some with `python -m ldm_eval` (they appear from `runs/`).")
        with gr.Tab("Generate"):
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
                g_label = gr.Dropdown(_label_choices(all_classes), value="", label="Class label",
                                      elem_id="generate-label", interactive=default_kind == "class",
                                      info="Class-conditional models only")
                g_prompt = gr.Textbox("", label="Prompt", placeholder=PROMPT_EXAMPLE, elem_id="generate-prompt",
                                      interactive=default_kind == "text", info="Text-conditional models only")
                g_guidance = gr.Slider(0, MAX_GUIDANCE, value=1, step=0.5, label="Guidance scale",
                                       info=GUIDANCE_INFO, elem_id="generate-guidance",
                                       interactive=default_kind != "none")
            g_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            g_gallery = gr.Gallery(label="Samples", columns=8, elem_id="generate-gallery")
            g_timing = gr.JSON(label="Timing", elem_id="generate-timing")
            g_model.change(generate_model_changed, [g_model, g_label], [g_label, g_prompt, g_guidance, g_note],
                           api_visibility="private")
            g_button.click(generate, [g_model, g_sampler, g_steps, g_seed, g_n, g_label, g_prompt, g_guidance],
                           [g_gallery, g_timing], api_name="generate", **RAW)
        with gr.Tab("Compare factors"):
            c_models = gr.CheckboxGroup(labels, value=labels[:6], label="Models")
            with gr.Row():
                c_sampler = gr.Radio(["DDIM", "DDPM"], value="DDIM", label="Sampler")
                c_steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
                c_seed = gr.Number(0, precision=0, label="Seed")
            with gr.Row():
                c_label = gr.Dropdown(_label_choices(all_classes), value="", label="Class label",
                                      elem_id="compare-label",
                                      info="Class models use it; text models without a prompt use its caption")
                c_prompt = gr.Textbox("", label="Prompt", placeholder=PROMPT_EXAMPLE, elem_id="compare-prompt",
                                      info="Text-conditional models only; unconditional models ignore both")
                c_guidance = gr.Slider(0, MAX_GUIDANCE, value=1, step=0.5, label="Guidance scale",
                                       info=GUIDANCE_INFO, elem_id="compare-guidance")
            c_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            c_gallery = gr.Gallery(label="Same seed, every factor", columns=6, elem_id="compare-gallery")
            c_table = gr.Dataframe(label="Time, memory and FID")
            c_button.click(compare, [c_models, c_sampler, c_steps, c_seed, c_label, c_prompt, c_guidance],
                           [c_gallery, c_table], api_name="compare", **RAW)
        with gr.Tab("Autoencoder explorer"):
            with gr.Row():
                r_image = gr.Image(type="filepath", label="Upload an image (up to 10 MB)")
                with gr.Column():
                    r_index = gr.Number(0, precision=0, label="...or a held-out image from the data set (index)")
                    r_pick = gr.Button("Use data set image")
            explorer = lab.explorer_models
            r_models = gr.CheckboxGroup([m.label for m in explorer], value=explorer_default(explorer),
                                        label="Models (KL and VQ autoencoders of the same f sit side by side)")
            r_button = gr.Button("Reconstruct", variant="primary")
            r_gallery = gr.Gallery(label="Input and reconstructions", columns=6)
            r_latents = gr.Gallery(label="Latent channels", columns=8)
            r_table = gr.Dataframe(label="Quality and compression")
            r_pick.click(pick_from_data, [r_index], [r_image], api_visibility="private")
            r_button.click(reconstruct, [r_image, r_models], [r_gallery, r_latents, r_table], api_name="reconstruct",
                           **RAW)
        with gr.Tab("Denoising trajectory"):
            with gr.Row():
                t_model = gr.Dropdown(labels, value=default, label="Model")
                t_steps = gr.Slider(2, 100, value=20, step=1, label="DDIM steps")
                t_seed = gr.Number(0, precision=0, label="Seed")
            t_button = gr.Button("Show trajectory", variant="primary")
            gr.Markdown("Left: the noisy sample x_t; right: the model's guess of the clean image x0. Early steps "
                        "settle the layout, late steps add detail.")
            t_gif = gr.Image(label="Animation", type="filepath")
            t_frames = gr.Gallery(label="Every step", columns=10)
            t_timing = gr.JSON(label="Timing")
            t_button.click(trajectory, [t_model, t_steps, t_seed], [t_gif, t_frames, t_timing], api_name="trajectory")
        with gr.Tab("Results"):
            if results is None:
                gr.Markdown("No harness report found yet: run `python -m ldm_eval`.")
            else:
                gr.Markdown(f"Latest harness results: `{report_dir}` (see `report.html` there for the full report).")
                source = "results.csv" if (report_dir / "results.csv").is_file() else "FID records (results.jsonl)"
                gr.Dataframe(results, label=source)
                for plot in sorted((report_dir / "plots").glob("*.png")):
                    gr.Image(str(plot), label=plot.stem, type="filepath")
    return app


@functools.lru_cache(maxsize=4)
def _test_images(resolution: int) -> np.ndarray:
    data = load_dataset("fashion-mnist", resolution, split="test").subset(256)
    return data.images.permute(0, 2, 3, 1).numpy()


@functools.lru_cache(maxsize=1)
def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="ldm-lab-")
