"""Guidance methods in DiffusionImagePipeline: the default is today's CFG bit for bit, forwards
per step and NFE per method (stub networks with known outputs), autoguidance's second network,
the checks before any forward, and a saved default method."""

from __future__ import annotations

from types import SimpleNamespace

import re

import pytest
import torch
from diffusers import DDPMScheduler

from conftest import NUM_CLASSES, StubScheduler, StubUNet, generators, make_pipe, seeded_unet
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from samplers import build_guidance

STEPS = 3


class NoisyStubScheduler(StubScheduler):
    """:class:`StubScheduler` on the linear DDPM schedule (``alphas_cumprod``), epsilon networks:
    steps at t = 999, 499, 0 with sigma ~157, ~1.9, ~0.01."""

    def __init__(self):
        super().__init__()
        self.alphas_cumprod = DDPMScheduler().alphas_cumprod
        self.config.prediction_type = "epsilon"


class WeakStubUNet(StubUNet):
    """A second stub network: ``label_value / 2`` (dyadic), so ``w + s (c - w)`` is exact."""

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        out = super().forward(sample, timestep, class_labels)
        return SimpleNamespace(sample=out.sample / 2)


def stub_pipe(scheduler=None):
    return make_pipe(StubUNet(), scheduler or NoisyStubScheduler())


def final(out) -> list[float]:
    """The stub scheduler returns the model output: the last step's per-image value, in [0, 1]."""
    return out.images[:, 0, 0, 0].tolist()


# --- the default is today's CFG ------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["dpmpp-2m", "euler-a", "ddim", "heun"])
def test_default_and_explicit_cfg_give_bit_identical_images(sampler):
    pipe = make_pipe()
    kwargs = dict(class_labels=[0, 2, 1], num_inference_steps=4, guidance_scale=3.0,
                  sampler=sampler, output_type="pt")
    default = pipe(generator=generators(3), **kwargs)
    for guidance in ("cfg", build_guidance("cfg"), {"name": "cfg", "options": {}}):
        explicit = pipe(generator=generators(3), guidance=guidance, **kwargs)
        assert torch.equal(default.images, explicit.images) and default.nfe == explicit.nfe
    pipe.set_guidance("cfg")   # a saved default of plain CFG: the same images again
    assert torch.equal(pipe(generator=generators(3), **kwargs).images, default.images)


def test_default_guidance_output_is_the_pre_method_formula():
    """The step gets exactly uncond + s * (cond - uncond) of one batched forward (as before)."""
    pipe = stub_pipe(StubScheduler())
    out = pipe(class_labels=[0, 1], num_inference_steps=STEPS, guidance_scale=2.5, output_type="pt")
    u = StubUNet.NULL_VALUE
    expected = [u + 2.5 * (StubUNet.label_value(c) - u) for c in (0, 1)]
    for step in pipe.scheduler.steps:
        assert step.model_output[:, 0, 0, 0].tolist() == expected
    assert out.nfe == STEPS and [c.batch for c in pipe.unet.calls] == [4] * STEPS


# --- forwards per step and NFE --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cfg", "interval", "apg", "cfg-zero-star"])
def test_scale_one_runs_one_unbatched_forward_per_step(name):
    pipe = stub_pipe()
    out = pipe(class_labels=[2, 0], num_inference_steps=STEPS, guidance_scale=1.0,
               output_type="pt", guidance=name)
    assert out.nfe == STEPS and [c.batch for c in pipe.unet.calls] == [2] * STEPS
    assert all(c.class_labels.tolist() == [2, 0] for c in pipe.unet.calls)


def test_interval_runs_the_null_forward_only_inside_its_interval():
    pipe = stub_pipe()       # sigmas ~157, ~1.9, ~0.01: only the middle step is inside [0.5, 5]
    out = pipe(class_labels=[0, 1], num_inference_steps=STEPS, guidance_scale=3.0,
               output_type="pt", guidance=build_guidance("interval", sigma_lo=0.5, sigma_hi=5.0))
    assert [c.batch for c in pipe.unet.calls] == [2, 4, 2] and out.nfe == STEPS
    assert pipe.unet.calls[1].class_labels.tolist() == [NUM_CLASSES, NUM_CLASSES, 0, 1]
    u = StubUNet.NULL_VALUE
    c = [StubUNet.label_value(k) for k in (0, 1)]
    values = [s.model_output[:, 0, 0, 0].tolist() for s in pipe.scheduler.steps]
    assert values == [c, [u + 3.0 * (x - u) for x in c], c]


