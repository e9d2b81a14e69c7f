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
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_ldm: Path) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    shutil.copytree(tiny_ldm, root / "ldm-f4", ignore=shutil.ignore_patterns("checkpoints"))
    assert run_cli("train-diffusion", "--factor", "1", "--dataset", "fashion-mnist", "--resolution", "16",
                   "--max-steps", "2", "--batch-size", "8", "--param-budget", "20000", "--max-images", "64",
                   "--out", root / "dm-f1") == 0
    return root


@pytest.fixture(scope="module")
def server(model_dir: Path):
    from demo.service import Lab
    from demo.ui import build_app

    lab = Lab(model_dirs=[model_dir], report_dirs=[model_dir], device="cpu")
    assert [m.factor for m in lab.models] == [1, 4]
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


def _label(lab, factor: int) -> str:
    return next(m.label for m in lab.models if m.factor == factor)


def test_generate_endpoint(client, server) -> None:
    gallery, timing = client.predict(_label(server[1], 4), "DDIM", 5, 3, 4, api_name="/generate")
    assert len(gallery) == 4
    images = [np.asarray(Image.open(item["image"])) for item in gallery]
    assert images[0].shape[:2] == (128, 128) and len({im.tobytes() for im in images}) == 4
    assert timing["wall_seconds"] > 0 and timing["samples_per_s"] > 0 and timing["peak_memory_mb"] > 0
    assert timing["device"] == "cpu"


def test_compare_endpoint(client, server) -> None:
    labels = [m.label for m in server[1].models]
    gallery, table = client.predict(labels, "DDIM", 4, 1, api_name="/compare")
    assert len(gallery) == 2 and all(Path(item["image"]).is_file() for item in gallery)
    assert [row[1] for row in table["data"]] == [1, 4]
    assert "f=1" in gallery[0]["caption"] and "f=4" in gallery[1]["caption"]


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
        page.get_by_role("tab", name="Compare factors").click()
        page.click("#compare-button")
        page.wait_for_selector("#compare-gallery img", timeout=60_000)
        assert page.locator("#compare-gallery img").count() >= 2
        page.screenshot(path=str(ARTIFACTS / "compare.png"))
        browser.close()
