"""The demo end to end: a real Gradio server, gradio_client calls, a real headless Chromium."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from gradio_client.exceptions import AppError
from PIL import Image

from demo.screenshots import CHROMIUM_ARGS
from pipelines.results_log import ResultsLog

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
JUNK_IMAGE = r"^That file is not an image this demo can read"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ldm: Path, tiny_class_ldm: Path,
              tiny_text_dm: Path, tiny_autoencoder: Path) -> Path:
    """The Lab finds models by folder: two unconditional, one class- and one text-conditional pipeline,
    and a KL and a VQ f = 4 autoencoder on their own (as the first-stage study ships them)."""
    root = tmp_path_factory.mktemp("zoo")
    for source, name in [(tiny_ldm, "ldm-f4"), (tiny_class_ldm, "ldm-f4-class"), (tiny_text_dm, "dm-f1-text"),
                         (tiny_autoencoder, "first-stage/ae-kl-f4")]:
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("checkpoints"))
    assert run_cli("train-autoencoder", "--factor", 4, "--kind", "vq", "--dataset", "fashion-mnist", "--resolution",
                   16, "--max-steps", 4, "--base-width", 8, "--codebook-size", 16, "--max-images", 64,
                   "--out", root / "first-stage" / "ae-vq-f4") == 0
    assert run_cli("train-diffusion", "--factor", "1", "--dataset", "fashion-mnist", "--resolution", "16",
                   "--max-steps", "2", "--batch-size", "8", "--param-budget", "20000", "--max-images", "64",
                   "--out", root / "dm-f1") == 0
    # a colour autoencoder (the explorer ticks it for colour photos), trained on a folder of colour pictures
    photos = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(48):
        colour = rng.integers(0, 255, 3)
        Image.fromarray((np.ones((16, 16, 3)) * colour + rng.integers(0, 40, (16, 16, 3))).clip(0, 255)
                        .astype(np.uint8)).save(photos / f"photo-{i}.png")
    assert run_cli("train-autoencoder", "--factor", 4, "--kind", "kl", "--dataset", photos, "--resolution", 16,
                   "--max-steps", 2, "--batch-size", 8, "--base-width", 8, "--out",
                   root / "first-stage" / "colour-ae-kl-f4") == 0
    # two harness runs for the Results tab (records as a sweep logs them, a plot each)
    for name, fid in (("reports/sweep-a", 2.864633179502356), ("reports/sweep-b", 31.5)):
        log = ResultsLog(root / name)
        for record in (_environment(16), _trained("kl", 4, resolution=16), _fid("kl", 4, 50, fid)):
            log.append(record)
        (root / name / "plots").mkdir()
        Image.new("RGB", (60, 40), "white").save(root / name / "plots" / "fid_vs_speed_domain.png")
    return root


@pytest.fixture(scope="module")
def server(model_dir: Path):
    from demo.service import Lab
    from demo.ui import build_app

    lab = Lab(model_dirs=[model_dir], report_dirs=[model_dir], device="cpu")
    assert [(m.factor, m.condition) for m in lab.models] == [(1, "none"), (1, "text"), (4, "none"), (4, "class")]
    assert sorted((m.name.split("/")[-1], m.channels) for m in lab.autoencoders) == [
        ("ae-kl-f4", 1), ("ae-vq-f4", 1), ("colour-ae-kl-f4", 3)]
    app = build_app(lab)
    app.queue(default_concurrency_limit=2, max_size=256)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, max_file_size="10mb")
    yield f"http://127.0.0.1:{port}/", lab
    app.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def _label(lab, factor: int, condition: str = "none") -> str:
    return next(m.label for m in lab.models if m.factor == factor and m.condition == condition)


def _gallery_arrays(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"]).convert("L"), dtype=np.float32) for item in gallery]


def test_generate_endpoint(client, server) -> None:
    gallery, timing = client.predict(_label(server[1], 4), "DDIM", 5, 3, 4, api_name="/generate")
    assert len(gallery) == 4
    images = [np.asarray(Image.open(item["image"])) for item in gallery]
    assert images[0].shape[:2] == (128, 128) and len({im.tobytes() for im in images}) == 4
    assert timing["wall_seconds"] > 0 and timing["samples_per_s"] > 0 and timing["peak_memory_mb"] > 0
    assert timing["device"] == "cpu"


def _cells(grid_html: str) -> list[tuple[str, str, str]]:
    """(heading, model folder, caption text) of every figure of a Compare or explorer grid, in order."""
    import html
    import re

    cells = re.findall(r'<div class="f">(.*?)</div><div class="name">(.*?)</div><img [^>]*src="data:image/png;'
                       r'base64,[^"]+"><figcaption>(.*?)</figcaption>', grid_html)
    return [(html.unescape(h), html.unescape(n), html.unescape(c.replace("<br>", " | "))) for h, n, c in cells]


def test_compare_endpoint(client, server) -> None:
    """One column per model with every figure under it (time, throughput, memory, FID), a chart, a table."""
    labels = [m.label for m in server[1].models if m.condition == "none"]
    grid, chart, table = client.predict(labels, "DDIM", 4, 1, api_name="/compare")
    cells = _cells(grid)
    assert [c[:2] for c in cells] == [("f = 1 · pixel", "dm-f1"), ("f = 4 · KL", "ldm-f4")]
    assert all(" s · " in caption and "samples/s" in caption and "MB peak" in caption for *_, caption in cells)
    assert "<h3>Fashion-MNIST, 16 px</h3>" in grid and chart is not None
    columns = dict(zip(table["headers"], zip(*table["data"])))
    assert columns["factor"] == (1, 4) and columns["kind"] == ("pixel", "KL")


def test_model_listing_names_each_condition(server) -> None:
    labels = {m.condition: m.label for m in server[1].models}
    assert "class labels" in labels["class"] and "text prompts" in labels["text"]
    assert "labels" not in labels["none"] and "prompts" not in labels["none"]
    assert server[1].entry(labels["class"]).class_names[9] == "ankle boot"


def test_lab_labels_prompts_and_guidance_change_the_samples(server) -> None:
    """Service level: the condition and guidance reach the pipeline; the seed still fixes the noise."""
    lab = server[1]
    cls, text = _label(lab, 4, "class"), _label(lab, 1, "text")

    def sample(model: str, **condition) -> np.ndarray:
        return lab.generate(model, "ddim", 4, 3, 2, **condition)[0].images

    boot = sample(cls, label="ankle boot", guidance=3)
    assert np.abs(boot - sample(cls, label="bag", guidance=3)).max() > 0.02
    np.testing.assert_array_equal(boot, sample(cls, label="ankle boot", guidance=3))
    assert np.abs(boot - sample(cls, label="ankle boot", guidance=1)).max() > 0.02
    assert sample(cls, label="").shape == boot.shape  # the empty choice: an unconditional sample of a class model
    written = sample(text, prompt="a photo of an ankle boot", guidance=2)
    assert np.abs(written - sample(text, prompt="a photo of a bag", guidance=2)).max() > 0.02
    # Compare: the text model reads the label's caption, the unconditional model ignores it all
    rows = lab.compare([text, _label(lab, 4), cls], "ddim", 4, 3, n=2, label="ankle boot", guidance=2)
    np.testing.assert_array_equal(rows[0].timed.images, written)
    np.testing.assert_array_equal(rows[1].timed.images, sample(_label(lab, 4)))
    np.testing.assert_array_equal(rows[2].timed.images, sample(cls, label="ankle boot", guidance=2))
    assert [r.condition.caption for r in rows] == [
        "prompt: 'a photo of an ankle boot'", "unconditional: condition ignored", "label: ankle boot"]


def test_lab_refuses_conditions_a_model_cannot_take(server) -> None:
    """The core decides; the message names the demo's control at fault and, for numbers, the allowed range."""
    from demo.service import DemoInputError

    lab = server[1]
    cls, text, plain = _label(lab, 4, "class"), _label(lab, 1, "text"), _label(lab, 4)
    long_prompt = "a photo of " + "very " * 40 + "long boot"
    for model, condition, control, message in [
        (cls, {"label": "zebra"}, "Class label",
         r"^Class label: Unknown label 'zebra'; this model knows: T-shirt/top, .*ankle boot\.$"),
        (text, {"prompt": "   "}, "Prompt", r"^Prompt: The prompt is empty: write what to draw"),
        (plain, {"label": "bag"}, "Class label",
         r"^Class label: This model is unconditional: it takes no label or prompt"),
        (plain, {"prompt": "a photo of a bag"}, "Prompt", r"^Prompt: This model is unconditional"),
        (plain, {"guidance": 3}, "Guidance scale",
         r"^Guidance scale: Guidance needs a conditional model; this one is unconditional \(use guidance 1\)"),
        (cls, {"prompt": "a photo of a bag"}, "Prompt", r"^Prompt: This model is class-conditional: give a label, not"),
        (text, {"label": "bag"}, "Class label", r"^Class label: This model is text-conditional: give a prompt, not"),
        (cls, {"label": "bag", "guidance": 51}, "Guidance scale",
         r"^Guidance scale must be a number from 0 to 50 \(got 51\)\.$"),
        (cls, {"label": "bag", "guidance": float("nan")}, "Guidance scale",
         r"^Guidance scale must be a number from 0 to 50 \(got nan\)\.$"),
        (cls, {"label": "bag", "guidance": "lots"}, "Guidance scale",
         r"^Guidance scale must be a number from 0 to 50 \(got 'lots'\)\.$"),
        (text, {"prompt": long_prompt}, "Prompt",
         r"^Prompt: The prompt 'a photo of very very .{20,50}…' is \d+ tokens long"),
    ]:
        with pytest.raises(DemoInputError, match=message) as err:
            lab.generate(model, "ddim", 2, 0, 1, **condition)
        assert err.value.control == control
        assert long_prompt not in str(err.value)  # user text is quoted short