def test_cfg_zero_star_zeroes_the_first_step_without_a_null_forward():
    pipe = stub_pipe()
    pipe(class_labels=[0, 1], num_inference_steps=STEPS, guidance_scale=2.0, output_type="pt",
         guidance="cfg-zero-star")
    assert [c.batch for c in pipe.unet.calls] == [2, 4, 4]
    first, second = (s.model_output[:, 0, 0, 0].tolist() for s in pipe.scheduler.steps[:2])
    assert first == [0.0, 0.0]
    u, c = StubUNet.NULL_VALUE, StubUNet.label_value(0)       # constant images: s* = c / u
    assert second[0] == pytest.approx(c / u * u + 2.0 * (c - c / u * u))


def test_autoguidance_runs_the_weak_network_with_the_same_condition_and_counts_it():
    pipe, weak = stub_pipe(), WeakStubUNet()
    out = pipe(class_labels=[0, 2], num_inference_steps=STEPS, guidance_scale=3.0,
               output_type="pt", guidance=build_guidance("autoguidance", guide_model=weak))
    assert out.nfe == 2 * STEPS
    assert [c.class_labels.tolist() for c in pipe.unet.calls] == [[0, 2]] * STEPS
    assert [c.class_labels.tolist() for c in weak.calls] == [[0, 2]] * STEPS
    c = [StubUNet.label_value(k) for k in (0, 2)]
    for step in pipe.scheduler.steps:   # w + 3 (c - w), w = c / 2
        assert step.model_output[:, 0, 0, 0].tolist() == [x / 2 + 3.0 * (x - x / 2) for x in c]
    weak.calls.clear()
    out = pipe(class_labels=[0, 2], num_inference_steps=STEPS, guidance_scale=1.0,
               output_type="pt", guidance=build_guidance("autoguidance", guide_model=weak))
    assert out.nfe == STEPS and weak.calls == []


def test_autoguidance_from_a_saved_folder_and_on_an_unconditional_model(tmp_path):
    weak = make_pipe(seeded_unet(seed=1))
    weak.save_pretrained(tmp_path / "weak")
    pipe = make_pipe()
    method = build_guidance("autoguidance", guide_model=str(tmp_path / "weak"))
    out = pipe(class_labels=[0, 1], num_inference_steps=STEPS, guidance_scale=2.0,
               generator=generators(2), output_type="pt", guidance=method)
    assert out.nfe == 2 * STEPS and torch.isfinite(out.images).all()
    same = pipe(class_labels=[0, 1], num_inference_steps=STEPS, guidance_scale=1.0,
                generator=generators(2), output_type="pt")
    assert not torch.equal(out.images, same.images)
    uncond = make_pipe(seeded_unet(num_classes=None))
    uncond_weak = make_pipe(seeded_unet(seed=1, num_classes=None))
    out = uncond(num_images_per_prompt=2, num_inference_steps=STEPS, output_type="pt",
                 guidance=build_guidance("autoguidance", guide_model=uncond_weak))
    assert out.nfe == 2 * STEPS


def test_apg_momentum_is_reset_per_call():
    pipe = make_pipe()
    method = build_guidance("apg", momentum=-0.5)
    kwargs = dict(class_labels=[0, 1], num_inference_steps=4, guidance_scale=4.0,
                  sampler="euler", output_type="pt", guidance=method)
    assert torch.equal(pipe(generator=generators(2), **kwargs).images,
                       pipe(generator=generators(2), **kwargs).images)


# --- checks before any forward --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance="pag"), r"unknown guidance method 'pag'; choose one of \["),
    (dict(guidance={"name": "apg", "options": {"beta": 1}}), r"'apg' has no option 'beta'"),
    (dict(guidance="cfg++", guidance_scale=0.5),
     r"'cfg\+\+' is defined for the samplers \['ddim', 'ddpm', 'euler', 'euler-a'\]"),
    (dict(guidance="cfg++", sampler="dpmpp-2m", guidance_scale=0.5), r"not for sampler 'dpmpp-2m'"),
    (dict(guidance="cfg++", sampler="ddim", guidance_scale=2.0),
     r"guidance_scale must be a finite number in \[0, 1\] for guidance 'cfg\+\+'"),
    (dict(guidance="autoguidance"), r"'autoguidance' needs guide_model=<a saved pipeline folder"),
    (dict(guidance=build_guidance("autoguidance", guide_model="/no/such/folder")),
     r"model folder '/no/such/folder' does not exist"),
    (dict(guidance=build_guidance("autoguidance", guide_model=StubUNet(num_classes=5))),
     r"guide_model does not fit this pipeline: its class table \(num_classes\) is 5, this "
     r"model's is 3"),
])
def test_bad_guidance_is_refused_before_any_forward(kwargs, message):
    pipe = stub_pipe()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        pipe(class_labels=[0], num_inference_steps=2, **kwargs)
    assert pipe.unet.calls == [] and pipe.scheduler.steps == []


