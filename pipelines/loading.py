"""Loading a model: our own pipeline folders, the public DDPM / LDM layouts, and hub ids.

Everything that samples -- the CLI, the harness, the demo -- loads through :func:`load_model`
(a folder or a hub id) or :func:`load_pipeline` (a folder), so every model is checked the
same way: safetensors only, known condition encoders only, a sane latent scale.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from .class_embedder import ClassEmbedder
from .errors import InputError
from .first_stage import Autoencoder
from .pipeline import LatentDiffusionPipeline

log = logging.getLogger(__name__)


class PipelineLoadError(InputError):
    """A model folder that cannot be loaded (missing, corrupt, unsafe or not a pipeline)."""


_FOREIGN_LAYOUTS = {"DDPMPipeline", "LDMPipeline", "DDIMPipeline"}
# the class embedder as a model folder names it: its own copy (condition_encoder/class_embedder.py, the hub's
# convention for a custom component), this package's module (what save_pretrained writes in a training run),
# or, in folders saved before it had its own module, pipelines.conditioning
_CLASS_EMBEDDERS = {("class_embedder", "ClassEmbedder"), ("pipelines.class_embedder", "ClassEmbedder"),
                    ("pipelines.conditioning", "ClassEmbedder")}
_CONDITION_ENCODERS = {(None, None), ("transformers", "CLIPTextModel"), *_CLASS_EMBEDDERS}
# the pipeline a folder names: ours, or the standalone copy it carries for plain diffusers (pipelines.hub_pipeline)
HUB_PIPELINE = ["pipeline", "LDMLabPipeline"]
_OUR_LAYOUTS = (LatentDiffusionPipeline.__name__, HUB_PIPELINE)


def load_pipeline(
    path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> LatentDiffusionPipeline:
    """The one way to load a model: our own folders and the public DDPM / LDM layouts.

    Folders laid out like ``google/ddpm-celebahq-256`` (unet + scheduler) and
    ``CompVis/ldm-celebahq-256`` (unet + vqvae + scheduler) load into the same pipeline.
    Weights are read from safetensors only: pickled checkpoints are refused.
    """
    root = Path(path)
    index_file = root / "model_index.json"
    if not root.is_dir():
        raise PipelineLoadError(f"Model folder '{root}' does not exist.")
    if not index_file.is_file():
        raise PipelineLoadError(f"'{root}' is not a pipeline folder: it has no model_index.json.")
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineLoadError(f"'{index_file}' is corrupt: {err}") from err
    class_name = index.get("_class_name")
    class_name = class_name if isinstance(class_name, str) else list(class_name or [])
    if isinstance(class_name, list) and class_name not in _OUR_LAYOUTS:
        raise PipelineLoadError(f"'{root}' holds a custom {class_name!r} pipeline, which LDM Lab cannot run.")
    encoder_entry = tuple(index.get("condition_encoder") or (None, None))
    if encoder_entry not in _CONDITION_ENCODERS:
        # model_index.json names the module to import: only our two encoders are accepted.
        raise PipelineLoadError(f"'{root}' names an unknown condition encoder {list(encoder_entry)}.")
    try:
        if class_name in _OUR_LAYOUTS:
            pipe = _load_ours(root, index, encoder_entry)
        elif class_name in _FOREIGN_LAYOUTS:
            pipe = _load_foreign(root, index)
        else:
            raise PipelineLoadError(f"'{root}' holds a {class_name!r} pipeline, which LDM Lab cannot run.")
    except PipelineLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, json.JSONDecodeError) as err:
        raise PipelineLoadError(f"Could not load the model in '{root}': {err}") from err
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    # the layout it was saved in, for reports (a folder carrying its hub pipeline holds our layout)
    pipe.loaded_from = LatentDiffusionPipeline.__name__ if class_name in _OUR_LAYOUTS else str(class_name)
    return pipe


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(
    name: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> LatentDiffusionPipeline:
    """A local folder (:func:`load_pipeline`) or, for a user who is online, a hub id such as
    ``CompVis/ldm-celebahq-256``: downloaded once into the Hugging Face cache, then loaded from
    there like any folder. Offline, a hub id that is not in that cache fails with a message
    naming the id and ``HF_HUB_OFFLINE``.
    """
    path = Path(name)
    if path.exists() or not _HUB_ID.match(str(name)):
        return load_pipeline(path, device, dtype)
    # imported only for a hub id: most runs load local folders and need not pay for it at start-up
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        # safetensors and configs only: pickled weights are never fetched, never loaded
        root = snapshot_download(str(name), allow_patterns=["*.json", "*.safetensors", "*.txt"],
                                 local_files_only=offline)
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached from here"
        raise PipelineLoadError(
            f"'{name}' is not a local folder and is not in the Hugging Face cache, and {why}. Download it once while "
            f"online (unset HF_HUB_OFFLINE; 'huggingface-cli download {name}'), or pass a local folder.") from err
    except Exception as err:  # network, auth, unknown repo: one clear line, never a traceback
        raise PipelineLoadError(f"Could not fetch '{name}' from the Hugging Face hub: {err}") from err
    return load_pipeline(root, device, dtype)


_UNETS = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
_VAES = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}


def _load_ours(root: Path, index: dict, encoder_entry: tuple) -> LatentDiffusionPipeline:
    """Our own folder, component by component from the classes model_index.json may name.

    Not ``from_pretrained`` on the folder: diffusers would run the copy of the pipeline the folder carries
    for plain diffusers (pipeline.py), and the class embedder always comes from this package.
    """
    opts = dict(use_safetensors=True)

    def entry(name: str, known: dict) -> type | None:
        cls = (index.get(name) or [None, None])[1]
        if cls is None:
            return None
        if cls not in known:
            raise PipelineLoadError(f"'{root}' names an unknown {name} class {cls!r}.")
        return known[cls]

    unet = entry("unet", _UNETS).from_pretrained(root / "unet", **opts)
    vae_cls = entry("vae", _VAES)
    vae = vae_cls.from_pretrained(root / "vae", **opts) if vae_cls else None
    encoder = tokenizer = None
    if encoder_entry in _CLASS_EMBEDDERS:
        encoder = ClassEmbedder.from_pretrained(root / "condition_encoder", **opts)
    elif encoder_entry[0] is not None:
        encoder = CLIPTextModel.from_pretrained(root / "condition_encoder", **opts)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(root / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(root / "scheduler")
    return LatentDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, condition_encoder=encoder,
                                   tokenizer=tokenizer)


def _load_foreign(root: Path, index: dict) -> LatentDiffusionPipeline:
    """Load a DDPMPipeline / LDMPipeline folder into our pipeline (check the VQ scale)."""
    opts = dict(use_safetensors=True, local_files_only=True)
    unet = UNet2DModel.from_pretrained(root / "unet", **opts)
    scheduler_class = index.get("scheduler", [None, "DDPMScheduler"])[1]
    scheduler_cls = DDIMScheduler if scheduler_class == "DDIMScheduler" else DDPMScheduler
    scheduler = scheduler_cls.from_pretrained(root / "scheduler")
    vae: Autoencoder | None = None
    for name in ("vqvae", "vae"):
        if name in index and index[name][0] is not None:
            cls = VQModel if index[name][1] == "VQModel" else AutoencoderKL
            vae = cls.from_pretrained(root / name, **opts)
            raw = json.loads((root / name / "config.json").read_text())
            if "scaling_factor" not in raw:
                # The CompVis LDM VQ models were trained on unscaled latents; diffusers then
                # fills in the SD default 0.18215, which ruins samples (diffusers #6725).
                log.warning("%s/%s has no scaling_factor; using 1.0 as the original LDM code did.", root, name)
                vae.register_to_config(scaling_factor=1.0)
    return LatentDiffusionPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config), vae=vae)


def weights_digest(folder: str | os.PathLike) -> str | None:
    """SHA-256 over a model folder's safetensors files (relative paths and bytes); None for a hub id.

    A measurement made on a copy of a model names these weights, so a card can show it only while its
    folder still holds the very weights that were measured (a renamed copy measures the same).
    """
    root = Path(folder)
    files = sorted(root.rglob("*.safetensors")) if root.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