def test_lab_passes_raw_numbers_to_the_core(server) -> None:
    """Steps, seed, sampler and image count as typed (text, floats from JSON): the core's checks answer."""
    from demo.service import DemoInputError

    lab = server[1]
    plain, cls = _label(lab, 4), _label(lab, 4, "class")
    for args, message in [
        (("ddim", "abc", 0, 1), r"^Steps must be a whole number from 1 to 1000 \(got 'abc'\)\.$"),
        (("ddim", 0, 0, 1), r"^Steps must be a whole number from 1 to 1000 \(got 0\)\.$"),
        (("ddim", 2.5, 0, 1), r"^Steps must be a whole number from 1 to 1000 \(got 2\.5\)\.$"),
        (("ddim", 2, -1, 1), r"^Seed must be a whole number from 0 to \d+ \(got -1\)\.$"),
        (("ddim", 2, None, 1), r"^Seed: write a whole number"),
        (("euler", 2, 0, 1), r"^Sampler: Unknown scheduler 'euler'; choose ddim or ddpm\.$"),
        (("ddim", 2, 0, 17), r"^Images must be a whole number from 1 to 16 \(got 17\)\.$"),
        (("ddim", 2, 0, 0), r"^Images must be a whole number from 1 to 16 \(got 0\)\.$"),
    ]:
        with pytest.raises(DemoInputError, match=message):
            lab.generate(plain, *args)
    # integral floats (what JSON gives) are whole numbers; the images are the same
    as_floats = lab.generate(cls, "ddim", 3.0, 5.0, 2.0, label="bag", guidance=2)[0].images
    np.testing.assert_array_equal(as_floats, lab.generate(cls, "ddim", 3, 5, 2, label="bag", guidance=2.0)[0].images)
    # Compare checks every model's request before the first one samples
    with pytest.raises(DemoInputError, match=r"^Guidance scale must be a number from 0 to 50 \(got 51\)\.$"):
        lab.compare([plain, cls], "ddim", 2, 0, label="bag", guidance=51)


