"""The Gradio app: five tabs over :class:`demo.service.Lab`, with named API endpoints."""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from pipelines.data import load_dataset
from pipelines.pipeline import to_uint8

from .service import MAX_IMAGES, MAX_STEPS, DemoInputError, Lab

INTRO = """# LDM Lab: why latent diffusion works
Pixel-space diffusion (f = 1) against latent diffusion whose autoencoder shrinks each side by f.
Same denoiser size everywhere: watch time and memory fall as f grows, and detail go when f is too big."""


def _user_errors(fn):
    """Turn the service's input errors into messages shown to the user (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DemoInputError as err:
            raise gr.Error(str(err)) from None
        except ValueError as err:  # the pipelines' own validation (steps, shapes, files)
            raise gr.Error(str(err)) from None
    return wrapper


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)


def _upscale(image: Image.Image, size: int = 128) -> Image.Image:
    return image.resize((size, size), Image.Resampling.NEAREST) if image.width < size else image


def build_app(lab: Lab) -> gr.Blocks:
    labels = [m.label for m in lab.models]
    default = next((m.label for m in lab.models if m.factor == 4), labels[0] if labels else None)

    @_user_errors
    def generate(model, sampler, steps, seed, n):
        timed, timing = lab.generate(model, sampler.lower(), steps, seed, n)
        images = [_upscale(_pil(img)) for img in to_uint8(timed.images)]
        return images, timing.__dict__

    @_user_errors
    def compare(models, sampler, steps, seed):
        rows = lab.compare(models or [], sampler.lower(), steps, seed)
        gallery, table = [], []
        for entry, timed, timing, fid in rows:
            caption = f"f={entry.factor}: {timing.wall_seconds:.2f} s, {timing.peak_memory_mb or 0:.0f} MB; {fid}"
            gallery.append((_upscale(_pil(to_uint8(timed.images)[0])), caption))
            table.append({"model": entry.label, "factor": entry.factor, "wall_s": timing.wall_seconds,
                          "samples_per_s": timing.samples_per_s, "peak_memory_mb": timing.peak_memory_mb,
                          "memory": timing.memory_method, "fid (latest report)": fid})
        return gallery, pd.DataFrame(table)

    @_user_errors
    def reconstruct(image, models):
        rows = lab.reconstruct(image, models or [])
        gallery = [(_upscale(_pil(rows[0]["input"])), "input")]
        gallery += [(_upscale(_pil(r["reconstruction"])), f"f={r['factor']}: PSNR {r['psnr']:.1f} dB, SSIM {r['ssim']:.3f}")
                    for r in rows]
        latents = [(Image.fromarray(p), f"f={r['factor']} channel {i}") for r in rows for i, p in enumerate(r["latents"])]
        table = pd.DataFrame([{"model": r["model"], "factor": r["factor"], "latent": "x".join(map(str, r["latent_shape"])),
                               "compression_ratio": round(r["compression_ratio"], 1), "psnr_db": round(r["psnr"], 2),
                               "ssim": round(r["ssim"], 4)} for r in rows])
        return gallery, latents, table

    @_user_errors
    def trajectory(model, steps, seed):
        timed, timing = lab.generate(model, "ddim", steps, seed, 1, trajectory=True)
        xt, x0 = to_uint8(timed.trajectory_xt[:, 0]), to_uint8(timed.trajectory_x0[:, 0])
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
            with gr.Row():
                g_steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
                g_seed = gr.Number(0, precision=0, label="Seed")
                g_n = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Images")
            g_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            g_gallery = gr.Gallery(label="Samples", columns=8, elem_id="generate-gallery")
            g_timing = gr.JSON(label="Timing")
            g_button.click(generate, [g_model, g_sampler, g_steps, g_seed, g_n], [g_gallery, g_timing], api_name="generate")
        with gr.Tab("Compare factors"):
            c_models = gr.CheckboxGroup(labels, value=labels[:6], label="Models")
            with gr.Row():
                c_sampler = gr.Radio(["DDIM", "DDPM"], value="DDIM", label="Sampler")
                c_steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
                c_seed = gr.Number(0, precision=0, label="Seed")
            c_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            c_gallery = gr.Gallery(label="Same seed, every factor", columns=6, elem_id="compare-gallery")
            c_table = gr.Dataframe(label="Time, memory and FID")
            c_button.click(compare, [c_models, c_sampler, c_steps, c_seed], [c_gallery, c_table], api_name="compare")
        with gr.Tab("Autoencoder explorer"):
            with gr.Row():
                r_image = gr.Image(type="filepath", label="Upload an image (up to 10 MB)")
                with gr.Column():
                    r_index = gr.Number(0, precision=0, label="...or a held-out image from the data set (index)")
                    r_pick = gr.Button("Use data set image")
            r_models = gr.CheckboxGroup(labels, value=[m.label for m in lab.models if m.factor > 1][:5], label="Models")
            r_button = gr.Button("Reconstruct", variant="primary")
            r_gallery = gr.Gallery(label="Input and reconstructions", columns=6)
            r_latents = gr.Gallery(label="Latent channels", columns=8)
            r_table = gr.Dataframe(label="Quality and compression")
            r_pick.click(pick_from_data, [r_index], [r_image], api_visibility="private")
            r_button.click(reconstruct, [r_image, r_models], [r_gallery, r_latents, r_table], api_name="reconstruct")
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
                gr.Dataframe(results, label="results.csv")
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
