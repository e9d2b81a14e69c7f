"""The demo end to end: a real Gradio server, gradio_client calls, a real headless Chromium."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ldm: Path, tiny_class_ldm: Path,
              tiny_text_dm: Path) -> Path:
    """The Lab finds models by folder: two unconditional, one class- and one text-conditional."""
    root = tmp_path_factory.mktemp("zoo")
    for source, name in [(tiny_ldm, "ldm-f4"), (tiny_class_ldm, "ldm-f4-class"), (tiny_text_dm, "dm-f1-text")]:
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("checkpoints"))
    assert run_cli("train-diffusion", "--factor", "1", "--dataset", "fashion-mnist", "--resolution", "16",
                   "--max-steps", "2", "--batch-size", "8", "--param-budget", "20000", "--max-images", "64",
                   "--out", root / "dm-f1") == 0
    return root


@pytest.fixture(scope="module")
def server(model_dir: Path):
    from demo.service import Lab
    from demo.ui import build_app

    lab = Lab(model_dirs=[model_dir], report_dirs=[model_dir], device="cpu")
    assert [(m.factor, m.condition) for m in lab.models] == [(1, "none"), (1, "text"), (4, "none"), (4, "class")]
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


def test_compare_endpoint(client, server) -> None:
    labels = [m.label for m in server[1].models if m.condition == "none"]
    gallery, table = client.predict(labels, "DDIM", 4, 1, api_name="/compare")
    assert len(gallery) == 2 and all(Path(item["image"]).is_file() for item in gallery)
    assert [row[1] for row in table["data"]] == [1, 4]
    assert "f=1" in gallery[0]["caption"] and "f=4" in gallery[1]["caption"]


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
    from demo.service import DemoInputError

    lab = server[1]
    cls, text, plain = _label(lab, 4, "class"), _label(lab, 1, "text"), _label(lab, 4)
    for model, condition, message in [
        (cls, {"label": "zebra"}, r"Unknown label 'zebra'; this model knows: T-shirt/top, .*ankle boot"),
        (text, {"prompt": "   "}, r"The prompt is empty: write what to draw"),
        (plain, {"label": "bag"}, r"is unconditional: it takes no label or prompt"),
        (plain, {"prompt": "a photo of a bag"}, r"is unconditional"),
        (plain, {"guidance": 3}, r"is unconditional.*guidance must be 1"),
        (cls, {"prompt": "a photo of a bag"}, r"takes class labels, not prompts"),
        (text, {"label": "bag"}, r"takes text prompts, not labels: write a prompt such as 'a photo of a bag'"),
        (cls, {"label": "bag", "guidance": 51}, r"Guidance must be a number from 0 to 50"),
        (cls, {"label": "bag", "guidance": float("nan")}, r"Guidance must be a number from 0 to 50"),
        (cls, {"label": "bag", "guidance": "lots"}, r"Guidance must be a number from 0 to 50"),
        (text, {"prompt": "a photo of " + "very " * 40 + "long boot"}, r"tokens long"),
    ]:
        with pytest.raises(DemoInputError, match=message):
            lab.generate(model, "ddim", 2, 0, 1, **condition)


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
    from pipelines.pipeline import to_uint8

    def expected(label: str) -> np.ndarray:
        images = lab.generate(cls, "ddim", 4, 3, 2, label=label, guidance=3)[0].images
        return np.asarray(_upscale(_pil(to_uint8(images)[0])).convert("L"), dtype=np.float32)

    served = _gallery_arrays(boot)[0]
    assert np.abs(served - expected("ankle boot")).mean() < 0.5 * np.abs(served - expected("bag")).mean()
    assert np.abs(served - _gallery_arrays(bag)[0]).max() > 5
    text, _ = client.predict(_label(lab, 1, "text"), "DDIM", 4, 3, 1, "", "a photo of a bag", 2, api_name="/generate")
    assert len(text) == 1
    for args, message in [((_label(lab, 4), "DDIM", 4, 3, 1, "bag", "", 1), "is unconditional"),
                          ((cls, "DDIM", 4, 3, 1, "zebra", "", 1), "not in the list of choices"),
                          ((cls, "DDIM", 4, 3, 1, "bag", "", 16), "greater than maximum value 15")]:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/generate")


def test_compare_endpoint_with_a_label_across_conditions(client, server) -> None:
    labels = [m.label for m in server[1].models]
    gallery, table = client.predict(labels, "DDIM", 3, 1, "ankle boot", "", 2, api_name="/compare")
    captions = [item["caption"] for item in gallery]
    assert "f=1 (unconditional: condition ignored)" in captions[0]
    assert "f=1 (prompt: 'a photo of an ankle boot')" in captions[1]
    assert "f=4 (unconditional: condition ignored)" in captions[2]
    assert "f=4 (label: ankle boot)" in captions[3]
    conditions = dict(zip(table["headers"], zip(*table["data"])))
    assert conditions["guidance"] == (1, 2, 1, 2)


def test_reconstruct_endpoint_any_image_mode(client, server, tmp_path: Path) -> None:
    from gradio_client import handle_file

    rgba = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 50, 4), dtype=np.uint8), "RGBA").save(rgba)
    gallery, latents, table = client.predict(handle_file(str(rgba)), [_label(server[1], 4)], api_name="/reconstruct")
    assert len(gallery) == 2 and "PSNR" in gallery[1]["caption"]
    assert len(latents) == 3  # KL f = 4: three latent channels
    row = table["data"][0]
    assert row[1] == 4 and row[2] == "3x4x4" and row[3] == pytest.approx(16 * 16 / 48, abs=0.05)


def test_trajectory_endpoint(client, server) -> None:
    gif, frames, timing = client.predict(_label(server[1], 1), 6, 0, api_name="/trajectory")
    assert Path(gif).is_file() and Image.open(gif).n_frames == 6
    assert len(frames) == 6 and frames[0]["caption"].startswith("t=")


def test_bad_inputs_get_clear_messages(client, server, tmp_path: Path) -> None:
    from gradio_client import handle_file

    label = _label(server[1], 4)
    # the sliders' own bounds check answers first for out-of-range numbers; ours backs it up
    for args, message in [((label, "DDIM", 0, 0, 1), "Steps|less than minimum value 1"),
                          ((label, "DDIM", 5, 0, 17), "Number of images|greater than maximum value 16"),
                          (("nope", "DDIM", 5, 0, 1), "Unknown model|not in the list of choices")]:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/generate")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(Exception):
        client.predict(handle_file(str(junk)), [label], api_name="/reconstruct")


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
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
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
        page.locator("#compare-label input").click()
        page.get_by_role("option", name="bag").click()
        page.click("#compare-button")
        page.wait_for_selector("#compare-gallery img", timeout=60_000)
        assert page.locator("#compare-gallery img").count() >= 2
        page.wait_for_function("document.querySelector('#compare-gallery').innerText.includes('label: bag')",
                               timeout=10_000)
        assert "unconditional: condition ignored" in page.locator("#compare-gallery").inner_text()
        page.screenshot(path=str(ARTIFACTS / "compare.png"))
        browser.close()
