"""Conditions for cross-attention: class labels and text prompts, turned into tokens.

The paper's conditional LDMs map a condition y through a domain encoder tau_theta(y) to a
sequence of tokens that every attention block of the UNet attends to (cross-attention).
Two encoders, both trained jointly with the UNet from scratch:

- ``class``: :class:`~pipelines.class_embedder.ClassEmbedder`, one learned token per label (a
  self-contained module: model folders carry a copy of it as their custom component);
- ``text``: a small CLIP-style transformer (``transformers.CLIPTextModel``) reading a
  byte-level BPE tokenizer trained offline on the captions with ``tokenizers``.

Each encoder has one extra input meaning "no condition" (the null class / the empty
caption). Condition dropout trains it; classifier-free guidance subtracts it at sampling.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from .class_embedder import ClassEmbedder, UnknownLabelError
from .data import FASHION_MNIST_CLASSES, UTK_CLASSES, UTK_RACES, ImageDataset
from .errors import InputError, quote, real_number

ConditionKind = Literal["none", "class", "text"]
CONDITION_KINDS: tuple[str, ...] = ("none", "class", "text")
MAX_GUIDANCE = 50.0
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


class ConditionError(InputError):
    """A condition the model cannot take: unknown label, empty prompt, wrong kind..."""


ConditionEncoder = ClassEmbedder | CLIPTextModel


def condition_kind(encoder: nn.Module | None) -> ConditionKind:
    if encoder is None:
        return "none"
    return "class" if isinstance(encoder, ClassEmbedder) else "text"


def encode_condition(encoder: ConditionEncoder, ids: torch.Tensor) -> torch.Tensor:
    """Condition ids to the UNet's cross-attention tokens (B, tokens, width)."""
    if isinstance(encoder, ClassEmbedder):
        return encoder(ids)
    return encoder(input_ids=ids).last_hidden_state


# --- captions and labels from the data ---------------------------------------------------


def _article(word: str) -> str:
    """'a' or 'an' by sound: 'an ankle boot', 'an 8-year-old', 'an 18-year-old', 'a 30-year-old'."""
    digits = word[: len(word) - len(word.lstrip("0123456789"))]
    if digits:
        return "an" if digits.startswith("8") or digits in ("11", "18") else "a"
    return "an" if word[:1].lower() in "aeiou" else "a"


def class_caption(name: str) -> str:
    """'ankle boot' -> 'a photo of an ankle boot'."""
    return f"a photo of {_article(name)} {name}"


def person_caption(age: int, gender: int, race: int) -> str:
    """UTKFace labels -> 'a photo of a 30-year-old Asian woman' (gender 0 male, 1 female)."""
    if age < 18:
        noun = ("boy", "girl")[gender]
    else:
        noun = ("man", "woman")[gender]
    race_word = UTK_RACES[race] if 0 <= race < len(UTK_RACES) and UTK_RACES[race] != "Other" else ""
    age_word = f"{age}-year-old"
    middle = " ".join(w for w in (age_word, race_word, noun) if w)
    return f"a photo of {_article(middle)} {middle}"


def utk_class_names() -> tuple[str, ...]:
    """The class condition for faces: race x gender ('Asian woman')."""
    return UTK_CLASSES


def dataset_classes(data: ImageDataset) -> tuple[tuple[str, ...], torch.Tensor]:
    """Class names and one label per image (-1 where the label is unknown)."""
    if "class" in data.labels:
        names = data.class_names.get("class", FASHION_MNIST_CLASSES)
        return tuple(names), data.labels["class"].clone()
    if "race" in data.labels and "gender" in data.labels:
        race, gender = data.labels["race"], data.labels["gender"]
        labels = torch.where((race >= 0) & (gender >= 0), race * 2 + gender, torch.full_like(race, -1))
        return utk_class_names(), labels
    raise ConditionError(
        f"The data set '{data.name}' has no labels to condition on. Labels come from Fashion-MNIST's classes, "
        "UTKFace file names (AGE_GENDER_RACE_...jpg) or class subfolders (FOLDER/cat/*.jpg, FOLDER/dog/*.jpg)."
    )


def dataset_captions(data: ImageDataset) -> list[str]:
    """One caption per image ('' where the labels are unknown: trained as "no condition")."""
    if all(k in data.labels for k in ("age", "gender", "race")):  # faces: richer captions than their class
        ages, genders, races = (data.labels[k].tolist() for k in ("age", "gender", "race"))
        return [person_caption(a, g, r) if a >= 0 and g >= 0 else "" for a, g, r in zip(ages, genders, races)]
    if "class" in data.labels:
        names = data.class_names.get("class", FASHION_MNIST_CLASSES)
        return [class_caption(names[i]) if i >= 0 else "" for i in data.labels["class"].tolist()]
    raise ConditionError(f"The data set '{data.name}' has no labels to write captions from: use class subfolders "
                         "(FOLDER/cat/*.jpg gives 'a photo of a cat'), UTKFace file names or Fashion-MNIST.")


# --- the text side -----------------------------------------------------------------------


