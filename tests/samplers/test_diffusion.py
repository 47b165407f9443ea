"""Tests for samplers/diffusion.py: the registry and building samplers on the training schedule."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, EDMEulerScheduler,
                       FlowMatchEulerDiscreteScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

import samplers.diffusion as sd
from samplers import (
    DEFAULT_SAMPLER,
    SamplerSpec,
    build_sampler,
    list_samplers,
    register_sampler,
    sampler_spec,
    training_schedule,
)

REQUIRED = ["ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-sde", "euler", "euler-a",
            "heun", "unipc", "deis", "lms", "pndm"]
SCHEDULES = ["linear", "squaredcos_cap_v2", "sigmoid"]


@pytest.fixture
def registry_guard(monkeypatch):
    """Let a test register samplers without leaking them into other tests."""
    monkeypatch.setattr(sd, "_REGISTRY", dict(sd._REGISTRY))


def test_list_samplers_has_the_required_names_sorted():
    names = list_samplers()
    assert set(REQUIRED) <= set(names)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert DEFAULT_SAMPLER in names


def test_list_samplers_returns_a_copy():
    list_samplers().append("not-a-sampler")
    assert "not-a-sampler" not in list_samplers()


@pytest.mark.parametrize("name", ["nope", "", "DDIM", "dpmpp_2m"])
def test_unknown_name_raises_value_error_listing_names(name):
    for call in (lambda: sampler_spec(name), lambda: build_sampler(name, DDPMScheduler())):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert repr(name) in message
        assert all(known in message for known in list_samplers())


@pytest.mark.parametrize("name", list_samplers())
def test_spec_is_complete(name):
    spec = sampler_spec(name)
    assert isinstance(spec, SamplerSpec)
    assert issubclass(spec.scheduler_class, SchedulerMixin)
    assert isinstance(spec.stochastic, bool)
    assert spec.source, f"{name} cites no paper"


@pytest.mark.parametrize("name", list_samplers("ddpm"))
def test_build_sampler_returns_a_fresh_configured_object(name):
    train = DDPMScheduler(num_train_timesteps=1000)
    a, b = build_sampler(name, train), build_sampler(name, train)
    spec = sampler_spec(name)
    assert type(a) is spec.scheduler_class
    assert a is not b and a is not train
    assert a.config is not b.config
    assert dict(a.config) == dict(b.config)
    for key, value in spec.options.items():
        assert a.config[key] == value
    # State set on one (timesteps) does not reach the other.
    a.set_timesteps(5)
    b.set_timesteps(7)
    assert len(a.timesteps) != len(b.timesteps)
    assert a.config.num_train_timesteps == 1000


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", list_samplers("ddpm"))
def test_build_sampler_keeps_the_training_schedule(name, schedule):
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule,
                          prediction_type="v_prediction")
    config_before = copy.deepcopy(dict(train.config))
    betas_before = train.betas.clone()
    alphas_cumprod_before = train.alphas_cumprod.clone()

    sampler = build_sampler(name, train)

    assert dict(train.config) == config_before  # the training scheduler is never mutated
    assert torch.equal(train.betas, betas_before)
    assert torch.equal(train.alphas_cumprod, alphas_cumprod_before)
    assert sampler.config.num_train_timesteps == 1000
    assert sampler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(sampler.alphas_cumprod.double(), train.alphas_cumprod.double(),
                               atol=1e-6, rtol=0)
    # Built from the config alone (betas recomputed) gives the same schedule.
    from_config = build_sampler(name, train.config)
    torch.testing.assert_close(from_config.alphas_cumprod.double(),
                               train.alphas_cumprod.double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_really_differ(schedule):
    """Guard for the test above: the three schedules are distinct, so passing a wrong one fails."""
    ref = DDPMScheduler(beta_schedule=schedule).alphas_cumprod
    others = [DDPMScheduler(beta_schedule=s).alphas_cumprod for s in SCHEDULES if s != schedule]
    assert all((ref - o).abs().max() > 1e-2 for o in others)


@pytest.mark.parametrize("first", list_samplers("ddpm"))
@pytest.mark.parametrize("second", ["dpmpp-2m", "ddim", "euler"])
def test_sampler_options_do_not_leak_into_the_next_sampler(first, second):
    """Building from a sampler (not the training DDPM) keeps only the training schedule."""
    train = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    chained = build_sampler(second, build_sampler(first, train))
    direct = build_sampler(second, train)
    assert dict(chained.config) == dict(direct.config)
    torch.testing.assert_close(chained.alphas_cumprod.double(), train.alphas_cumprod.double(),
                               atol=1e-6, rtol=0)


def test_training_schedule_keeps_only_schedule_keys_and_makes_betas_explicit():
    train = DDPMScheduler(num_train_timesteps=50, beta_start=0.001, beta_end=0.03,
                          beta_schedule="sigmoid", clip_sample=False, variance_type="fixed_large")
    schedule = training_schedule(train)
    assert set(schedule) <= set(sd.TRAINING_SCHEDULE_KEYS)
    assert "clip_sample" not in schedule and "variance_type" not in schedule
    assert len(schedule["trained_betas"]) == 50
    torch.testing.assert_close(torch.tensor(schedule["trained_betas"], dtype=torch.float32),
                               train.betas, atol=0, rtol=0)
    from_config = training_schedule(dict(train.config))
    torch.testing.assert_close(torch.tensor(from_config["trained_betas"]),
                               torch.tensor(schedule["trained_betas"]), atol=1e-7, rtol=0)


def test_zero_terminal_snr_is_carried_only_when_on():
    """Off (or absent) it is not in the schedule, so every sampler's config is the one built before
    the option existed (sample-cache keys); on, it reaches every sampler that accepts it, with the
    rescaled betas (alphas_cumprod[-1] = 0), also through a chain of rebuilds and a saved config."""
    for off in (DDPMScheduler(), DDPMScheduler(rescale_betas_zero_snr=False)):
        assert "rescale_betas_zero_snr" not in training_schedule(off)
        assert "rescale_betas_zero_snr" not in training_schedule(dict(off.config))
    assert dict(build_sampler("pndm", DDPMScheduler(rescale_betas_zero_snr=False)).config) == \
        dict(build_sampler("pndm", DDPMScheduler()).config)
    train = DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert float(train.alphas_cumprod[-1]) == 0.0 and float(train.betas[-1]) == 1.0
    for source in (train, dict(train.config)):
        schedule = training_schedule(source)
        assert schedule["rescale_betas_zero_snr"] is True and schedule["trained_betas"][-1] == 1.0
    for name in sd.zero_terminal_snr_samplers():
        chained = build_sampler(name, build_sampler("ddim", build_sampler("euler", train)).config)
        assert chained.config.rescale_betas_zero_snr is True, name
        torch.testing.assert_close(chained.betas.double(), train.betas.double(), atol=1e-6, rtol=0)
        # DDIM and DDPM keep abar_T = 0; the sigma-based samplers use diffusers' 2**-24 (sigma 4096)
        assert float(chained.alphas_cumprod[-1]) in (0.0, 2 ** -24), name


def test_custom_trained_betas_reach_every_sampler():
    betas = torch.linspace(1e-4, 0.05, 40) ** 1.5
    train = DDPMScheduler(num_train_timesteps=40, trained_betas=betas.tolist())
    expected = torch.cumprod(1 - betas.double(), 0)
    for name in list_samplers("ddpm"):
        sampler = build_sampler(name, train)
        torch.testing.assert_close(sampler.alphas_cumprod.double(), expected, atol=1e-6, rtol=0,
                                   msg=name)


def test_build_sampler_overrides_win_and_default_spacing_is_trailing():
    train = DDPMScheduler()
    assert build_sampler("ddim", train).config.timestep_spacing == "trailing"
    sampler = build_sampler("ddim", train, timestep_spacing="leading", clip_sample=True)
    assert sampler.config.timestep_spacing == "leading"
    assert sampler.config.clip_sample is True
    assert train.config.timestep_spacing == "leading"  # DDPM default, untouched
    trailing = build_sampler("ddim", train)
    trailing.set_timesteps(10)
    assert int(trailing.timesteps[0]) == 999


@pytest.mark.parametrize("name", list_samplers("ddpm"))
def test_every_sampler_takes_a_step(name):
    """The diffusers contract: set_timesteps, scale_model_input, step -> finite prev_sample."""
    sampler = build_sampler(name, DDPMScheduler())
    sampler.set_timesteps(4)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x = x * sampler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(sampler.step).parameters
    for t in sampler.timesteps:
        eps = 0.1 * sampler.scale_model_input(x, t)
        kwargs = {"generator": torch.Generator().manual_seed(1)} if takes_generator else {}
        x = sampler.step(eps, t, x, **kwargs).prev_sample
    assert x.shape == (2, 1, 4, 4)
    assert torch.isfinite(x).all()


def test_register_sampler_refuses_duplicates(registry_guard):
    spec = SamplerSpec(DDIMScheduler, {"clip_sample": True}, False, "test")
    for name in list_samplers():
        with pytest.raises(ValueError, match="already registered"):
            register_sampler(name, spec)
    assert sampler_spec("ddim").options == {"clip_sample": False}  # unchanged


def test_register_sampler_adds_and_overwrites(registry_guard):
    spec = SamplerSpec(DDIMScheduler, {"clip_sample": True}, False, "test")
    register_sampler("ddim-clip", spec)
    assert "ddim-clip" in list_samplers()
    assert sampler_spec("ddim-clip") is spec
    assert build_sampler("ddim-clip", DDPMScheduler()).config.clip_sample is True
    with pytest.raises(ValueError, match="overwrite=True"):
        register_sampler("ddim-clip", SamplerSpec(DDPMScheduler))
    other = SamplerSpec(DDPMScheduler, {}, True, "test")
    register_sampler("ddim-clip", other, overwrite=True)
    assert sampler_spec("ddim-clip") is other


def test_registry_guard_restores_registry():
    """Runs after the registering tests: nothing they added survived."""
    assert "ddim-clip" not in list_samplers()


def test_sampler_name_of_inverts_build_sampler():
    from diffusers import DDIMScheduler, LCMScheduler

    from samplers import sampler_name_of

    for name in list_samplers("ddpm"):  # incl. dpmpp-2m vs dpmpp-2m-karras: other options
        assert sampler_name_of(build_sampler(name, DDPMScheduler())) == name
    for name in list_samplers("flow"):  # incl. flow-dpmpp-2m vs dpmpp-2m
        assert sampler_name_of(build_sampler(name, FlowMatchEulerDiscreteScheduler())) == name
    for name in list_samplers("edm"):  # incl. edm-heun, a subclass of edm-euler's class
        assert sampler_name_of(build_sampler(name, EDMEulerScheduler())) == name
    for name, train in (("lcm", DDPMScheduler()), ("flow-lcm", FlowMatchEulerDiscreteScheduler())):
        assert sampler_name_of(build_sampler(name, train)) == name   # the consistency samplers
    assert sampler_name_of(LCMScheduler()) == "lcm"
    assert sampler_name_of(DDIMScheduler()) is None  # not a registered sampler (ours subclasses it)


# --- flow matching: parameterisation, building, refusal ------------------------------------------

FLOW_TRAIN = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def test_samplers_are_split_by_parameterisation():
    assert sd.list_samplers("flow") == ["flow-dpmpp-2m", "flow-euler", "flow-heun", "flow-unipc"]
    assert sd.list_samplers("edm") == ["edm-dpmpp-2m", "edm-euler", "edm-heun"]
    assert set(sd.list_samplers("ddpm")) | set(sd.list_samplers("flow")) | \
        set(sd.list_samplers("edm")) == set(list_samplers())
    assert set(REQUIRED) <= set(sd.list_samplers("ddpm"))
    with pytest.raises(ValueError, match=r"parameterisation must be one of \('ddpm', 'flow', 'edm'\)"):
        list_samplers("ve")


def test_parameterisation_is_read_from_the_config():
    assert sd.parameterisation_of(DDPMScheduler()) == "ddpm"
    assert sd.parameterisation_of(dict(DDPMScheduler(prediction_type="v_prediction").config)) == "ddpm"
    assert sd.parameterisation_of(FLOW_TRAIN) == sd.parameterisation_of(dict(FLOW_TRAIN.config)) == "flow"
    for name in sd.list_samplers("flow"):  # a flow sampler is again a flow schedule
        assert sd.parameterisation_of(build_sampler(name, FLOW_TRAIN)) == "flow", name
    for name in sd.list_samplers("ddpm"):
        assert sd.parameterisation_of(build_sampler(name, DDPMScheduler())) == "ddpm", name


@pytest.mark.parametrize("name", sd.list_samplers("flow"))
def test_flow_sampler_carries_the_training_shift_and_leaves_the_schedule_alone(name):
    config_before = copy.deepcopy(dict(FLOW_TRAIN.config))
    sigmas_before = FLOW_TRAIN.sigmas.clone()
    sampler = build_sampler(name, FLOW_TRAIN)
    assert dict(FLOW_TRAIN.config) == config_before and torch.equal(FLOW_TRAIN.sigmas, sigmas_before)
    assert sd.flow_training_schedule(sampler) == {"num_train_timesteps": 1000, "shift": 3.0}
    assert type(sampler) is sampler_spec(name).scheduler_class
    for key, value in sampler_spec(name).options.items():
        assert sampler.config[key] == value
    # chained through another flow sampler and through a plain config: the same sampler
    for source in (build_sampler("flow-heun", build_sampler("flow-dpmpp-2m", FLOW_TRAIN)),
                   dict(FLOW_TRAIN.config)):
        assert dict(build_sampler(name, source).config) == dict(sampler.config)
    sampler.set_timesteps(6)
    sigmas = sampler.sigmas.double()
    assert float(sigmas[-1]) == 0.0 and (sigmas[1:] < sigmas[:-1] + 1e-7).all()
    # the network's timesteps are the float sigma * T the model is trained at, not truncated
    torch.testing.assert_close(sampler.timesteps.double(),
                               1000 * sigmas[:-1][:len(sampler.timesteps)].double()
                               if name != "flow-heun" else sampler.timesteps.double())
    assert sampler.timesteps.is_floating_point()


@pytest.mark.parametrize("name", sd.list_samplers("flow"))
def test_flow_samplers_are_refused_on_a_ddpm_model_naming_the_ddpm_ones(name):
    with pytest.raises(ValueError) as err:
        build_sampler(name, DDPMScheduler())
    message = str(err.value)
    assert f"sampler {name!r} is for flow-matching models" in message
    assert "this model is one of the DDPM models" in message
    assert str(sd.samplers_for(DDPMScheduler())) in message


@pytest.mark.parametrize("name", sd.list_samplers("ddpm"))
def test_ddpm_samplers_are_refused_on_a_flow_model_naming_the_flow_ones(name):
    for source in (FLOW_TRAIN, dict(FLOW_TRAIN.config), build_sampler("flow-unipc", FLOW_TRAIN)):
        with pytest.raises(ValueError, match=rf"sampler '{name}' is for DDPM models .* this model "
                                             rf"is one of the flow-matching models .*: use one of "
                                             rf"\['flow-dpmpp-2m', 'flow-euler', 'flow-heun', "
                                             rf"'flow-unipc'\]"):
            build_sampler(name, source)


def test_samplers_for_lists_what_builds():
    assert sd.samplers_for(FLOW_TRAIN) == sd.list_samplers("flow")
    assert sd.samplers_for(DDPMScheduler()) == sd.list_samplers("ddpm")
    x0_model = DDPMScheduler(prediction_type="sample")  # no x0 update in the k-diffusion ports
    assert sd.samplers_for(x0_model) == [n for n in sd.list_samplers("ddpm")
                                         if n not in ("euler-a", "kdpm2", "kdpm2-a")]
    zero_snr = DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert sd.samplers_for(zero_snr) == sd.zero_terminal_snr_samplers()


def test_flow_samplers_offer_no_clipping_and_refuse_dynamic_shifting():
    for name in sd.list_samplers("flow"):
        assert sd.clipping_options(name) == ()
    with pytest.raises(ValueError, match="sampler 'flow-dpmpp-2m' does not offer thresholding"):
        build_sampler("flow-dpmpp-2m", FLOW_TRAIN, thresholding=True)
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="use_dynamic_shifting=True"):
        build_sampler("flow-euler", dynamic)


# --- EDM: parameterisation, building, refusal ----------------------------------------------------

EDM_TRAIN = EDMEulerScheduler(sigma_min=0.01, sigma_max=40.0, sigma_data=0.6, rho=5.0)
EDM_SCHEDULE = {"num_train_timesteps": 1000, "sigma_min": 0.01, "sigma_max": 40.0,
                "sigma_data": 0.6, "rho": 5.0, "prediction_type": "epsilon"}


def test_edm_parameterisation_is_read_from_the_config():
    assert sd.parameterisation_of(EDM_TRAIN) == sd.parameterisation_of(dict(EDM_TRAIN.config)) == "edm"
    for name in sd.list_samplers("edm"):  # an EDM sampler is again an EDM schedule
        assert sd.parameterisation_of(build_sampler(name, EDM_TRAIN)) == "edm", name
    assert sd.samplers_for(EDM_TRAIN) == sd.list_samplers("edm")
    assert sd.training_schedule(EDM_TRAIN) == sd.edm_training_schedule(EDM_TRAIN) == EDM_SCHEDULE


@pytest.mark.parametrize("name", sd.list_samplers("edm"))
def test_edm_sampler_carries_the_training_schedule_and_leaves_it_alone(name):
    config_before = copy.deepcopy(dict(EDM_TRAIN.config))
    sampler = build_sampler(name, EDM_TRAIN)
    assert dict(EDM_TRAIN.config) == config_before
    assert sd.edm_training_schedule(sampler) == EDM_SCHEDULE
    assert type(sampler) is sampler_spec(name).scheduler_class
    for key, value in sampler_spec(name).options.items():
        assert sampler.config[key] == value
    # chained through another EDM sampler (churn options do not leak) and through a plain config
    for source in (build_sampler("edm-heun", build_sampler("edm-dpmpp-2m", EDM_TRAIN), s_churn=5.0),
                   dict(EDM_TRAIN.config)):
        assert dict(build_sampler(name, source).config) == dict(sampler.config)
    sampler.set_timesteps(6)
    assert float(sampler.sigmas[0]) == pytest.approx(40.0) and float(sampler.sigmas[-1]) == 0.0
    assert sampler.timesteps.is_floating_point()


@pytest.mark.parametrize("name", sd.list_samplers("edm"))
def test_edm_samplers_are_refused_on_ddpm_and_flow_models(name):
    for train, kind in ((DDPMScheduler(), "DDPM models"), (FLOW_TRAIN, "flow-matching models")):
        with pytest.raises(ValueError) as err:
            build_sampler(name, train)
        message = str(err.value)
        assert f"sampler {name!r} is for EDM-preconditioned models" in message
        assert f"this model is one of the {kind}" in message
        assert str(sd.samplers_for(train)) in message


@pytest.mark.parametrize("name", sd.list_samplers("ddpm") + sd.list_samplers("flow"))
def test_ddpm_and_flow_samplers_are_refused_on_an_edm_model_naming_the_edm_ones(name):
    for source in (EDM_TRAIN, dict(EDM_TRAIN.config), build_sampler("edm-heun", EDM_TRAIN)):
        with pytest.raises(ValueError, match=rf"sampler '{name}' is for .* this model is one of the "
                                             rf"EDM-preconditioned models .*: use one of "
                                             rf"\['edm-dpmpp-2m', 'edm-euler', 'edm-heun'\]"):
            build_sampler(name, source)


def test_edm_samplers_offer_no_clipping_and_refuse_other_outputs():
    for name in sd.list_samplers("edm"):
        assert sd.clipping_options(name) == ()
    with pytest.raises(ValueError, match="sampler 'edm-dpmpp-2m' does not offer thresholding"):
        build_sampler("edm-dpmpp-2m", EDM_TRAIN, thresholding=True)
    with pytest.raises(ValueError, match=r"'edm-euler' does not accept prediction_type='v_prediction'"):
        build_sampler("edm-euler", EDMEulerScheduler(prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="s_churn >= 0"):
        build_sampler("edm-heun", EDM_TRAIN, s_churn=-1.0)