def test_generate_is_the_core_sampler(server) -> None:
    """Generate gives exactly the images of ``timed_sampling`` and of ``pipe(seed=...)`` for the same request.

    Drawn in other batches, the images are the same noise through the same model, up to float
    rounding: batched convolutions on a CPU may sum in another order (differences near 1e-6).
    """
    from demo.service import MAX_IMAGES
    from pipelines.sampling import timed_sampling

    lab = server[1]
    for model, sampler, asked, core in [
        (_label(lab, 4), "ddim", {}, {}),
        (_label(lab, 1), "ddpm", {}, {}),
        (_label(lab, 4, "class"), "ddim", {"label": "ankle boot", "guidance": 3}, {"labels": "ankle boot",
                                                                                  "guidance_scale": 3.0}),
        (_label(lab, 1, "text"), "ddim", {"prompt": "a photo of a bag", "guidance": 2}, {"prompt": "a photo of a bag",
                                                                                        "guidance_scale": 2.0}),
    ]:
        demo = lab.generate(model, sampler, 4, 11, 3, **asked)[0].images
        pipe = lab.pipeline(model)
        harness = timed_sampling(pipe, 3, 4, sampler, seed=11, batch_size=MAX_IMAGES, **core).images
        direct = pipe(num_images=3, num_inference_steps=4, scheduler=sampler, seed=11, **core).images
        assert demo.shape == (3, 16, 16, pipe.image_channels)
        np.testing.assert_array_equal(demo, harness)
        np.testing.assert_array_equal(demo, direct)
        one_by_one = timed_sampling(pipe, 3, 4, sampler, seed=11, batch_size=1, **core).images
        # batched and one-by-one convolutions round differently in float32 (1.04e-5 seen): far below 1/255
        np.testing.assert_allclose(demo, one_by_one, rtol=0, atol=1e-4)


def test_generate_endpoint_with_label_and_guidance(client, server) -> None:
    """The real server: the label and guidance inputs (last in /generate's list) reach the model."""
    lab, cls = server[1], _label(server[1], 4, "class")
    boot, _ = client.predict(cls, "DDIM", 4, 3, 2, "ankle boot", "", 3, api_name="/generate")
    bag, _ = client.predict(cls, "DDIM", 4, 3, 2, "bag", "", 3, api_name="/generate")
    boot_again, timing = client.predict(cls, "DDIM", 4, 3, 2, "ankle boot", "", 3, api_name="/generate")
    assert len(boot) == 2 and timing["wall_seconds"] > 0
    assert [Path(b["image"]).read_bytes() for b in boot] == [Path(b["image"]).read_bytes() for b in boot_again]
    # gallery images are lossy WebP: the served boot is near the Lab's boot and far from its bag
    from demo.ui import _pil, _upscale
    from pipelines.images import unit_to_uint8

    def expected(label: str) -> np.ndarray:
        images = lab.generate(cls, "ddim", 4, 3, 2, label=label, guidance=3)[0].images
        return np.asarray(_upscale(_pil(unit_to_uint8(images)[0])).convert("L"), dtype=np.float32)

    served = _gallery_arrays(boot)[0]
    assert np.abs(served - expected("ankle boot")).mean() < 0.5 * np.abs(served - expected("bag")).mean()
    assert np.abs(served - _gallery_arrays(bag)[0]).max() > 5
    text, _ = client.predict(_label(lab, 1, "text"), "DDIM", 4, 3, 1, "", "a photo of a bag", 2, api_name="/generate")
    assert len(text) == 1
    for args, message in [((_label(lab, 4), "DDIM", 4, 3, 1, "bag", "", 1),
                           r"Class label: This model is unconditional: it takes no label or prompt"),
                          ((cls, "DDIM", 4, 3, 1, "zebra", "", 1),
                           r"^Class label: Unknown label 'zebra'; this model knows"),
                          ((_label(lab, 1, "text"), "DDIM", 4, 3, 1, "", "", 2), r"Prompt: The prompt is empty")]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/generate")


