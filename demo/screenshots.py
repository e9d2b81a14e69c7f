"""Screenshots of every tab of a running demo, for the README: ``python -m demo.screenshots URL OUT [PHOTO]``.

Uses Debian's Chromium through Playwright (no browser download). With ``PHOTO``, the
autoencoder explorer reconstructs that picture (e.g. a held-out face) instead of a data set image.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def take(url: str, out: Path, photo: Path | None = None, executable: str = "/usr/bin/chromium") -> list[Path]:
    from playwright.sync_api import (
        sync_playwright,  # on use: tests import this module without playwright
    )

    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        steps = [
            ("generate", "Generate", "Generate", "#generate-gallery img"),
            ("compare", "Compare factors", "Compare", "#compare-grid img"),
            ("autoencoder", "Autoencoder explorer", None, None),
            ("trajectory", "Denoising trajectory", "Show trajectory", None),
            ("results", "Results", None, None),
        ]
        for name, tab, button, wait_for in steps:
            page.get_by_role("tab", name=tab).click()
            if name == "autoencoder":
                if photo is not None:
                    page.locator("#explorer-image input[type=file]").set_input_files(str(photo))
                else:
                    page.get_by_role("button", name="Use data set image").click()
                page.wait_for_timeout(2000)
                page.get_by_role("button", name="Reconstruct").click()
                page.wait_for_selector("#explorer-grid img", timeout=120_000)
                page.wait_for_timeout(2000)
            elif button:
                page.get_by_role("button", name=button, exact=True).click()
                if wait_for:
                    page.wait_for_selector(wait_for, timeout=120_000)
                page.wait_for_timeout(6000)
            else:
                page.wait_for_timeout(2000)
            path = out / f"demo-{name}.png"
            page.screenshot(path=str(path), full_page=name in ("compare", "autoencoder", "results"))
            shots.append(path)
            if name == "generate":
                shots.append(_conditional_generate(page, out))
                shots.append(_generate_with(page, out, "utk64-ldm-kl-f4", "faces"))
        browser.close()
    return shots


def _choose_model(page, model: str) -> None:
    """Pick ``model`` in the Generate tab's dropdown (its options carry a suffix, hence the pattern)."""
    page.get_by_label("Model", exact=True).first.click()
    page.get_by_role("option", name=re.compile(re.escape(model))).first.click()


def _generate_and_shoot(page, out: Path, name: str, must_include: str = "") -> Path:
    """Press Generate, wait for the timing line to change (and name ``must_include``), then screenshot."""
    before = page.locator("#generate-timing").inner_text()
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function("([old, word]) => { const t = document.querySelector('#generate-timing').innerText; "
                           "return t !== old && t.includes(word); }", arg=[before, must_include], timeout=180_000)
    page.wait_for_timeout(3000)
    path = out / f"demo-generate-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def _conditional_generate(page, out: Path, label: str = "ankle boot", guidance: str = "3",
                          model: str = "fmnist32-ldm-kl-f8-class") -> Path:
    """Generate with a class-conditional model: a label and classifier-free guidance."""
    _choose_model(page, model)
    page.wait_for_selector("#generate-label input:not([disabled])", timeout=10_000)
    page.locator("#generate-label input").click()
    page.get_by_role("option", name=label).click()
    page.locator("#generate-guidance input[type=number]").fill(guidance)
    page.locator("#generate-guidance input[type=number]").press("Enter")
    return _generate_and_shoot(page, out, "conditional", must_include=f"label: {label}")


def _generate_with(page, out: Path, model: str, name: str) -> Path:
    """Generate with the zoo model ``model`` (UTKFace faces beside the default model's clothes)."""
    _choose_model(page, model)
    return _generate_and_shoot(page, out, name)


if __name__ == "__main__":
    for shot in take(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None):
        print(shot)