def test_guide_with_another_schedule_is_refused(tmp_path):
    weak = make_pipe(seeded_unet(seed=1), DDPMScheduler(prediction_type="epsilon"))
    with pytest.raises(ValueError, match=r"its training noise schedule is .*'epsilon'.*this "
                                         r"model's is .*'v_prediction'"):
        make_pipe()(class_labels=[0], num_inference_steps=2,
                    guidance=build_guidance("autoguidance", guide_model=weak))


def test_guidance_on_an_unconditional_model_is_refused():
    pipe = make_pipe(StubUNet(num_classes=None), NoisyStubScheduler())
    with pytest.raises(ValueError, match=r"guidance 'apg' combines the conditional and the null "
                                         r"prediction, and this model is unconditional"):
        pipe(num_inference_steps=2, guidance="apg")
    assert pipe.unet.calls == []
    pipe(num_inference_steps=2)   # no guidance named: runs unguided, as before


# --- a saved default --------------------------------------------------------------------------

def test_a_saved_default_guidance_round_trips_and_old_folders_load_as_cfg(tmp_path):
    pipe = make_pipe()
    pipe.save_pretrained(tmp_path / "old")
    assert "guidance" not in (tmp_path / "old" / "model_index.json").read_text()
    assert DiffusionImagePipeline.from_pretrained(tmp_path / "old").guidance_method().name == "cfg"
    pipe.set_guidance("apg", eta=0.5)
    pipe.save_pretrained(tmp_path / "apg")
    loaded = DiffusionImagePipeline.from_pretrained(tmp_path / "apg")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.guidance == {"name": "apg",
                                      "options": {"eta": 0.5, "momentum": 0.0, "norm_threshold": 0.0}}
    kwargs = dict(class_labels=[0, 1], num_inference_steps=3, guidance_scale=3.0, output_type="pt")
    saved = loaded(generator=generators(2), **kwargs).images
    named = loaded(generator=generators(2), guidance=build_guidance("apg", eta=0.5), **kwargs).images
    plain = loaded(generator=generators(2), guidance="cfg", **kwargs).images
    assert torch.equal(saved, named) and not torch.equal(saved, plain)
    with pytest.raises(ValueError, match="cannot be saved in the pipeline config"):
        pipe.set_guidance(build_guidance("autoguidance", guide_model=StubUNet()))


def test_interval_on_a_text_model_runs_the_prompt_rows_alone_outside_the_interval():
    from conftest import forward_spy, make_text_pipe

    pipe = make_text_pipe()
    method = build_guidance("interval", sigma_lo=0.5, sigma_hi=5.0)
    kwargs = dict(prompt=["red apple", "grinning face"], num_inference_steps=STEPS,
                  guidance_scale=3.0, output_type="pt", sampler="ddim")
    with forward_spy(pipe.unet) as calls:
        out = pipe(generator=generators(2), guidance=method, **kwargs)
    from samplers import build_sampler

    ddim = build_sampler("ddim", pipe.scheduler)
    ddim.set_timesteps(STEPS)                       # t = 999, 666, 332: sigma ~20.8, ~3.8, ~1.0
    sigmas = [((1 - a) / a) ** 0.5 for a in (float(ddim.alphas_cumprod[t]) for t in ddim.timesteps)]
    assert [c.batch for c in calls] == [4 if 0.5 <= s <= 5.0 else 2 for s in sigmas]
    assert 2 in [c.batch for c in calls] and 4 in [c.batch for c in calls]
    assert out.nfe == STEPS and torch.isfinite(out.images).all()


# --- flow-matching and EDM models: methods that read a DDPM noise level are refused up front ---

@pytest.mark.parametrize("scheduler", ["flow", "edm"])
@pytest.mark.parametrize("name", ["interval", "apg"])   # cfg++: refused by its sampler list
def test_noise_level_methods_are_refused_on_flow_and_edm_models_before_any_forward(name, scheduler):
    from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler
    from conftest import forward_spy

    sched = (FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
             if scheduler == "flow" else EDMEulerScheduler())
    pipe = make_pipe(scheduler=sched)
    with forward_spy(pipe.unet) as calls, pytest.raises(
            ValueError, match=rf"guidance '{re.escape(name)}' reads the step's noise level .* "
                              rf"{type(sched).__name__} .*use one of \[.*'cfg'"):
        pipe(class_labels=[0], guidance=name, num_inference_steps=2, output_type="pt",
             generator=generators(1))
    assert calls == []


@pytest.mark.parametrize("name", ["cfg", "cfg-zero-star"])
def test_plain_methods_run_on_a_flow_model(name):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = make_pipe(scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    out = pipe(class_labels=[0, 1], guidance=name, num_inference_steps=3, output_type="pt",
               generator=generators(2))
    assert torch.isfinite(out.images).all() and out.nfe == 3
