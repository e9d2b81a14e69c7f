"""Cross-attention conditioning: class labels, text prompts, classifier-free guidance."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from pipelines.conditioning import (
    ConditionError,
    build_tokenizer,
    class_caption,
    dataset_captions,
    dataset_classes,
    encode_condition,
    person_caption,
    tokenize,
)
from pipelines.data import FASHION_MNIST_CLASSES, ImageDataset, load_dataset
from pipelines.diffusion_training import drop_conditions
from pipelines.loading import PipelineLoadError, load_pipeline
from pipelines.pipeline import image_generators


def test_captions_come_from_the_labels() -> None:
    assert class_caption("ankle boot") == "a photo of an ankle boot"
    assert class_caption("trouser") == "a photo of a trouser"
    assert person_caption(30, 1, 2) == "a photo of a 30-year-old Asian woman"
    assert person_caption(8, 0, 4) == "a photo of an 8-year-old boy"  # race 'Other' is left out
    data = load_dataset("fashion-mnist", 16, split="test").subset(50)
    captions = dataset_captions(data)
    names, labels = dataset_classes(data)
    assert names == FASHION_MNIST_CLASSES
    assert captions == [class_caption(FASHION_MNIST_CLASSES[i]) for i in labels.tolist()]


def test_tokenizer_round_trips_the_captions(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    captions = [class_caption(n) for n in FASHION_MNIST_CLASSES]
    captions += [person_caption(a, g, r) for a in (1, 17, 30, 116) for g in (0, 1) for r in range(5)]
    tokenizer = build_tokenizer(captions)
    tokenizer.save_pretrained(tmp_path)
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    for tok in (tokenizer, reloaded):
        ids = tokenize(tok, captions)
        assert ids.shape == (len(captions), tok.model_max_length)
        assert (ids[:, 0] == tok.bos_token_id).all()
        decoded = tok.batch_decode(ids, skip_special_tokens=True)
        assert decoded == captions
    # frequent caption words are whole tokens, and different captions give different ids
    assert "Ġboot" in tokenizer.get_vocab()
    assert len({tuple(r) for r in tokenize(tokenizer, captions).tolist()}) == len(captions)
    with pytest.raises(ConditionError, match="tokens long"):
        tokenize(tokenizer, ["a photo of " + "very " * 40 + "long boot"])


def test_condition_dropout_replaces_the_asked_share() -> None:
    ids = torch.arange(10_000) % 10
    null = torch.tensor(10)
    out = drop_conditions(ids, null, 0.1, torch.Generator().manual_seed(0))
    dropped = (out == 10).float().mean().item()
    assert 0.09 < dropped < 0.11
    assert torch.equal(out[out != 10], ids[out != 10])
    tokens = torch.arange(12).view(4, 3)
    all_null = drop_conditions(tokens, torch.tensor([7, 8, 9]), 1.0, torch.Generator().manual_seed(0))
    assert (all_null == torch.tensor([7, 8, 9])).all()


def test_labels_change_the_output_and_seed_fixes_it(tiny_class_ldm: Path) -> None:
    pipe = load_pipeline(tiny_class_ldm)
    assert pipe.condition == "class" and pipe.class_names[9] == "ankle boot"
    boot = pipe(num_images=2, num_inference_steps=4, seed=3, labels="ankle boot").images
    bag = pipe(num_images=2, num_inference_steps=4, seed=3, labels="bag").images
    boot_again = pipe(num_images=2, num_inference_steps=4, seed=3, labels=9).images
    assert np.abs(boot - bag).max() > 1e-3
    np.testing.assert_array_equal(boot, boot_again)  # name and index pick the same class


def _plain_conditional_ddim(pipe, tokens: torch.Tensor, steps: int, seed: int) -> np.ndarray:
    """DDIM on the conditional UNet alone, written out with no guidance code at all."""
    sampler = DDIMScheduler.from_config(pipe.scheduler.config)
    sampler.set_timesteps(steps)
    shape = (tokens.shape[0], pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    x = randn_tensor(shape, generator=image_generators(seed, range(shape[0])))  # the pipeline's per-image noise
    with torch.no_grad():
        for t in sampler.timesteps:
            eps = pipe.unet(x, t, encoder_hidden_states=tokens).sample
            x = sampler.step(eps, t, x, eta=0.0).prev_sample
        images = pipe.first_stage.decode(x)
    return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("which", ["class", "text"])
def test_guidance_one_is_the_plain_conditional_model(which: str, tiny_class_ldm: Path, tiny_text_dm: Path) -> None:
    pipe = load_pipeline(tiny_class_ldm if which == "class" else tiny_text_dm)
    if which == "class":
        kwargs = {"labels": [9, 1, 5]}
        ids = torch.tensor([9, 1, 5])
    else:
        kwargs = {"prompt": ["a photo of an ankle boot", "a photo of a trouser", "a photo of a sandal"]}
        ids = tokenize(pipe.tokenizer, kwargs["prompt"])
    with torch.no_grad():
        tokens = encode_condition(pipe.condition_encoder, ids)
    guided_one = pipe(num_images=3, num_inference_steps=5, seed=11, guidance_scale=1.0, **kwargs).images
    plain = _plain_conditional_ddim(pipe, tokens, 5, 11)
    np.testing.assert_allclose(guided_one, plain, atol=1e-5)
    # the guidance branch itself reduces to the conditional model at g -> 1 ...
    near_one = pipe(num_images=3, num_inference_steps=5, seed=11, guidance_scale=1.0 + 1e-7, **kwargs).images
    np.testing.assert_allclose(near_one, plain, atol=1e-3)
    # ... to the unconditional ("no condition") model at g = 0, and moves away from both at g = 7
    unconditional = pipe(num_images=3, num_inference_steps=5, seed=11).images
    zero = pipe(num_images=3, num_inference_steps=5, seed=11, guidance_scale=0.0, **kwargs).images
    np.testing.assert_allclose(zero, unconditional, atol=1e-3)
    seven = pipe(num_images=3, num_inference_steps=5, seed=11, guidance_scale=7.0, **kwargs).images
    assert np.abs(seven - plain).max() > 1e-3


def test_bad_conditions_get_clear_errors(tiny_class_ldm: Path, tiny_text_dm: Path, tiny_ldm: Path) -> None:
    cls, text, plain = load_pipeline(tiny_class_ldm), load_pipeline(tiny_text_dm), load_pipeline(tiny_ldm)
    with pytest.raises(ConditionError, match="Unknown label 'astronaut'; this model knows: T-shirt/top"):
        cls(num_images=1, num_inference_steps=1, labels="astronaut")
    with pytest.raises(ConditionError, match="out of range"):
        cls(num_images=1, num_inference_steps=1, labels=10)
    with pytest.raises(ConditionError, match="one per image"):
        cls(num_images=3, num_inference_steps=1, labels=[1, 2])
    with pytest.raises(ConditionError, match="give a label, not a prompt"):
        cls(num_images=1, num_inference_steps=1, prompt="a photo of a bag")
    for empty in ("", "   "):
        with pytest.raises(ConditionError, match="prompt is empty"):
            text(num_images=1, num_inference_steps=1, prompt=empty)
    with pytest.raises(ConditionError, match=r"Guidance scale must be a number from 0 to 50 \(got nan\)"):
        text(num_images=1, num_inference_steps=1, prompt="a photo of a bag", guidance_scale=float("nan"))
    with pytest.raises(ConditionError, match="unconditional"):
        plain(num_images=1, num_inference_steps=1, labels=1)
    with pytest.raises(ConditionError, match="Guidance needs a conditional model"):
        plain(num_images=1, num_inference_steps=1, guidance_scale=3.0)


def test_sample_cli_with_label_prompt_and_errors(tiny_class_ldm: Path, tiny_text_dm: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "boots"
    assert run_cli("sample", tiny_class_ldm, "--n", 3, "--steps", 2, "--label", "ankle boot", "--label", "bag",
                   "--guidance", 3, "--out", out) == 0
    assert len(list(out.glob("*.png"))) == 3
    assert run_cli("sample", tiny_text_dm, "--n", 2, "--steps", 2, "--prompt", "a photo of a bag", "--guidance", 7,
                   "--out", tmp_path / "bags") == 0
    assert len(list((tmp_path / "bags").glob("*.png"))) == 2
    capsys.readouterr()
    assert run_cli("sample", tiny_class_ldm, "--n", 2, "--steps", 2, "--label", "spaceship", "--out", tmp_path / "x") == 2
    assert "error: --label: Unknown label 'spaceship'" in capsys.readouterr().err
    assert run_cli("sample", tiny_text_dm, "--n", 2, "--steps", 2, "--prompt", "", "--out", tmp_path / "y") == 2
    assert "error: --prompt: The prompt is empty" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_conditional_pipeline_keeps_its_parts_and_refuses_foreign_encoders(tiny_text_dm: Path, tmp_path: Path) -> None:
    import json
    import shutil

    pipe = load_pipeline(tiny_text_dm)
    assert pipe.condition == "text" and pipe.parameter_counts()["condition_encoder"] > 0
    assert not list(Path(tiny_text_dm).rglob("*.bin"))
    copy = tmp_path / "evil"
    shutil.copytree(tiny_text_dm, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["condition_encoder"] = ["os", "system"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineLoadError, match="unknown condition encoder"):
        load_pipeline(copy)


def test_condition_needs_labels(tmp_path: Path) -> None:
    unlabeled = ImageDataset(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), "folder")
    with pytest.raises(ConditionError, match="no labels"):
        dataset_classes(unlabeled)
    with pytest.raises(ConditionError, match="no labels"):
        dataset_captions(unlabeled)


def test_face_folder_captions_classes_and_a_text_model(tmp_path: Path) -> None:
    """UTKFace-style file names become captions and race x gender classes; a text model trains on them."""
    from PIL import Image

    from pipelines.conditioning import utk_class_names

    rng = np.random.default_rng(0)
    faces = tmp_path / "faces"
    faces.mkdir()
    people = [(30, 1, 2), (8, 0, 4), (61, 0, 0), (18, 1, 1), (45, 1, 3)] * 4
    for i, (age, gender, race) in enumerate(people):
        pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(faces / f"{age}_{gender}_{race}_2017{i:04d}.jpg.chip.jpg")
    data = load_dataset(faces, 16, split="train")
    captions = dataset_captions(data)
    expected = {person_caption(*p) for p in people}
    assert set(captions) <= expected and "a photo of a 30-year-old Asian woman" in expected
    names, labels = dataset_classes(data)
    assert names == utk_class_names() and names[2 * 2 + 1] == "Asian woman"
    ages = data.labels["age"].tolist()
    for caption, label, age in zip(captions, labels.tolist(), ages):
        race_word, _ = names[label].split()
        assert caption.startswith("a photo of a") and f"{age}-year-old" in caption
        assert (race_word in caption) == (race_word != "Other")

    out = tmp_path / "face-text"
    assert run_cli("train-diffusion", "--factor", 1, "--dataset", faces, "--resolution", 16, "--max-steps", 3,
                   "--batch-size", 4, "--param-budget", 20000, "--condition", "text", "--condition-width", 16,
                   "--out", out) == 0
    pipe = load_pipeline(out)
    assert pipe.tokenizer.batch_decode(tokenize(pipe.tokenizer, captions[:3]), skip_special_tokens=True) == captions[:3]
    images = pipe(num_images=2, num_inference_steps=2, seed=0, prompt="a photo of a 30-year-old Asian woman",
                  guidance_scale=3.0).images
    assert images.shape == (2, 16, 16, 3)


def test_class_folders_are_labels_for_class_and_text_models(tmp_path: Path) -> None:
    """The ImageFolder layout (FOLDER/<class>/*.jpg) labels a folder: classes and captions from the folder names."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    colours = {"cat": (220, 60, 60), "dog": (60, 60, 220), "ankle_boot": (60, 200, 60)}
    for name, colour in colours.items():
        (root / name / "more").mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            where = root / name / ("more" if i % 3 == 0 else "") / f"{name}{i}.png"  # nested files count too
            Image.fromarray(pixels).save(where)
    train, test = load_dataset(root, 16, split="train"), load_dataset(root, 16, split="test")
    assert train.class_names["class"] == test.class_names["class"] == ("ankle boot", "cat", "dog")
    assert len(train) + len(test) == 36
    for data in (train, test):  # each image's label is its folder: the folders differ in colour
        red = data.images[:, 0].float().mean(dim=(1, 2))
        assert ((red > 150) == (data.labels["class"] == 1)).all()
    names, labels = dataset_classes(train)
    assert names == ("ankle boot", "cat", "dog") and labels.min() >= 0
    captions = dataset_captions(train)
    assert set(captions) <= {"a photo of an ankle boot", "a photo of a cat", "a photo of a dog"}
    assert {captions[i] for i in range(len(train)) if labels[i] == 1} == {"a photo of a cat"}

    (root / "stray.png").write_bytes((root / "cat" / "cat1.png").read_bytes())  # a file at the top: no layout
    assert "class" not in load_dataset(root, 16, split="all").labels

    (root / "stray.png").unlink()
    out = tmp_path / "pets-class"
    assert run_cli("train-diffusion", "--factor", 1, "--dataset", root, "--resolution", 16, "--max-steps", 3,
                   "--batch-size", 4, "--param-budget", 20000, "--condition", "class", "--out", out) == 0
    pipe = load_pipeline(out)
    images = pipe(num_images=2, num_inference_steps=2, seed=0, labels=["cat", "ankle boot"], guidance_scale=2.0).images
    assert images.shape == (2, 16, 16, 3)
    with pytest.raises(ConditionError, match="cat, dog"):
        pipe(num_images=1, num_inference_steps=2, seed=0, labels=["horse"])


@pytest.mark.parametrize("condition", ["class", "text"])
def test_conditional_training_resumes_bit_for_bit(tmp_path: Path, condition: str) -> None:
    """Condition dropout draws from the step's generator too, so a resumed run matches an unbroken one."""
    from safetensors.torch import load_file

    common = ["train-diffusion", "--factor", 1, "--dataset", "fashion-mnist", "--resolution", 16, "--batch-size", 8,
              "--param-budget", 20000, "--max-images", 128, "--condition", condition, "--condition-width", 16,
              "--condition-dropout", 0.5, "--checkpoint-every", 3]
    assert run_cli(*common, "--max-steps", 6, "--out", tmp_path / "straight") == 0
    assert run_cli(*common, "--max-steps", 3, "--out", tmp_path / "broken") == 0
    assert run_cli(*common, "--max-steps", 6, "--resume", "--out", tmp_path / "broken") == 0
    for part in ("unet", "condition_encoder"):
        (name,) = [p.name for p in (tmp_path / "straight" / part).glob("*.safetensors")]
        a = load_file(tmp_path / "straight" / part / name)
        b = load_file(tmp_path / "broken" / part / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{part}/{key} differs after resuming"