def test_guidance_range_is_the_cores(client, server) -> None:
    """One maximum guidance: the sliders offer MAX_GUIDANCE, the API takes it, and one step past it is refused
    with a message that names the control and the range."""
    from pipelines.conditioning import MAX_GUIDANCE

    cls = _label(server[1], 4, "class")
    sliders = [c["props"] for c in client.config["components"]
               if c["props"].get("elem_id") in ("generate-guidance", "compare-guidance")]
    assert [(s["minimum"], s["maximum"]) for s in sliders] == [(0, MAX_GUIDANCE)] * 2
    gallery, timing = client.predict(cls, "DDIM", 2, 0, 1, "bag", "", MAX_GUIDANCE, api_name="/generate")
    assert len(gallery) == 1 and timing["guidance"] == MAX_GUIDANCE == 50
    for guidance in (MAX_GUIDANCE + 0.5, -0.5):
        with pytest.raises(AppError, match=rf"^Guidance scale must be a number from 0 to 50 \(got {guidance:g}\)\.$"):
            client.predict(cls, "DDIM", 2, 0, 1, "bag", "", guidance, api_name="/generate")
    with pytest.raises(AppError, match=r"^Guidance scale must be a number from 0 to 50 \(got 50\.5\)\.$"):
        client.predict([cls], "DDIM", 2, 0, "bag", "", 50.5, api_name="/compare")


def test_compare_endpoint_with_a_label_across_conditions(client, server) -> None:
    labels = [m.label for m in server[1].models]
    grid, _, table = client.predict(labels, "DDIM", 3, 1, "ankle boot", "", 2, api_name="/compare")
    captions = [(heading, caption) for heading, _, caption in _cells(grid)]
    assert captions[0][0] == "f = 1 · pixel" and "unconditional: condition ignored" in captions[0][1]
    assert captions[1][0] == "f = 1 · pixel" and "prompt: 'a photo of an ankle boot'" in captions[1][1]
    assert captions[2][0] == "f = 4 · KL" and "unconditional: condition ignored" in captions[2][1]
    assert captions[3][0] == "f = 4 · KL" and "label: ankle boot" in captions[3][1]
    conditions = dict(zip(table["headers"], zip(*table["data"])))
    assert conditions["guidance"] == (1, 2, 1, 2)


def test_reconstruct_endpoint_any_image_mode(client, server, tmp_path: Path) -> None:
    from gradio_client import handle_file

    rgba = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 50, 4), dtype=np.uint8), "RGBA").save(rgba)
    grid, latents, table = client.predict(handle_file(str(rgba)), [_label(server[1], 4)], api_name="/reconstruct")
    cells = _cells(grid)
    assert [c[:2] for c in cells] == [("input", "16 px, grey"), ("f = 4 · KL", "ldm-f4")]
    assert "PSNR" in cells[1][2] and "latent 3x4x4 (5x fewer values)" in cells[1][2]
    assert len(latents) == 3  # KL f = 4: three latent channels
    row = dict(zip(table["headers"], table["data"][0]))
    assert (row["factor"], row["latent"], row["kind"]) == (4, "3x4x4", "KL")
    assert row["compression_ratio"] == pytest.approx(16 * 16 / 48, abs=0.05)


def test_explorer_shows_kl_and_vq_autoencoders_side_by_side(client, server, tmp_path: Path) -> None:
    """KL and VQ of the same f side by side, each captioned with its own folder, kind, f and PSNR."""
    from gradio_client import handle_file

    from demo.ui import explorer_default

    lab = server[1]
    grey = [m for m in lab.autoencoders if m.channels == 1]
    assert [(m.kind, m.factor) for m in grey] == [("kl", 4), ("vq", 4)]
    assert all(m.first_stage_only for m in lab.autoencoders) and not any(m.first_stage_only for m in lab.models)
    chosen = explorer_default(lab.explorer_models, 1)
    assert chosen == [m.label for m in grey] and "VQ f=4 autoencoder" in chosen[1]
    image = tmp_path / "gray.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8)).save(image)
    grid, latents, table = client.predict(handle_file(str(image)), chosen, api_name="/reconstruct")
    cells = _cells(grid)
    assert [c[:2] for c in cells] == [("input", "16 px, grey"), ("f = 4 · KL", "ae-kl-f4"), ("f = 4 · VQ", "ae-vq-f4")]
    assert all("PSNR" in caption and " dB" in caption for *_, caption in cells[1:])
    assert [(row[1], row[2], row[3]) for row in table["data"]] == [("KL", 4, "3x4x4"), ("VQ", 4, "3x4x4")]


