"""Tests for diffusion/pipelines/diffusion.py: seeding, guidance, validation, samplers, NFE, outputs, I/O."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from conftest import (
    NUM_CLASSES,
    StubScheduler,
    StubUNet,
    forward_spy,
    generators,
    make_pipe,
    seeded_unet,
)
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from diffusion.pipelines.base import GenerationOutput, NonFiniteImagesError, normalize_class_labels
from samplers import build_sampler, list_samplers, sampler_spec

SAMPLERS = list_samplers("ddpm")  # tiny_pipe is a DDPM model; flow models: section at the end
STOCHASTIC = [name for name in SAMPLERS if sampler_spec(name).stochastic]
DETERMINISTIC = [name for name in SAMPLERS if not sampler_spec(name).stochastic]
# (sampler, eta): every registered sampler, plus DDIM with eta=1 (stochastic DDIM,
# Song et al. 2021, eq. 16).
SAMPLER_ETAS = [pytest.param(name, 0.0, id=name) for name in SAMPLERS] + \
               [pytest.param("ddim", 1.0, id="ddim-eta1")]
STEPS = 3


def run(pipe, **kwargs):
    """``pipe(...)`` with small defaults and ``output_type="pt"``."""
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    return pipe(**kwargs)


# --- seeding and batch invariance -------------------------------------------------------------

def test_registry_has_stochastic_samplers():
    """The batch-invariance tests below must cover real noise-drawing samplers."""
    assert {"ddpm", "euler-a", "dpmpp-sde"} <= set(STOCHASTIC)


@pytest.mark.parametrize("name,eta", SAMPLER_ETAS)
def test_same_seed_gives_identical_images(tiny_pipe, name, eta):
    a = run(tiny_pipe, class_labels=[0, 2], sampler=name, eta=eta, generator=generators(2)).images
    b = run(tiny_pipe, class_labels=[0, 2], sampler=name, eta=eta, generator=generators(2)).images
    c = run(tiny_pipe, class_labels=[0, 2], sampler=name, eta=eta,
            generator=generators(2, offset=50)).images
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2  # the seed matters


@pytest.mark.parametrize("name,eta", SAMPLER_ETAS)
def test_single_generator_same_seed_gives_identical_images(tiny_pipe, name, eta):
    a = run(tiny_pipe, class_labels=[1, 1], sampler=name, eta=eta,
            generator=torch.Generator().manual_seed(7)).images
    b = run(tiny_pipe, class_labels=[1, 1], sampler=name, eta=eta,
            generator=torch.Generator().manual_seed(7)).images
    assert torch.equal(a, b)
    assert (a[0] - a[1]).abs().max() > 1e-2  # one generator still gives each image its own noise


@pytest.mark.parametrize("name,eta", SAMPLER_ETAS)
def test_image_does_not_depend_on_its_batch(name, eta):
    """With one generator per image, image i is the same in a batch of 4 as alone (fp32).

    The U-Net's own batch-size-dependent rounding (~3e-7) is amplified by the k-diffusion
    samplers in proportion to sigma_max; on the default schedule (sigma_max ~ 157) kdpm2-a reaches
    ~1.6e-5. A schedule with beta_end=0.012 (sigma_max ~ 20) keeps every sampler under ~3e-6, so
    atol=1e-5 tests batch invariance, not fp32 resolution. A shared generator would differ by ~0.1.
    """
    tiny_pipe = make_pipe(scheduler=DDPMScheduler(beta_end=0.012, prediction_type="v_prediction"))
    labels = [0, 1, 2, 1]
    batch = run(tiny_pipe, class_labels=labels, sampler=name, eta=eta,
                generator=generators(4, offset=10)).images
    assert batch.shape == (4, 1, 8, 8)
    for i, label in enumerate(labels):
        alone = run(tiny_pipe, class_labels=[label], sampler=name, eta=eta,
                    generator=generators(1, offset=10 + i)).images
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=0, msg=f"image {i}")
    assert (batch[1] - batch[3]).abs().max() > 1e-2  # same label, own generator -> own image


@pytest.mark.parametrize("name,eta", SAMPLER_ETAS)
def test_step_noise_is_drawn_exactly_by_stochastic_samplers(tiny_pipe, name, eta):
    """Same x_T, different generators: images differ iff the sampler draws noise per step."""
    latents = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    a = run(tiny_pipe, class_labels=[0, 1], sampler=name, eta=eta, latents=latents.clone(),
            generator=generators(2)).images
    b = run(tiny_pipe, class_labels=[0, 1], sampler=name, eta=eta, latents=latents.clone(),
            generator=generators(2, offset=100)).images
    if sampler_spec(name).stochastic or eta > 0:
        assert (a - b).abs().max() > 1e-3
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_given_latents_equal_latents_drawn_from_the_same_generators(tiny_pipe, name):
    latents = torch.cat([torch.randn((1, 1, 8, 8), generator=g) for g in generators(2)])
    before = latents.clone()
    a = run(tiny_pipe, class_labels=[2, 0], sampler=name, latents=latents).images
    b = run(tiny_pipe, class_labels=[2, 0], sampler=name, generator=generators(2)).images
    assert torch.equal(a, b)
    assert torch.equal(latents, before)  # the caller's tensor is not modified


def test_seeded_tiny_pipeline_matches_reference_values(tiny_pipe):
    """Known outputs of the tiny seeded pipeline (DDIM without x0 clipping, 4 steps, s=2); refresh if diffusers'
    init or DDIM change."""
    out = tiny_pipe(class_labels=[0, 1, 2], num_inference_steps=4, sampler="ddim",
                    generator=generators(3), output_type="pt")
    assert out.nfe == 4
    torch.testing.assert_close(out.images.mean(dim=(1, 2, 3)), torch.tensor(REF_MEANS),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(out.images[:, 0, 3, 3], torch.tensor(REF_PIXELS), atol=1e-4, rtol=0)


REF_MEANS = [0.6175202, 0.3163786, 0.4045338]
REF_PIXELS = [0.6955792, 0.257179, 1.0]


# --- classifier-free guidance (stub network with known outputs) -------------------------------

def expected_guided(labels, s):
    u = StubUNet.NULL_VALUE
    return torch.tensor([u + s * (StubUNet.label_value(c) - u) for c in labels])


@pytest.mark.parametrize("s", [0.0, 0.5, 3.0, 7.5])
def test_guided_output_is_uncond_plus_s_times_difference(stub_pipe, s):
    labels = [0, 2, 1]
    out = run(stub_pipe, class_labels=labels, guidance_scale=s)
    unet, scheduler = stub_pipe.unet, stub_pipe.scheduler
    # One batched forward per step: null rows first, then the conditional rows.
    assert len(unet.calls) == STEPS == out.nfe
    for call in unet.calls:
        assert call.batch == 2 * len(labels)
        assert call.class_labels.tolist() == [NUM_CLASSES] * len(labels) + labels
    # What reaches scheduler.step is exactly uncond + s * (cond - uncond), per row.
    assert len(scheduler.steps) == STEPS
    expected = expected_guided(labels, s).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    for step in scheduler.steps:
        assert step.model_output.shape == (len(labels), 1, 8, 8)
        assert torch.equal(step.model_output, expected)
        assert step.sample.shape == (len(labels), 1, 8, 8)


def test_guidance_scale_one_runs_one_unbatched_conditional_forward(stub_pipe):
    labels = [2, 0]
    out = run(stub_pipe, class_labels=labels, guidance_scale=1.0)
    assert out.nfe == len(stub_pipe.unet.calls) == STEPS
    for call in stub_pipe.unet.calls:
        assert call.batch == len(labels)
        assert call.class_labels.tolist() == labels
    for step in stub_pipe.scheduler.steps:
        assert torch.equal(step.model_output,
                           expected_guided(labels, 1.0).view(-1, 1, 1, 1).expand(-1, 1, 8, 8))


def test_guidance_with_the_real_unet_and_scheduler(tiny_pipe, monkeypatch):
    """Same contract with a real U-Net and DDIM: the step gets uncond + s * (cond - uncond) of the
    batched forward, whose first half is the null class."""
    s, labels = 4.0, [1, 0, 2]
    scheduler = build_sampler("ddim", tiny_pipe.scheduler)
    tiny_pipe.scheduler = scheduler
    step_inputs, forward_outputs = [], []

    @functools.wraps(scheduler.step)
    def step(model_output, *args, **kwargs):
        step_inputs.append(model_output.clone())
        return step.__wrapped__(model_output, *args, **kwargs)

    monkeypatch.setattr(scheduler, "step", step)
    handle = tiny_pipe.unet.register_forward_hook(
        lambda m, args, kwargs, out: forward_outputs.append((kwargs["class_labels"].clone(),
                                                             out.sample.clone())),
        with_kwargs=True)
    try:
        out = run(tiny_pipe, class_labels=labels, guidance_scale=s, eta=0.0,
                  generator=generators(3))
    finally:
        handle.remove()
    assert out.nfe == len(forward_outputs) == len(step_inputs) == STEPS
    for (class_labels, output), model_output in zip(forward_outputs, step_inputs):
        assert class_labels.tolist() == [NUM_CLASSES] * 3 + labels
        uncond, cond = output[:3], output[3:]
        assert not torch.allclose(uncond, cond)
        assert torch.equal(model_output, uncond + s * (cond - uncond))


# --- validation: ValueError naming what is allowed, before any denoising ----------------------

ALLOWED_LABELS = r"integers in \[0, 2\]"

BAD_CALLS = [
    pytest.param({}, r"class_labels is required.*" + ALLOWED_LABELS, id="labels-missing"),
    pytest.param({"class_labels": -1}, ALLOWED_LABELS, id="label-negative"),
    pytest.param({"class_labels": 3}, ALLOWED_LABELS, id="label-eq-num-classes"),
    pytest.param({"class_labels": [0, 7]}, ALLOWED_LABELS, id="label-too-large"),
    pytest.param({"class_labels": torch.tensor([0, -2])}, ALLOWED_LABELS, id="tensor-negative"),
    pytest.param({"class_labels": 3.0}, ALLOWED_LABELS, id="label-float"),
    pytest.param({"class_labels": 1.0}, ALLOWED_LABELS, id="label-float-in-range"),
    pytest.param({"class_labels": [0, 1.0]}, ALLOWED_LABELS, id="list-with-float"),
    pytest.param({"class_labels": torch.tensor([1.0, 2.0])}, ALLOWED_LABELS, id="float-tensor"),
    pytest.param({"class_labels": np.array([1.0])}, ALLOWED_LABELS, id="float-array"),
    pytest.param({"class_labels": True}, ALLOWED_LABELS, id="label-bool"),
    pytest.param({"class_labels": [1, False]}, ALLOWED_LABELS, id="list-with-bool"),
    pytest.param({"class_labels": torch.tensor([True])}, ALLOWED_LABELS, id="bool-tensor"),
    pytest.param({"class_labels": "hat"}, r"unknown class 'hat'; known: ids 0\.\.", id="label-unknown-name"),
    pytest.param({"class_labels": []}, r"empty.*" + ALLOWED_LABELS, id="labels-empty"),
    pytest.param({"class_labels": torch.tensor([[0, 1]])}, r"1-D.*\(1, 2\)", id="labels-2d"),
    pytest.param({"class_labels": [0, 1], "num_images_per_prompt": 2, "generator": generators(3)},
                 r"3 generators for 4 images.*one per image", id="generators-too-few"),
    pytest.param({"class_labels": [0], "generator": generators(2)},
                 r"2 generators for 1 images", id="generators-too-many"),
    pytest.param({"class_labels": [0, 1], "num_images_per_prompt": 2,
                  "latents": torch.zeros(2, 1, 8, 8)},
                 r"latents must have shape \(4, 1, 8, 8\), got \(2, 1, 8, 8\)", id="latents-batch"),
    pytest.param({"class_labels": [0], "latents": torch.zeros(1, 3, 8, 8)},
                 r"latents must have shape \(1, 1, 8, 8\)", id="latents-channels"),
    pytest.param({"class_labels": [0], "height": 9}, r"height must be a positive multiple of 2",
                 id="height-odd"),
    pytest.param({"class_labels": [0], "width": 7}, r"width must be a positive multiple of 2",
                 id="width-odd"),
    pytest.param({"class_labels": [0], "height": 8.0}, r"multiple of 2", id="height-float"),
    pytest.param({"class_labels": [0], "height": -8}, r"multiple of 2", id="height-negative"),
    pytest.param({"class_labels": [0], "num_inference_steps": 0}, r"num_inference_steps.*>= 1",
                 id="steps-0"),
    pytest.param({"class_labels": [0], "num_inference_steps": 1.5}, r"num_inference_steps.*>= 1",
                 id="steps-float"),
    pytest.param({"class_labels": [0], "num_inference_steps": True}, r"num_inference_steps",
                 id="steps-bool"),
    pytest.param({"class_labels": [0], "num_inference_steps": 1001},
                 r"<= num_train_timesteps \(1000\)",
                 id="steps-too-many"),
    pytest.param({"class_labels": [0], "output_type": "jpg"},
                 r"output_type must be one of \('pil', 'np', 'pt'\), got 'jpg'", id="output-jpg"),
    pytest.param({"class_labels": [0], "output_type": None}, r"one of \('pil', 'np', 'pt'\)",
                 id="output-none"),
    pytest.param({"class_labels": [0], "sampler": "nope"},
                 r"unknown sampler 'nope'; choose one of \[.*'dpmpp-2m'.*\]", id="sampler-unknown"),
    pytest.param({"class_labels": [0], "prompt": "a sneaker"}, r"use class_labels, not prompt",
                 id="prompt"),
    pytest.param({"class_labels": [0], "guidance_scale": -1.0}, r"guidance_scale.*finite.*>= 0",
                 id="guidance-negative"),
    pytest.param({"class_labels": [0], "guidance_scale": float("nan")}, r"guidance_scale",
                 id="guidance-nan"),
    pytest.param({"class_labels": [0], "guidance_scale": "2"}, r"guidance_scale",
                 id="guidance-str"),
    pytest.param({"class_labels": [0], "eta": -0.5}, r"eta must be a finite number >= 0",
                 id="eta-negative"),
    pytest.param({"class_labels": [0], "num_images_per_prompt": 0},
                 r"num_images_per_prompt must be an int >= 1", id="per-prompt-0"),
    pytest.param({"class_labels": [0], "num_images_per_prompt": 1.5},
                 r"num_images_per_prompt must be an int >= 1", id="per-prompt-float"),
    pytest.param({"class_labels": [0], "num_images_per_prompt": True},
                 r"num_images_per_prompt must be an int >= 1", id="per-prompt-bool"),
    pytest.param({"class_labels": [0], "guidance_scale": True}, r"guidance_scale",
                 id="guidance-bool"),
    pytest.param({"class_labels": [0], "eta": float("inf")}, r"eta must be a finite number >= 0",
                 id="eta-inf"),
    pytest.param({"class_labels": [0], "callback_on_step_end": lambda *a: {},
                  "callback_on_step_end_tensor_inputs": ("latents", "noise")},
                 r"may name 'latents' and 'model_output', got \['noise'\]", id="callback-input"),
]


@pytest.mark.parametrize("kwargs,match", BAD_CALLS)
def test_bad_arguments_raise_before_any_denoising(tiny_pipe, kwargs, match):
    scheduler = tiny_pipe.scheduler
    config = dict(scheduler.config)
    with forward_spy(tiny_pipe.unet) as calls:
        with pytest.raises(ValueError, match=match):
            tiny_pipe(**{"num_inference_steps": 2, **kwargs})
    assert calls == []
    assert tiny_pipe.scheduler is scheduler and dict(scheduler.config) == config


@pytest.mark.parametrize("kwargs,match", BAD_CALLS[:16])
def test_bad_labels_never_reach_the_stub_network(stub_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stub_pipe(**{"num_inference_steps": 2, **kwargs})
    assert stub_pipe.unet.calls == [] and stub_pipe.scheduler.steps == []


def test_unconditional_model_refuses_labels_and_runs_without():
    pipe = make_pipe(seeded_unet(num_classes=None))
    assert pipe.num_classes is None
    with forward_spy(pipe.unet) as calls:
        with pytest.raises(ValueError, match=r"unconditional: class_labels must be None"):
            pipe(class_labels=[0], num_inference_steps=2)
        assert calls == []
        out = run(pipe, num_images_per_prompt=3, guidance_scale=3.0, generator=generators(3))
    assert out.images.shape == (3, 1, 8, 8)
    # No null rows to add: one unbatched forward per step, guidance_scale ignored.
    assert out.nfe == len(calls) == STEPS
    assert all(c.batch == 3 and c.class_labels is None for c in calls)


def test_zero_height_raises(tiny_pipe):
    with forward_spy(tiny_pipe.unet) as calls:
        with pytest.raises(ValueError, match=r"height must be a positive multiple of 2"):
            tiny_pipe(class_labels=[0], num_inference_steps=2, height=0)
    assert calls == []


def test_numpy_integer_scalar_label_is_accepted():
    assert normalize_class_labels(np.int64(2), NUM_CLASSES).tolist() == [2]


def test_non_iterable_non_integer_label_is_a_value_error():
    with pytest.raises(ValueError, match="integers in"):
        normalize_class_labels(np.float32(1), NUM_CLASSES)


# --- samplers by name never change the training schedule -------------------------------------

@pytest.mark.parametrize("name", SAMPLERS)
def test_call_with_sampler_keeps_pipe_scheduler(tiny_pipe, name):
    scheduler = tiny_pipe.scheduler
    config = dict(scheduler.config)
    alphas_cumprod = scheduler.alphas_cumprod.clone()
    run(tiny_pipe, class_labels=[0], sampler=name, generator=generators(1))
    assert tiny_pipe.scheduler is scheduler
    assert dict(tiny_pipe.scheduler.config) == config
    assert torch.equal(tiny_pipe.scheduler.alphas_cumprod, alphas_cumprod)


@pytest.mark.parametrize("name", SAMPLERS)
def test_set_sampler_swaps_the_scheduler_on_the_same_schedule(tiny_pipe, name):
    train = tiny_pipe.scheduler
    config = dict(train.config)
    direct = run(tiny_pipe, class_labels=[1, 2], sampler=name, generator=generators(2)).images
    tiny_pipe.set_sampler(name)
    assert type(tiny_pipe.scheduler) is sampler_spec(name).scheduler_class
    assert tiny_pipe.scheduler is not train and dict(train.config) == config
    assert tiny_pipe.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(tiny_pipe.scheduler.alphas_cumprod.double(),
                               train.alphas_cumprod.double(), atol=1e-6, rtol=0)
    swapped = run(tiny_pipe, class_labels=[1, 2], generator=generators(2)).images
    assert torch.equal(direct, swapped)


def test_set_sampler_through_every_name_keeps_the_schedule(tiny_pipe):
    train = tiny_pipe.scheduler
    for name in SAMPLERS + SAMPLERS[::-1]:
        tiny_pipe.set_sampler(name)
        torch.testing.assert_close(tiny_pipe.scheduler.alphas_cumprod.double(),
                                   train.alphas_cumprod.double(), atol=1e-6, rtol=0, msg=name)
        assert dict(tiny_pipe.scheduler.config) == dict(build_sampler(name, train).config), name


def test_set_sampler_unknown_name_leaves_scheduler(tiny_pipe):
    scheduler = tiny_pipe.scheduler
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'"):
        tiny_pipe.set_sampler("nope")
    assert tiny_pipe.scheduler is scheduler


# --- NFE ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLERS)
def test_nfe_equals_counted_forward_calls(tiny_pipe, name):
    with forward_spy(tiny_pipe.unet) as calls:
        out = run(tiny_pipe, class_labels=[0, 1], sampler=name, guidance_scale=2.0,
                  generator=generators(2))
    assert out.nfe == len(calls) >= STEPS
    assert all(c.batch == 4 for c in calls)  # guided: null + conditional rows in one forward


@pytest.mark.parametrize("name", ["heun", "kdpm2", "kdpm2-a"])
def test_second_order_samplers_take_two_forwards_per_step(tiny_pipe, name):
    with forward_spy(tiny_pipe.unet) as calls:
        out = run(tiny_pipe, class_labels=[0], sampler=name, guidance_scale=1.0,
                  num_inference_steps=4)
    assert out.nfe == len(calls) == 2 * 4 - 1  # the last step is a single Euler step


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "euler", "unipc"])
def test_single_stage_samplers_take_one_forward_per_step(tiny_pipe, name):
    out = run(tiny_pipe, class_labels=[0], sampler=name, num_inference_steps=5)
    assert out.nfe == 5


# --- outputs -----------------------------------------------------------------------------------

def test_output_types_agree(tiny_pipe):
    kwargs = dict(class_labels=[0, 2], num_inference_steps=2, sampler="ddim")
    pt = tiny_pipe(output_type="pt", generator=generators(2), **kwargs)
    arr = tiny_pipe(output_type="np", generator=generators(2), **kwargs)
    pil = tiny_pipe(output_type="pil", generator=generators(2), **kwargs)
    assert isinstance(pt, GenerationOutput)

    assert isinstance(pt.images, torch.Tensor) and pt.images.dtype == torch.float32
    assert pt.images.shape == (2, 1, 8, 8)
    assert pt.images.min() >= 0 and pt.images.max() <= 1

    assert isinstance(arr.images, np.ndarray) and arr.images.dtype == np.uint8
    assert arr.images.shape == (2, 8, 8, 1)
    expected = (pt.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(arr.images, expected)

    assert isinstance(pil.images, list) and len(pil.images) == 2
    for image, a in zip(pil.images, arr.images):
        assert isinstance(image, Image.Image)
        assert image.mode == "L" and image.size == (8, 8)
        np.testing.assert_array_equal(np.asarray(image), a[..., 0])


def test_rgb_and_non_square_outputs():
    pipe = make_pipe(seeded_unet(in_channels=3))
    out = pipe(class_labels=[1], num_inference_steps=2, height=12, width=8, generator=generators(1))
    (image,) = out.images
    assert image.mode == "RGB" and image.size == (8, 12)  # PIL size is (width, height)
    arr = pipe(class_labels=[1], num_inference_steps=2, height=12, width=8, output_type="np",
               generator=generators(1)).images
    assert arr.shape == (1, 12, 8, 3)
    np.testing.assert_array_equal(np.asarray(image), arr[0])


@pytest.mark.parametrize("output_type,kind", [("pil", list), ("np", np.ndarray),
                                              ("pt", torch.Tensor)])
def test_return_dict_false_gives_a_tuple(stub_pipe, output_type, kind):
    out = stub_pipe(class_labels=[0, 1], num_inference_steps=2, output_type=output_type,
                    return_dict=False)
    assert type(out) is tuple and len(out) == 1
    assert isinstance(out[0], kind) and len(out[0]) == 2


# --- labels, num_images_per_prompt -------------------------------------------------------------

@pytest.mark.parametrize("s", [1.0, 3.0])
def test_num_images_per_prompt_repeats_labels_in_place(stub_pipe, s):
    out = run(stub_pipe, class_labels=[0, 2], num_images_per_prompt=2, guidance_scale=s)
    per_image = [0, 0, 2, 2]
    null = [NUM_CLASSES] * 4 if s != 1 else []
    assert all(c.class_labels.tolist() == null + per_image for c in stub_pipe.unet.calls)
    # The stub scheduler returns the model output, so image i shows label i's guided value.
    expected = (expected_guided(per_image, s) / 2 + 0.5).clamp(0, 1)
    assert torch.equal(out.images[:, 0, 0, 0], expected)
    assert torch.equal(out.images, expected.view(-1, 1, 1, 1).expand(-1, 1, 8, 8))


@pytest.mark.parametrize("labels", [[0, 2], (0, 2), torch.tensor([0, 2]), np.array([0, 2]),
                                    torch.tensor([0, 2], dtype=torch.int32), range(0, 3, 2)])
def test_label_containers_are_equivalent(tiny_pipe, labels):
    ref = run(tiny_pipe, class_labels=[0, 0, 2, 2], generator=generators(4)).images
    out = run(tiny_pipe, class_labels=labels, num_images_per_prompt=2,
              generator=generators(4)).images
    assert torch.equal(out, ref)


def test_single_int_label_is_one_image(stub_pipe):
    out = run(stub_pipe, class_labels=2, guidance_scale=1.0)
    assert out.images.shape == (1, 1, 8, 8)
    assert stub_pipe.unet.calls[0].class_labels.tolist() == [2]


# --- class names -------------------------------------------------------------------------------

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


@pytest.mark.parametrize("label, expected", [
    ("Bag", 8), ("bag", 8), (" BAG ", 8), ("T-shirt", 0), ("tshirt", 0), ("t_shirt", 0),
    ("top", 0), ("T-shirt/top", 0), ("t shirt top", 0), ("shirt", 6), ("Shirt", 6),
    ("ankle_boot", 9), ("Ankle-Boot", 9), ("ankleboot", 9), ("9_Ankle_boot", 9),
    ("0_T-shirt_top", 0), (3, 3), ("3", 3), (np.int64(7), 7)])
def test_one_resolver_takes_the_obvious_spellings(label, expected):
    from diffusion.pipelines.base import resolve_class_label
    assert resolve_class_label(label, 10, FASHION) == expected


@pytest.mark.parametrize("label, message", [
    ("Bagg", r"unknown class 'Bagg' \(did you mean 'Bag'\?\); known: ids 0\.\.9 or names \["),
    ("9_Bag", r"unknown class '9_Bag'"),           # folder id and name disagree
    ("boot", r"unknown class 'boot'"),
    (10, r"class id 10 out of range: ids 0\.\.9"), ("-1", r"class id -1 out of range"),
    (1.0, r"int id or a class name, got 1\.0 \(float\)"), (True, r"got True \(bool\)")])
def test_the_resolver_refuses_naming_what_is_allowed(label, message):
    from diffusion.pipelines.base import resolve_class_label
    with pytest.raises(ValueError, match=message):
        resolve_class_label(label, 10, FASHION)


def test_a_name_that_fits_two_classes_is_ambiguous():
    from diffusion.pipelines.base import resolve_class_label
    with pytest.raises(ValueError, match=r"'boot' is ambiguous: it names \['Ankle boot/boot', "
                                         r"'Ski boot/boot'\]"):
        resolve_class_label("boot", 2, ["Ankle boot/boot", "Ski boot/boot"])


def test_python_api_takes_class_names_like_the_cli():
    pipe = DiffusionImagePipeline(seeded_unet(), StubScheduler(), class_names=["Shirt", "Bag", "Ankle boot"])
    kw = dict(num_inference_steps=2, output_type="pt")
    by_id = pipe(class_labels=[1, 2], generator=generators(2), **kw).images
    by_name = pipe(class_labels=["Bag", "ankle_boot"], generator=generators(2), **kw).images
    assert torch.equal(by_id, by_name)
    one = pipe(class_labels="bag", generator=generators(1), **kw).images
    assert torch.equal(one, pipe(class_labels=1, generator=generators(1), **kw).images)


@pytest.mark.parametrize("path, message", [
    ("/nonexistent", r"model folder '/nonexistent' does not exist \(train one with"),
    ("./not/here", r"model folder 'not/here' does not exist"),
])
def test_from_pretrained_of_a_missing_folder_is_a_clear_error(path, message):
    with pytest.raises(FileNotFoundError, match=message):
        DiffusionImagePipeline.from_pretrained(path)


def test_from_pretrained_of_a_folder_without_a_pipeline_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a saved pipeline \(no model_index.json\)"):
        DiffusionImagePipeline.from_pretrained(tmp_path)
    from diffusion.pipelines.base import looks_like_hub_id
    assert [looks_like_hub_id(x) for x in ("owner/model", "/abs/path", "./x/y", "a/b/c", "../x")] \
        == [True, False, False, False, False]


def test_class_names_map_to_ids():
    pipe = DiffusionImagePipeline(seeded_unet(), StubScheduler(),
                                  class_names=["Shirt", "Bag", "Boot"])
    assert [pipe.class_id(x) for x in ("shirt", " BAG ", "Boot", 2, "1")] == [0, 1, 2, 2, 1]
    with pytest.raises(ValueError, match=r"unknown class 'hat'.*ids 0\.\.2.*'Shirt'"):
        pipe.class_id("hat")
    for bad in (3, -1, "7"):
        with pytest.raises(ValueError, match=r"ids 0\.\.2"):
            pipe.class_id(bad)


def test_class_names_must_match_the_class_count():
    with pytest.raises(ValueError, match=r"2 names for 3 classes"):
        DiffusionImagePipeline(seeded_unet(), StubScheduler(), class_names=["a", "b"])


# --- callback ----------------------------------------------------------------------------------

def test_callback_called_once_per_step_and_can_replace_latents(stub_pipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((pipe, i, int(t), dict(tensors)))
        return {"latents": torch.full((2, 1, 8, 8), float(i))}

    out = run(stub_pipe, class_labels=[0, 1], num_inference_steps=4, guidance_scale=1.0,
              callback_on_step_end=callback, callback_on_step_end_tensor_inputs=())
    timesteps = stub_pipe.scheduler.timesteps.tolist()
    assert [(p, i, t) for p, i, t, _ in seen] == [(stub_pipe, i, timesteps[i]) for i in range(4)]
    # Step i + 1 denoises the latents the callback returned at step i.
    steps = stub_pipe.scheduler.steps
    for i in range(3):
        assert torch.equal(steps[i + 1].sample, torch.full((2, 1, 8, 8), float(i)))
    # The last replacement is the output: latents 3.0 -> clamp(3 / 2 + 0.5) = 1.
    assert torch.equal(out.images, torch.ones(2, 1, 8, 8))


def test_callback_replacing_final_latents_with_real_unet(tiny_pipe):
    def callback(pipe, i, t, tensors):
        return {"latents": torch.zeros(1, 1, 8, 8)} if i == STEPS - 1 else {}

    out = run(tiny_pipe, class_labels=[1], callback_on_step_end=callback,
              callback_on_step_end_tensor_inputs=(), generator=generators(1))
    assert torch.equal(out.images, torch.full((1, 1, 8, 8), 0.5))


def test_callback_receives_latents_and_model_output(stub_pipe):
    received = []

    def callback(pipe, i, t, tensors):
        received.append({k: v.clone() for k, v in tensors.items()})
        return {}

    run(stub_pipe, class_labels=[0, 1], num_inference_steps=2, guidance_scale=3.0,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=("latents", "model_output"))
    steps = stub_pipe.scheduler.steps
    assert len(received) == 2 and all(set(r) == {"latents", "model_output"} for r in received)
    assert torch.equal(received[0]["latents"], steps[1].sample)  # x_{t-1} of step 0 feeds step 1
    for r, step in zip(received, steps):
        assert torch.equal(r["model_output"], step.model_output)  # the guided output


def test_callback_default_tensor_inputs_are_the_latents(stub_pipe):
    received = []
    run(stub_pipe, class_labels=[2], num_inference_steps=2,
        callback_on_step_end=lambda pipe, i, t, tensors: received.append(tensors) or {})
    assert [set(r) for r in received] == [{"latents"}, {"latents"}]


# --- non-finite images (the family-wide checks are in tests/contract/) ----------------------------

@pytest.mark.parametrize("name", SAMPLERS)
def test_a_nan_in_one_image_s_latents_names_the_sampler_step_0_and_only_that_image(tiny_pipe,
                                                                                    name):
    latents = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    latents[2, 0, 4, 4] = float("nan")
    with pytest.raises(NonFiniteImagesError) as info:
        run(tiny_pipe, class_labels=[0, 1, 2], latents=latents, sampler=name,
            generator=generators(3))
    scheduler = build_sampler(name, tiny_pipe.scheduler)
    scheduler.set_timesteps(STEPS)                     # Heun & co. run ~2 loop steps per step
    assert f"in 1 of 3 images (indices [2]), from sampler {name!r}: first at denoising step 0 " \
           f"(of steps 0..{len(scheduler.timesteps) - 1}, timestep " in str(info.value)
    assert info.value.indices == [2]


class DivergingUNet(StubUNet):
    """:class:`StubUNet` whose conditional rows of class ``label`` predict ``inf`` from forward
    call ``start`` on (with :class:`StubScheduler`, ``x_{t-1}`` is the guided output, so that
    image's latents diverge at step ``start``)."""

    def __init__(self, label: int, start: int):
        super().__init__()
        self.label, self.start = label, start

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        out = super().forward(sample, timestep, class_labels, return_dict)
        if len(self.calls) > self.start:
            out.sample[class_labels == self.label] = float("inf")
        return out


@pytest.mark.parametrize("start", [0, 2, 3])
def test_a_diverging_network_names_the_step_it_diverged_at(start):
    pipe = make_pipe(DivergingUNet(label=1, start=start), StubScheduler())
    with pytest.raises(NonFiniteImagesError) as info:
        run(pipe, class_labels=[0, 1, 2, 1], num_inference_steps=4)
    t = pipe.scheduler.timesteps[start].item()
    assert str(info.value).startswith(
        f"DiffusionImagePipeline: non-finite values (NaN/inf) in 2 of 4 images (indices [1, 3]), "
        f"from sampler 'StubScheduler': first at denoising step {start} (of steps 0..3, "
        f"timestep {t}). Try another sampler")
    assert info.value.indices == [1, 3]


def test_flag_counts_inf_that_the_output_clamp_would_hide():
    """The check runs before ``to_output``: an image of ``inf`` is flagged although its ``pt``
    values saturate to 1."""
    pipe = make_pipe(DivergingUNet(label=1, start=2), StubScheduler())
    out = run(pipe, class_labels=[0, 1], num_inference_steps=4, on_nonfinite="flag")
    assert out.nonfinite == [1]
    assert torch.equal(out.images[1], torch.ones(1, 8, 8)) and torch.isfinite(out.images).all()


def test_latents_a_callback_writes_are_checked_and_only_the_final_images_count(stub_pipe):
    """Latents are checked after the callback; a NaN the next step overwrites (``StubScheduler``
    returns the finite model output) leaves finite images, which pass."""
    def nan_at(step):
        def callback(pipe, i, t, tensors):
            nan = torch.full_like(tensors["latents"], float("nan"))
            return {"latents": nan} if i == step else {}
        return callback

    with pytest.raises(NonFiniteImagesError, match=r"2 of 2 images \(indices \[0, 1\]\), .* step 2 "):
        run(stub_pipe, class_labels=[0, 2], num_inference_steps=3, callback_on_step_end=nan_at(2))
    out = run(stub_pipe, class_labels=[0, 2], num_inference_steps=3, callback_on_step_end=nan_at(1))
    assert out.nonfinite == [] and torch.isfinite(out.images).all()


# --- save / load -------------------------------------------------------------------------------

def public(config) -> dict:
    """A diffusers config without bookkeeping keys (``_class_name``, ``_use_default_values``)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("sampler", [None, "dpmpp-2m-karras"])
def test_save_load_round_trip_is_exact_and_uses_safetensors(tmp_path, sampler):
    tiny_pipe = DiffusionImagePipeline(seeded_unet(), make_pipe().scheduler,
                                       class_names=["shirt", "bag", "boot"])
    tiny_pipe.set_progress_bar_config(disable=True)
    if sampler is not None:
        tiny_pipe.set_sampler(sampler)
    tiny_pipe.save_pretrained(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert {"model_index.json", "unet/config.json", "scheduler/scheduler_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    loaded = DiffusionImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(tiny_pipe.scheduler)
    assert public(loaded.scheduler.config) == public(tiny_pipe.scheduler.config)
    assert loaded.num_classes == NUM_CLASSES
    assert loaded.config.class_names == ["shirt", "bag", "boot"] and loaded.class_id("boot") == 2
    state, loaded_state = tiny_pipe.unet.state_dict(), loaded.unet.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    for name in (None, "euler-a"):
        a = run(tiny_pipe, class_labels=[0, 2], sampler=name, generator=generators(2)).images
        b = run(loaded, class_labels=[0, 2], sampler=name, generator=generators(2)).images
        assert torch.equal(a, b)


# --- flow-matching models ----------------------------------------------------------------------

FLOW_SAMPLERS = list_samplers("flow")


def flow_pipe() -> DiffusionImagePipeline:
    """The tiny seeded U-Net as a flow-matching model (shift 3), its saved training schedule."""
    return make_pipe(scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))


@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_flow_model_seeds_batches_and_latents_like_any_model(name):
    """Same seeds -> same images; an image does not depend on its batch; given latents equal
    latents drawn from the same generators; finite images in [0, 1]."""
    pipe = flow_pipe()
    labels = [0, 1, 2, 1]
    batch = run(pipe, class_labels=labels, sampler=name, generator=generators(4)).images
    again = run(pipe, class_labels=labels, sampler=name, generator=generators(4)).images
    assert torch.equal(batch, again) and torch.isfinite(batch).all()
    assert batch.min() >= 0 and batch.max() <= 1
    for i, label in enumerate(labels):
        alone = run(pipe, class_labels=[label], sampler=name, generator=generators(1, offset=i))
        torch.testing.assert_close(alone.images[0], batch[i], atol=1e-5, rtol=0)
    latents = torch.cat([torch.randn((1, 1, 8, 8), generator=g) for g in generators(4)])
    given = run(pipe, class_labels=labels, sampler=name, latents=latents).images
    torch.testing.assert_close(given, batch, atol=1e-6, rtol=0)
    other = run(pipe, class_labels=labels, sampler=name, generator=generators(4, offset=9)).images
    assert (other - batch).abs().max() > 1e-3


@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_flow_model_set_sampler_keeps_the_training_schedule(name):
    pipe = flow_pipe()
    train, config = pipe.scheduler, dict(pipe.scheduler.config)
    direct = run(pipe, class_labels=[1, 2], sampler=name, generator=generators(2)).images
    assert pipe.scheduler is train and dict(train.config) == config
    pipe.set_sampler(name)
    assert type(pipe.scheduler) is sampler_spec(name).scheduler_class
    swapped = run(pipe, class_labels=[1, 2], generator=generators(2)).images
    assert torch.equal(direct, swapped)
    pipe.set_sampler("flow-euler")  # back through the solver's config: the same schedule
    assert dict(pipe.scheduler.config) == config


def test_flow_model_euler_is_the_velocity_ode_by_hand():
    """The pipeline's flow-euler at 2 steps, guidance 2, equals the Euler steps of
    ``x <- x + (sigma_next - sigma) v`` written out with the U-Net's guided velocity at
    ``t = sigma * T`` (no input scaling, initial sigma 1)."""
    pipe = flow_pipe()
    latents = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    out = run(pipe, class_labels=[0, 2], sampler="flow-euler", num_inference_steps=2,
              latents=latents.clone(), guidance_scale=2.0, output_type="pt")
    scheduler = build_sampler("flow-euler", pipe.scheduler)
    scheduler.set_timesteps(2)
    sigmas = scheduler.sigmas.tolist()
    x = latents.clone()
    labels = torch.tensor([3, 3, 0, 2])
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.tensor(sigma * 1000.0)
            uncond, cond = pipe.unet(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
            x = x + (sigma_next - sigma) * (uncond + 2.0 * (cond - uncond))
    torch.testing.assert_close(out.images, (x / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    assert out.nfe == 2


@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_flow_samplers_are_refused_by_a_ddpm_pipeline_before_any_forward(tiny_pipe, name):
    scheduler = tiny_pipe.scheduler
    with forward_spy(tiny_pipe.unet) as calls:
        with pytest.raises(ValueError, match=rf"sampler '{name}' is for flow-matching models.*"
                                             rf"use one of \['ddim'"):
            run(tiny_pipe, class_labels=[0], sampler=name)
        with pytest.raises(ValueError, match="is for flow-matching models"):
            tiny_pipe.set_sampler(name)
    assert not calls and tiny_pipe.scheduler is scheduler


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "euler", "heun"])
def test_ddpm_samplers_are_refused_by_a_flow_pipeline_before_any_forward(name):
    pipe = flow_pipe()
    with forward_spy(pipe.unet) as calls:
        with pytest.raises(ValueError, match=rf"sampler '{name}' is for DDPM models.*use one of "
                                             rf"\['flow-dpmpp-2m', 'flow-euler', 'flow-heun', "
                                             rf"'flow-unipc'\]"):
            run(pipe, class_labels=[0], sampler=name)
        with pytest.raises(ValueError, match="is for DDPM models"):
            pipe.set_sampler(name)
    assert not calls


def test_flow_model_output_types_and_round_trip(tmp_path):
    pipe = flow_pipe()
    kwargs = dict(class_labels=[0, 2], num_inference_steps=3, sampler="flow-heun")
    pt = pipe(output_type="pt", generator=generators(2), **kwargs)
    arr = pipe(output_type="np", generator=generators(2), **kwargs)
    pil = pipe(output_type="pil", generator=generators(2), **kwargs)
    assert pt.nfe == arr.nfe == 5 and pt.images.shape == (2, 1, 8, 8)
    expected = (pt.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(arr.images, expected)
    np.testing.assert_array_equal(np.asarray(pil.images[1]), arr.images[1, ..., 0])
    pipe.save_pretrained(tmp_path / "flow")
    loaded = DiffusionImagePipeline.from_pretrained(tmp_path / "flow")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is FlowMatchEulerDiscreteScheduler
    assert loaded.scheduler.config.shift == 3.0
    again = loaded(output_type="pt", generator=generators(2), **kwargs)
    torch.testing.assert_close(again.images, pt.images, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list_samplers())
def test_a_pipeline_saved_with_any_sampler_reloads_it(name, tmp_path):
    """save_pretrained / from_pretrained keep every registered sampler's class and config,
    including our own subclasses (recorded by module, e.g. ``samplers.schedulers``: diffusers
    looks for SchedulerMixin there), on its parameterisation's training schedule."""
    from diffusers import EDMEulerScheduler

    train = {"ddpm": DDPMScheduler(), "flow": FlowMatchEulerDiscreteScheduler(shift=3.0),
             "edm": EDMEulerScheduler(sigma_max=40.0)}[sampler_spec(name).parameterisation]
    options = {"s_churn": 5.0} if name == "edm-heun" else {}
    pipe = make_pipe(scheduler=build_sampler(name, train, **options))
    pipe.save_pretrained(tmp_path / name)
    loaded = DiffusionImagePipeline.from_pretrained(tmp_path / name)
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == \
        {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