def build_tokenizer(captions: Sequence[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the captions (offline, in well under a second).

    Byte-level BPE encodes any prompt (no unknown token) and decodes it back exactly; words
    seen in the captions become single tokens once the vocabulary is large enough.
    """
    # imported here: only text-conditional training builds a tokenizer, and start-up need not pay for it
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    texts = [c for c in captions if c]
    if not texts:
        raise ConditionError("No captions to build a tokenizer from.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    longest = max(len(tok.encode(t).ids) for t in texts) + 8  # room for prompts a little longer than the captions
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        model_max_length=longest, padding_side="right",
    )


def build_text_encoder(
    tokenizer: PreTrainedTokenizerFast, width: int = 64, layers: int = 2, heads: int = 4
) -> CLIPTextModel:
    """A small CLIP text transformer, from scratch, sized for the tokenizer."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


def tokenize(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> torch.Tensor:
    """Captions to padded token ids (B, model_max_length); over-long prompts are an error."""
    length = tokenizer.model_max_length
    out = tokenizer(list(texts), padding="max_length", truncation=False, return_tensors=None)["input_ids"]
    for text, ids in zip(texts, out):
        if len(ids) > length:
            raise ConditionError(
                f"The prompt {quote(text)} is {len(ids) - 2} tokens long; this model reads at most {length - 2}.",
                "prompt",
            )
    return torch.tensor(out, dtype=torch.long)


def build_condition_encoder(
    kind: ConditionKind, data: ImageDataset, width: int = 64
) -> tuple[ConditionEncoder, PreTrainedTokenizerFast | None, torch.Tensor, torch.Tensor]:
    """The encoder for ``kind``, its tokenizer, per-image condition ids and the null ids."""
    if kind == "class":
        names, labels = dataset_classes(data)
        if not names:
            raise ConditionError("A class-conditional model needs at least one class name.")
        encoder = ClassEmbedder(class_names=list(names), embed_dim=width)
        ids = torch.where(labels >= 0, labels, torch.full_like(labels, encoder.null_id))
        return encoder, None, ids, torch.tensor(encoder.null_id)
    if kind == "text":
        captions = dataset_captions(data)
        tokenizer = build_tokenizer(captions)
        encoder = build_text_encoder(tokenizer, width=width)
        return encoder, tokenizer, tokenize(tokenizer, captions), tokenize(tokenizer, [""])[0]
    raise ConditionError(f"Unknown condition {kind!r}; choose one of {', '.join(CONDITION_KINDS)}.")


# --- requests at sampling time -----------------------------------------------------------


def _broadcast(values: Sequence | str | int, n: int, what: str, field: str) -> list:
    items = [values] if isinstance(values, (str, int)) else list(values)
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise ConditionError(f"Give one {what} or one per image ({n}); got {len(items)}.", field)
    return items


def _label_id(encoder: ClassEmbedder, label: int | str) -> int:
    try:
        return encoder.label_id(label)
    except UnknownLabelError as err:
        raise ConditionError(str(err), "labels") from None


def condition_ids(
    encoder: ConditionEncoder | None,
    tokenizer: PreTrainedTokenizerFast | None,
    num_images: int,
    labels: Sequence[int | str] | int | str | None = None,
    prompt: Sequence[str] | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ids for the requested condition and for "no condition", or None (unconditional model).

    A conditional model asked for nothing samples unconditionally (the null condition).
    """
    kind = condition_kind(encoder)
    if kind == "none":
        if labels is not None or prompt is not None:
            raise ConditionError("This model is unconditional: it takes no label or prompt.",
                                 "labels" if labels is not None else "prompt")
        return None
    if kind == "class":
        if prompt is not None:
            raise ConditionError("This model is class-conditional: give a label, not a prompt.", "prompt")
        null = torch.full((num_images,), encoder.null_id, dtype=torch.long)
        if labels is None:
            return null, null
        return torch.tensor([_label_id(encoder, v) for v in _broadcast(labels, num_images, "label", "labels")],
                            dtype=torch.long), null
    if labels is not None:
        first = labels if isinstance(labels, (str, int)) else next(iter(labels), "")
        example = class_caption(first) if isinstance(first, str) and first.strip() and not first.isdigit() else \
            "a photo of an ankle boot"
        raise ConditionError(f"This model is text-conditional: give a prompt, not a label (e.g. {quote(example)}).",
                             "labels")
    null = tokenize(tokenizer, [""]).repeat(num_images, 1)
    if prompt is None:
        return null, null
    prompts = _broadcast(prompt, num_images, "prompt", "prompt")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ConditionError("The prompt is empty: write what to draw, e.g. 'a photo of an ankle boot'.", "prompt")
    return tokenize(tokenizer, [p.strip() for p in prompts]), null


def validate_guidance(guidance_scale: object, kind: ConditionKind) -> float:
    """The one check of a guidance scale: a number from 0 to ``MAX_GUIDANCE``; only 1 for unconditional models."""
    try:
        value = real_number(guidance_scale, "guidance_scale", "Guidance scale", 0.0, MAX_GUIDANCE)
    except InputError as err:
        raise ConditionError(str(err), err.field) from None
    if kind == "none" and value != 1.0:
        raise ConditionError("Guidance needs a conditional model; this one is unconditional (use guidance 1).",
                             "guidance_scale")
    return value