def test_explorer_default_follows_the_image_colour(server) -> None:
    """Colour photos tick the colour models, grey images the grey ones; one KL and one VQ per factor."""
    from demo.ui import explorer_default

    models = server[1].explorer_models
    colour = [m.label for m in models if m.channels == 3]
    assert explorer_default(models, 3) == colour == [next(m.label for m in models if m.name.endswith("colour-ae-kl-f4"))]
    assert explorer_default(models, 1) == [m.label for m in models if m.first_stage_only and m.channels == 1]
    assert explorer_default([m for m in models if m.channels == 1], 3) == explorer_default(models, 1)  # none: grey


def test_trajectory_endpoint(client, server) -> None:
    gif, frames, timing = client.predict(_label(server[1], 1), 6, 0, api_name="/trajectory")
    assert Path(gif).is_file() and Image.open(gif).n_frames == 6
    assert len(frames) == 6 and frames[0]["caption"].startswith("t=")


def test_bad_inputs_get_clear_messages(client, server, tmp_path: Path) -> None:
    from gradio_client import handle_file

    label = _label(server[1], 4)
    # Generate reads the values as sent: the core (and the demo's image limit) answer, not Gradio's checks
    for args, message in [((label, "DDIM", 0, 0, 1), r"^Steps must be a whole number from 1 to 1000 \(got 0\)\.$"),
                          ((label, "DDIM", 5, 0, 17), r"^Images must be a whole number from 1 to 16 \(got 17\)\.$"),
                          ((label, "DDIM", 5, 3.5, 1), r"^Seed must be a whole number from 0 to \d+ \(got 3\.5\)\.$"),
                          ((label, "Euler", 5, 0, 1), r"^Sampler: Unknown scheduler 'euler'; choose ddim or ddpm\.$"),
                          (("nope", "DDIM", 5, 0, 1), r"^Unknown model 'nope'; pick one from the list\.$")]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/generate")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match=JUNK_IMAGE):
        client.predict(handle_file(str(junk)), [label], api_name="/reconstruct")


def _environment(resolution: int):
    from pipelines.records import EnvironmentRecord

    return EnvironmentRecord(started="2026-01-01T00:00:00+00:00", python="3.11", platform="linux", torch="2",
                             diffusers="0", accelerate="1", torchmetrics="1", clean_fid="0", device="cpu",
                             device_name="CPU", threads=2,
                             config={"preset": "test", "dataset": "fashion-mnist", "resolution": resolution})


def _trained(kind: str, factor: int, resolution: int | None = None, condition: str = "none"):
    from pipelines.records import TrainingRecord

    return TrainingRecord(kind=kind, factor=factor, latent_shape=[3, 4, 4], unet_params=1, ae_params=1, train_steps=1,
                          train_seconds=1.0, train_images_per_s=1.0, device="cpu", device_name="CPU", batch_size=1,
                          peak_mem_train_mb=None, memory_method="rss", degenerate=False, budget="steps",
                          budget_value=1, resolution=resolution, condition=condition)


def _fid(kind: str, factor: int, steps: int, fid: float, backend: str = "domain", n: int = 100,
         condition: str = "none"):
    from pipelines.records import FidRecord

    return FidRecord(kind=kind, factor=factor, ddim_steps=steps, fid=fid, kid=None, kid_std=None, fid_backend=backend,
                     fid_samples=n, reference_samples=n, device="cpu", condition=condition)


def test_fid_lookup_shows_the_interval_when_the_run_measured_one(tmp_path: Path) -> None:
    from dataclasses import replace

    from demo.zoo import ModelEntry, model_fid
    from pipelines.results_log import Results

    entry = ModelEntry(name="m", path=tmp_path, factor=4, kind="kl", dataset="fashion-mnist", resolution=16)
    with_ci = replace(_fid("kl", 4, 50, 12.34), fid_ci_low=11.02, fid_ci_high=13.91)
    results = Results([_environment(16), _trained("kl", 4), with_ci])
    assert model_fid(results, entry) == "FID 12.3 [95 % CI 11.0-13.9] (domain, N=100, DDIM 50)"


