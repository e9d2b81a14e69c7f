"""The class-label condition encoder, as one self-contained file.

This module imports only torch and diffusers on purpose: the model exporter copies it verbatim
into every class-conditional model folder as ``condition_encoder/class_embedder.py``, where
plain diffusers loads it as a custom component (``"condition_encoder": ["class_embedder",
"ClassEmbedder"]`` in ``model_index.json``, ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)``) without this repository on the path. :mod:`pipelines.conditioning`
imports it from here, so both ways of loading use the same code (a test checks the copies).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class UnknownLabelError(ValueError):
    """A label the model does not know (out of range, or a name not among its classes)."""


class ClassEmbedder(ModelMixin, ConfigMixin):
    """One learned cross-attention token per class, plus one for "no condition".

    Written by hand because diffusers has no stand-alone class-token encoder that saves as
    a pipeline component (``UNet2DConditionModel``'s class embedding is added to the time
    embedding, which is not the paper's cross-attention conditioning).
    """

    @register_to_config
    def __init__(self, class_names: Sequence[str] = ("class 0",), embed_dim: int = 64):
        super().__init__()
        if len(class_names) < 1:
            raise ValueError("A class-conditional model needs at least one class name.")
        self.embedding = nn.Embedding(len(class_names) + 1, embed_dim)

    @property
    def null_id(self) -> int:
        """The id of "no condition" (what condition dropout trained; guidance subtracts it)."""
        return len(self.config.class_names)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Label ids (B,) to tokens (B, 1, embed_dim)."""
        return self.embedding(ids).unsqueeze(1)

    def label_id(self, label: int | str) -> int:
        """A class index or name (case-insensitive) to its id; unknown ones raise :class:`UnknownLabelError`."""
        names = list(self.config.class_names)
        if isinstance(label, int) and not isinstance(label, bool):
            if 0 <= label < len(names):
                return int(label)
            raise UnknownLabelError(f"Label {label} is out of range: this model knows labels 0 to {len(names) - 1}.")
        text = str(label).strip()
        if text.isdigit():
            return self.label_id(int(text))
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        shown = repr(text if len(text) <= 60 else text[:57] + "…")  # a 5,000-character label stays readable
        raise UnknownLabelError(f"Unknown label {shown}; this model knows: {', '.join(names)}.")
