"""Every model folder loads with plain diffusers, and its card can be acted on.

The plain-diffusers check runs in a subprocess whose working folder is a temporary one, with
PYTHONPATH unset and ``python -I`` (no user site, no script folder on the path): this repository
is not importable there, so the folder's own ``pipeline.py`` and ``condition_encoder/class_embedder.py``
are all it has. Its images are compared with this project's LatentDiffusionPipeline for the same seed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from ldm_eval.zoo.cards import EMBEDDER_FILE, PIPELINE_FILE, hub_files
from pipelines.loading import load_pipeline

ZOO = ROOT / "models"
FOLDERS = sorted(p.parent for p in ZOO.glob("*/model_index.json"))
TOLERANCE = 1e-5  # the same float32 arithmetic in the same order: in practice identical
CASES = [("fmnist32-ldm-kl-f4", {}),
         ("fmnist32-ldm-kl-f8-class", {"labels": ["ankle boot", 1], "guidance_scale": 3.0}),
         ("fmnist32-ldm-kl-f4-text", {"prompt": ["a photo of an ankle boot", "a photo of a dress"],
                                      "guidance_scale": 3.0})]

SCRIPT = """
import json, sys
import numpy as np
try:
    import pipelines
except ImportError:
    pass
else:
    raise SystemExit("this repository is importable: the check would prove nothing")
from diffusers import DiffusionPipeline
for path, kwargs, out in json.loads(sys.argv[1]):
    pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(num_images=2, num_inference_steps=2, seed=0, **kwargs).images
    print(path, type(pipe).__name__, type(pipe.condition_encoder).__module__)
    np.save(out, images)
"""


def test_folders_load_with_plain_diffusers_outside_this_repository(tmp_path: Path) -> None:
    """An unconditional, a class and a text model: plain diffusers, no LDM Lab on the path, our images."""
    jobs = [(str(ZOO / name), kwargs, str(tmp_path / f"{name}.npy")) for name, kwargs in CASES]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")  # remote code is copied into a fresh module cache
    done = subprocess.run([sys.executable, "-I", "-c", SCRIPT, json.dumps(jobs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert all(" LDMLabPipeline " in line for line in lines) and len(lines) == 3
    assert "class_embedder" in lines[1]  # the folder's own copy of the component, not this repository's
    for name, kwargs in CASES:
        ours = load_pipeline(ZOO / name)(num_images=2, num_inference_steps=2, seed=0, **kwargs).images
        theirs = np.load(tmp_path / f"{name}.npy")
        assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= TOLERANCE, name


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_folder_carries_the_current_code(folder: Path) -> None:
    """The copies in a folder are byte for byte the modules in pipelines/ (re-export or finish_folder after a change)."""
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LDMLabPipeline"] and "_name_or_path" not in index
    expected = hub_files(folder)
    assert PIPELINE_FILE in expected
    if index.get("condition_encoder", [None])[0] is not None and index["condition_encoder"][1] == "ClassEmbedder":
        assert index["condition_encoder"] == ["class_embedder", "ClassEmbedder"] and EMBEDDER_FILE in expected
    for source, target in expected:
        assert (folder / target).read_bytes() == source.read_bytes(), f"{folder.name}/{target} differs from {source}"


FID = re.compile(r"\bFID (\d+\.\d+)(.*)")


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_card_can_be_acted_on(folder: Path) -> None:
    """Every FID with its N and an interval (or 'interval not measured'); no machine paths; no history; a snippet."""
    card = (folder / "README.md").read_text()
    assert "/work/" not in card and "/tmp/" not in card and "Before the rebuild" not in card
    assert "(zoo part" not in card and "python -m ldm_eval build-zoo --preset" in card
    fids = [m for line in card.splitlines() for m in FID.finditer(line)]
    assert fids
    for match in fids:
        rest = match.group(2)
        assert "N = " in rest and ("95 % interval [" in rest or "interval not measured" in rest), match.group(0)
        assert "DDIM" in rest and ("domain-classifier features" in rest or "Inception" in rest)
    assert f'DiffusionPipeline.from_pretrained("models/{folder.name}", trust_remote_code=True)' in card
    assert f'load_pipeline("models/{folder.name}")' in card and "## Licence" in card
    facts = json.loads((folder / "training.json").read_text())
    if facts["condition"] == "class":
        assert "## Labels" in card and "labels=[" in card
    if facts["condition"] == "text":
        assert "## Prompt format" in card and "a photo of a" in card and "prompt=" in card
    if facts["dataset"] != "fashion-mnist":
        assert "non-commercial" in card