def test_fid_lookup_reads_the_runs_records(tmp_path: Path) -> None:
    """The FID shown beside a model comes from ``results.jsonl`` through ``read_results``: the newest
    compression run that measured this factor and kind at this resolution, the largest DDIM step count
    per backend; conditioning sweeps and unreadable runs are left out."""
    import os

    from demo.zoo import ModelEntry, latest_results, model_fid, sweep_results
    from pipelines.records import ConditioningRecord
    from pipelines.results_log import ResultsLog

    def run(folder: Path, age: int, *records) -> None:
        log = ResultsLog(folder)
        for record in records:
            log.append(record)
        os.utime(log.path, (1_700_000_000 - age, 1_700_000_000 - age))

    reports, runs = tmp_path / "reports", tmp_path / "runs"
    run(reports / "old", 300, _environment(16), _trained("kl", 4), _fid("kl", 4, 50, 40.0))
    # newer; configured for 32 px, but its f = 4 model says it trained at 16 px
    run(runs / "new", 200, _environment(32), _trained("kl", 4, resolution=16), _trained("pixel", 1),
        _fid("kl", 4, 10, 30.0), _fid("kl", 4, 50, 25.0), _fid("kl", 4, 50, 20.0),  # re-measured: the last one counts
        _fid("kl", 4, 50, 300.0, backend="inception", n=64), _fid("pixel", 1, 25, 90.0))
    run(runs / "cond", 100, _environment(16), _trained("kl", 4, condition="class"),
        _fid("kl", 4, 50, 5.0, condition="class"),
        ConditioningRecord(condition="class", kind="kl", factor=4, guidance=1.0, ddim_steps=50, n=10,
                           samples_per_class=1, class_names=["a"], accuracy=1.0, per_class_accuracy=[1.0],
                           per_class_fid=[5.0], per_class_reference=[1], device="cpu"))
    (runs / "broken").mkdir()
    (runs / "broken" / "results.jsonl").write_text('{"schema": 2, "record": "nonsense"}\n')

    found = sweep_results([reports, runs])
    assert [folder.name for _, folder in found] == ["new", "old"]
    table, folder = latest_results([reports, runs])
    assert folder.name == "new" and len(table) == 5 and set(table["fid_backend"]) == {"domain", "inception"}

    def entry(factor: int, kind: str, resolution: int, condition: str = "none") -> ModelEntry:
        return ModelEntry(name="m", path=tmp_path / "model", factor=factor, kind=kind, dataset="fashion-mnist",
                          resolution=resolution, condition=condition)

    records = [results for results, _ in found]
    assert model_fid(records, entry(4, "kl", 16)) == ("FID 20.0 (domain, N=100, DDIM 50); "
                                                      "FID 300.0 (inception, N=64, DDIM 50)")
    assert model_fid(records[1:], entry(4, "kl", 16)) == "FID 40.0 (domain, N=100, DDIM 50)"
    assert model_fid(records, entry(1, "pixel", 32)) == "FID 90.0 (domain, N=100, DDIM 25)"
    assert model_fid(records, entry(4, "kl", 32)) == "not in the latest reports"
    assert model_fid(records, entry(4, "vq", 16)) == "not in the latest reports"
    assert model_fid(records, entry(4, "kl", 16, "class")).startswith("not in the compression reports")
    assert model_fid(None, entry(4, "kl", 16)) == "no report yet"


def test_twenty_concurrent_requests(client, server) -> None:
    """20 requests in flight at once; the queue (concurrency limit 2) serves them all."""
    label = _label(server[1], 4)
    jobs = [client.submit(label, "DDIM", 3, seed, 2, api_name="/generate") for seed in range(20)]
    results = [job.result(timeout=600) for job in jobs]
    assert [len(gallery) for gallery, _ in results] == [2] * 20
    assert len({Path(g[0]["image"]).read_bytes() for g, _ in results}) == 20  # 20 different seeds, 20 images


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_browser_generate_and_compare(server) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server[0])
        page.click("#generate-button")
        page.wait_for_selector("#generate-gallery img", timeout=60_000)
        assert page.locator("#generate-gallery img").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "generate.png"))
        # a class model: its label picker opens; pick a class and raise the guidance
        page.get_by_label("Model", exact=True).first.click()
        page.get_by_role("option", name=_label(server[1], 4, "class")).click()
        page.wait_for_selector("#generate-label input:not([disabled])", timeout=10_000)
        page.locator("#generate-label input").click()
        page.get_by_role("option", name="ankle boot").click()
        page.locator("#generate-guidance input[type=number]").fill("3")
        page.locator("#generate-guidance input[type=number]").press("Enter")
        page.click("#generate-button")
        page.wait_for_function("document.querySelector('#generate-timing').innerText.includes('label: ankle boot')",
                               timeout=60_000)
        assert '"guidance"\n:\n3' in page.locator("#generate-timing").inner_text()
        page.screenshot(path=str(ARTIFACTS / "generate-label.png"))
        page.get_by_role("tab", name="Compare factors").click()
        # the first choice is the unconditional models; tick the class model beside them
        page.locator("#compare-models label", has_text=_label(server[1], 4, "class")).click()
        page.locator("#compare-label input").click()
        page.get_by_role("option", name="bag").click()
        page.click("#compare-button")
        page.wait_for_selector("#compare-grid img", timeout=60_000)
        assert page.locator("#compare-grid img").count() >= 2
        page.wait_for_function("document.querySelector('#compare-grid').innerText.includes('label: bag')",
                               timeout=10_000)
        assert "unconditional: condition ignored" in page.locator("#compare-grid").inner_text()
        page.screenshot(path=str(ARTIFACTS / "compare.png"))
        browser.close()


def _toast_text(page) -> str:
    """The text of the error/warning popups now on screen (waits for one)."""
    page.wait_for_selector(".toast-body", timeout=60_000)
    return " ".join(page.locator(".toast-body").all_inner_texts())


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_browser_messages_explorer_compare_and_results(server, tmp_path: Path) -> None:
    """What a person sees: readable refusals (a non-image upload, a 5,000-character prompt), one guidance
    range, the explorer ticking models like the image, the Compare grid with every figure visible, and a
    chosen report's rounded table and plots."""
    from playwright.sync_api import sync_playwright

    from pipelines.conditioning import MAX_GUIDANCE

    url, lab = server
    notimage = tmp_path / "notimage.png"
    notimage.write_text("this is a text file, not a picture\n")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.stack([np.full((24, 24), v, np.uint8) for v in (200, 40, 90)], -1)).save(photo)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)

        # 2: a 5,000-character prompt: the message says what is wrong and quotes a few words, not the prompt
        page.get_by_label("Model", exact=True).first.click()
        page.get_by_role("option", name=_label(lab, 1, "text")).click()
        page.wait_for_selector("#generate-prompt textarea:not([disabled])", timeout=10_000)
        page.locator("#generate-prompt textarea").fill("a photo of a sneaker " * 240)
        page.click("#generate-button")
        text = _toast_text(page)
        assert "tokens long; this model reads at most" in text and len(text) < 300, text
        page.screenshot(path=str(ARTIFACTS / "long-prompt.png"))
        page.locator(".toast-close").first.click()

        # 3: one guidance range: the slider's box goes to MAX_GUIDANCE and 20 is taken (it was refused past 15)
        page.get_by_label("Model", exact=True).first.click()
        page.get_by_role("option", name=_label(lab, 4, "class")).click()
        guidance = page.locator("#generate-guidance input[type=number]")
        page.wait_for_selector("#generate-guidance input[type=number]:not([disabled])", timeout=10_000)
        assert float(guidance.get_attribute("max")) == MAX_GUIDANCE
        guidance.fill("20")
        guidance.press("Enter")
        page.locator("#generate-label input").click()
        page.get_by_role("option", name="bag").click()
        page.click("#generate-button")
        page.wait_for_function("document.querySelector('#generate-timing').innerText.includes('label: bag')",
                               timeout=60_000)
        assert '"guidance"\n:\n20' in page.locator("#generate-timing").inner_text()

        # 1 and 5: a non-image upload is named and refused at once; a colour photo ticks the colour models
        page.get_by_role("tab", name="Autoencoder explorer").click()
        page.locator("#explorer-image input[type=file]").set_input_files(str(notimage))
        text = _toast_text(page)
        assert "That file is not an image this demo can read: 'notimage.png'" in text and "/tmp" not in text
        page.screenshot(path=str(ARTIFACTS / "explorer-not-an-image.png"))
        page.locator(".toast-close").first.click()
        page.locator("#explorer-image input[type=file]").set_input_files(str(photo))
        colour = next(m.label for m in lab.autoencoders if m.channels == 3)
        page.wait_for_function(f"[...document.querySelectorAll('#explorer-models input:checked')].map("
                               f"i => i.closest('label').innerText.trim()).join('|') === {colour!r}",
                               timeout=30_000)
        page.click("#explorer-button")
        page.wait_for_selector("#explorer-grid figcaption", timeout=60_000)
        assert "PSNR" in page.locator("#explorer-grid figure").nth(1).inner_text()
        page.screenshot(path=str(ARTIFACTS / "explorer-colour.png"))

        # 6: Compare: one column per model, every caption line inside its box, a chart under the grid
        page.get_by_role("tab", name="Compare factors").click()
        page.click("#compare-button")
        page.wait_for_selector("#compare-grid figcaption", timeout=60_000)
        figures = page.locator("#compare-grid figure")
        assert figures.count() == 2 and "Fashion-MNIST, 16 px" in page.locator("#compare-grid h3").inner_text()
        for i in range(figures.count()):
            caption = figures.nth(i).locator("figcaption")
            assert "samples/s" in caption.inner_text() and "MB peak" in caption.inner_text()
            assert caption.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight")
        assert "FID 2.9 (domain, N=100, DDIM 50)" in figures.nth(1).inner_text() \
            or "FID 31.5 (domain, N=100, DDIM 50)" in figures.nth(1).inner_text()
        page.wait_for_selector("#compare-chart img, #compare-chart svg, #compare-chart canvas", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "compare-grid.png"), full_page=True)

        # 7: Results: pick a report by its relative name; its table is rounded and its plot loads
        page.get_by_role("tab", name="Results").click()
        page.locator("#results-folder input").click()
        name = f"{server_root(lab)}/reports/sweep-a"
        page.get_by_role("option", name=name).click()
        page.wait_for_function(f"document.querySelector('#results-where').innerText.includes({name!r})",
                               timeout=30_000)
        table = page.locator("#results-table").inner_text()
        assert "2.865" in table and "2.8646" not in table
        page.wait_for_selector("#results-plots img", timeout=30_000)
        assert page.locator("#results-plots img").first.evaluate("i => i.complete && i.naturalWidth > 0")
        page.screenshot(path=str(ARTIFACTS / "results.png"), full_page=True)
        browser.close()


def server_root(lab) -> str:
    """The name the Results tab gives the test's report root (the model folder's own name)."""
    return next(iter(lab.result_folders()[0])).split("/")[0]


def test_startup_benchmark_times_the_real_demo_against_the_bare_imports(tmp_path: Path, capsys) -> None:
    """bench-startup starts app.py for real and reports time to first HTTP 200 beside the bare imports."""
    assert run_cli("bench-startup", "--rounds", 1, "--app", ROOT / "app.py", "--out", tmp_path) == 0
    printed = capsys.readouterr().out
    assert "Demo start-up: first HTTP 200 after " in printed and "ratio " in printed
    row = (tmp_path / "startup_benchmark.md").read_text().splitlines()[-1].split("|")
    bare, demo = float(row[2]), float(row[3])
    assert 0 < bare < demo  # the demo imports those libraries and more before it can answer
    assert run_cli("bench-startup", "--app", tmp_path / "missing.py") == 2
    assert "No demo entry point at" in capsys.readouterr().err


def test_raw_http_errors_name_the_field_and_range(server) -> None:
    """Over plain HTTP (no client library), a non-number or NaN is answered with the same readable message."""
    import json
    import urllib.request

    url, lab = server

    def call(*data) -> str:
        body = json.dumps({"data": list(data)}, allow_nan=True).encode()
        request = urllib.request.Request(url + "gradio_api/call/generate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            event = json.loads(response.read())["event_id"]
        with urllib.request.urlopen(f"{url}gradio_api/call/generate/{event}", timeout=120) as response:
            return response.read().decode()

    label = _label(lab, 4)
    assert "Steps must be a whole number from 1 to 1000 (got 'abc')." in call(label, "DDIM", "abc", 0, 1, "", "", 1)
    assert "Steps must be a whole number from 1 to 1000 (got None)." in call(label, "DDIM", None, 0, 1, "", "", 1)
    answer = call(_label(lab, 4, "class"), "DDIM", 2, 0, 1, "bag", "", float("nan"))
    assert "Guidance scale must be a number from 0 to 50 (got nan)." in answer and '"error": null' not in answer


def test_the_demo_opens_on_the_set_with_most_factors_the_largest_images_among_equals(tmp_path: Path) -> None:
    """Compare's first choice: the 128-px faces (five factors) over the 64-px ones (five too) and over a set with
    fewer factors; Generate's first model is that set's f = 4."""
    from demo.ui import compare_default, default_model
    from demo.zoo import ModelEntry

    def entries(dataset: str, resolution: int, factors: list[int]) -> list[ModelEntry]:
        return [ModelEntry(name=f"{dataset}{resolution}-f{f}", path=tmp_path / f"{dataset}{resolution}-f{f}",
                           factor=f, kind="pixel" if f == 1 else "kl", dataset=dataset, resolution=resolution)
                for f in factors]

    models = (entries("utkface", 64, [1, 2, 4, 8, 16]) + entries("utkface", 128, [1, 4, 8, 16, 32])
              + entries("fashion-mnist", 32, [4, 8]))
    chosen = compare_default(models)
    assert [label.split(" ")[0] for label in chosen] == [f"utkface128-f{f}" for f in (1, 4, 8, 16, 32)]
    assert default_model(models).startswith("utkface128-f4 ")
    assert compare_default(models[:5] + models[10:])[0].startswith("utkface64-f1 ")  # without it, the 64-px set


def test_generate_opens_on_the_main_sets_best_model_by_its_own_runs_fid(tmp_path: Path) -> None:
    """Generate's first model is the lowest FID of the main set's run on a measurement all of them share
    (f = 8 at 128 px), not f = 4 by rule; a model of another run with a lower FID is not compared; without
    metrics the rule (f = 4) stands."""
    import json

    from demo.ui import default_model
    from demo.zoo import ModelEntry

    def entry(f: int, run: str | None, fids: dict[int, float]) -> ModelEntry:
        folder = tmp_path / f"utk128-f{f}-{run}"
        folder.mkdir()
        rows = [{"fid": fid, "fid_backend": "inception", "fid_samples": 500, "ddim_steps": steps}
                for steps, fid in fids.items()]
        if run:
            (folder / "metrics.json").write_text(json.dumps({"run": run, "rows": rows}))
        return ModelEntry(name=folder.name, path=folder, factor=f, kind="pixel" if f == 1 else "kl",
                          dataset="utkface", resolution=128)

    plain = [entry(f, None, {}) for f in (1, 4, 8)]
    assert default_model(plain).startswith("utk128-f4-")
    measured = [entry(1, "a", {10: 400.0}), entry(4, "a", {10: 256.0, 50: 80.0}), entry(8, "a", {10: 84.8, 50: 98.7}),
                entry(16, "b", {10: 50.0})]  # f = 4's 80.0 is at DDIM 50, which f = 1 lacks; f = 16 is another run's
    assert default_model(measured).startswith("utk128-f8-a")
