"""Oracle tests for samplers/diffusion.py: with a perfect denoiser every sampler lands on x0.

The oracle knows the one clean image ``x0``. For that point-mass data distribution the
probability-flow ODE is ``x_sigma = x0 + sigma * eps`` with ``eps`` constant along the path
(Karras et al. 2022, Sec. 2, with the ideal denoiser ``D(x; sigma) = x0``), and every update rule
here is exact on it: each step recovers ``x0`` from the oracle's output and moves along that
line. So whatever the number of steps, a consistent sampler ends on ``x0`` up to float rounding -
unless its algebra disagrees with itself (input scaling vs. update, a stride that misses the
schedule) or its last step stops short of sigma = 0. Stochastic samplers land there too: their x0
estimate is exact at every step and the last step adds no noise.

With x0 clipping or thresholding on (every sampler that offers it, ``clipping_options``), the
oracle still lands on data inside the clip range; for data outside it, the sampler must walk the
path of an oracle for the *clipped* data - each step uses the clipped x0 and the epsilon
recomputed from it, never the network's epsilon beside a clipped x0.

Also here: the timestep layout of every sampler, ``nfe_for_steps`` / ``steps_for_nfe``, and the
NFE that ``DiffusionImagePipeline`` reports.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Optional

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, EDMEulerScheduler,
                       FlowMatchEulerDiscreteScheduler, PNDMScheduler)

from conftest import forward_spy, generators, make_pipe
from samplers import (
    PREDICTION_TYPES,
    build_sampler,
    clipping_options,
    list_samplers,
    nfe_for_steps,
    sampler_spec,
    steps_for_nfe,
    training_schedule,
)
from samplers.diffusion import (X0_CLIPPING_OPTIONS, ZERO_SNR_PREDICTION_TYPES,
                                zero_terminal_snr_samplers)

#: the samplers of DDPM-parameterised models (the flow samplers have their own section below)
DDPM_SAMPLERS = list_samplers("ddpm")
T = 1000
TRAIN = DDPMScheduler(num_train_timesteps=T)  # linear betas 1e-4 .. 0.02
X0 = 2 * torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1
NOISE = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ORACLE_STEPS = range(1, 51)
ATOL = 1e-4        # final sample vs x0
PATH_ATOL = 1e-3   # network inputs vs the exact path (deterministic samplers)

SUPPORTED = [(name, p) for name in DDPM_SAMPLERS for p in sampler_spec(name).prediction_types]
UNSUPPORTED = [(name, p) for name in DDPM_SAMPLERS for p in PREDICTION_TYPES
               if p not in sampler_spec(name).prediction_types]


# --- the oracle --------------------------------------------------------------------------------

def alpha_bar_seen(scheduler, timestep, sample: torch.Tensor,
                   model_input: torch.Tensor) -> torch.Tensor:
    """``abar`` of the noise level at which the scheduler makes the network call at ``timestep``.

    Read from the scheduler's own state, not from ``timestep`` (fractional for the kdpm2
    midpoints, rounded for Karras sigmas):

    * samplers that keep ``x = x0 + sigma * eps`` (the k-diffusion ports) feed the network
      ``c_in * x`` with ``c_in = 1 / sqrt(sigma^2 + 1) = sqrt(abar)`` (Karras et al. 2022,
      Table 1, VP). Which of their sigmas they used (for kdpm2 and kdpm2-a's second stage a
      midpoint from ``sigmas_interpol``, indexed differently in each) is read off ``c_in``: the
      entry of their sigma tables whose ``c_in`` matches;
    * DPM-Solver, UniPC and DEIS feed ``x_t`` unscaled and step with ``sigmas[step_index]``;
    * DDPM, DDIM and PNDM index ``alphas_cumprod`` by the integer timestep.

    In each case ``abar = 1 / (1 + sigma^2)``, or ``alphas_cumprod[t]``.
    """
    if not torch.equal(model_input, sample):
        c_in = (model_input * sample).sum() / (sample * sample).sum()  # least-squares ratio
        tables = [scheduler.sigmas, getattr(scheduler, "sigmas_interpol", scheduler.sigmas)]
        sigmas = torch.cat(tables).double()
        sigmas = sigmas[sigmas.isfinite()]  # kdpm2: sigmas_interpol[0] is NaN (lerp to log 0)
        sigma = sigmas[(1 / (1 + sigmas ** 2).sqrt() - c_in).abs().argmin()]
    elif hasattr(scheduler, "sigmas"):
        index = scheduler.step_index
        index = scheduler.index_for_timestep(timestep) if index is None else index
        sigma = scheduler.sigmas[index].double()
    else:
        return scheduler.alphas_cumprod[int(timestep)].double()
    return 1 / (1 + sigma ** 2)


def oracle(scheduler, timestep, sample: torch.Tensor, model_input: torch.Tensor,
           x0: torch.Tensor = X0):
    """``(target, eps, abar)``: the exact network output for the scheduler's ``prediction_type``
    at ``x_t = model_input`` for the data point ``x0``, the noise it implies,
    ``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)`` (Ho et al. 2020, eq. 4), and ``abar``;
    ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022). Also checks that a scaled
    network input is ``sqrt(abar) * sample`` to float32 precision, i.e. that the sigma found is
    the one the scheduler scaled by.
    """
    abar = alpha_bar_seen(scheduler, timestep, sample, model_input)
    if not torch.equal(model_input, sample):
        torch.testing.assert_close(model_input, abar.sqrt() * sample, rtol=1e-6, atol=0)
    return (*oracle_output(model_input, abar, x0, scheduler.config.prediction_type), abar)


def oracle_output(x_t: torch.Tensor, abar, x0: torch.Tensor,
                  prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, eps)``: the network output of the oracle for data ``x0`` at ``x_t`` (noise level
    ``abar``) and the noise it implies."""
    eps = (x_t - abar ** 0.5 * x0) / (1 - abar) ** 0.5
    target = {"epsilon": eps, "v_prediction": abar ** 0.5 * eps - (1 - abar) ** 0.5 * x0,
              "sample": x0}[prediction_type]
    return target, eps


def step_kwargs(scheduler, seed: int = 2) -> dict:
    """A seeded generator for samplers whose ``step`` draws noise (and accepts one)."""
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    return {"generator": torch.Generator().manual_seed(seed)} if takes_generator else {}


@functools.lru_cache(maxsize=None)
def _prototype(name: str, prediction_type: str, options: tuple = (), train=TRAIN):
    return build_sampler(name, train, prediction_type=prediction_type, **dict(options))


def fresh_sampler(name: str, prediction_type: str = "epsilon", train=TRAIN, **options):
    """``build_sampler(name, train, prediction_type=..., **options)``, copied from a cached
    prototype: the k-diffusion ports run ``set_timesteps(1000)`` in ``__init__`` (0.1 s for
    kdpm2)."""
    return copy.deepcopy(_prototype(name, prediction_type, tuple(sorted(options.items())), train))


def sample_with_oracle(name: str, num_inference_steps: int, prediction_type: str,
                       x0: torch.Tensor = X0, steps: Optional[list] = None,
                       float64_sigmas: bool = False, train=TRAIN, **options):
    """Run sampler ``name`` (built with ``options``) from ``x_T = init_noise_sigma * NOISE`` with
    the oracle for data ``x0`` as network; append every ``prev_sample`` to ``steps`` if given;
    with ``float64_sigmas``, the sigma-based samplers step with float64 sigmas too; ``train``:
    the training scheduler.

    Returns ``(x, eps_T, path_error)``: the final sample, the oracle's noise at the first call,
    and how far the network inputs strayed from the exact path
    ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps_T`` (max abs; stochastic samplers re-noise, so for
    them it is the distance from the first call's path).
    """
    scheduler = fresh_sampler(name, prediction_type, train, **options)
    # The schedulers keep alphas_cumprod in float32. DDPM, DDIM and PNDM do their step algebra in
    # it, and at t = 999 (abar = 4e-5) PNDM's first step multiplies that rounding by
    # sqrt(abar_t' / abar_999) ~ 45 (3e-4 at n = 2). float64 separates the algorithm from float32;
    # the sigma-based samplers keep float32 sigmas regardless (their error stays < 3e-5).
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.set_timesteps(num_inference_steps)
    if float64_sigmas and hasattr(scheduler, "sigmas"):
        scheduler.sigmas = scheduler.sigmas.double()
    x = NOISE * scheduler.init_noise_sigma
    kwargs, path_error, eps_first = step_kwargs(scheduler), 0.0, None
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        target, eps, abar = oracle(scheduler, t, x, model_input, x0)
        eps_first = eps if eps_first is None else eps_first
        path_error = max(path_error, float(((1 - abar).sqrt() * (eps - eps_first)).abs().max()))
        x = scheduler.step(target, t, x, **kwargs).prev_sample
        if steps is not None:
            steps.append(x)
    return x, eps_first, path_error


def check_lands_on_x0(name: str, prediction_type: str, step_counts, train=TRAIN,
                      **options) -> None:
    """The oracle assertions of the test below, for sampler ``name`` built with ``options``."""
    spec = sampler_spec(name)
    abar_end = (torch.tensor(1.0, dtype=torch.float64) if spec.final_sigmas_type == "zero"
                else TRAIN.alphas_cumprod[0].double())
    errors, gaps, paths = {}, {}, {}
    for n in step_counts:
        x, eps_T, paths[n] = sample_with_oracle(name, n, prediction_type, train=train, **options)
        expected = abar_end.sqrt() * X0 + (1 - abar_end).sqrt() * eps_T
        errors[n] = float((x - expected).abs().max())
        gaps[n] = float((x - X0).abs().max())
    label = f"{name} ({prediction_type}{''.join(f', {k}={v}' for k, v in options.items())})"
    bad = {n: f"{e:.1e}" for n, e in errors.items() if not e < ATOL}
    assert not bad, f"{label} misses the target at steps {bad}"
    if spec.final_sigmas_type == "sigma_min":  # the stated shortfall is real, not rounding
        assert min(gaps.values()) > 1e-3
    if spec.stochastic:
        assert max(paths.values()) > PATH_ATOL
    else:
        strays = {n: f"{e:.1e}" for n, e in paths.items() if not e < PATH_ATOL}
        assert not strays, f"{label} leaves the ODE path at steps {strays}"


@pytest.mark.parametrize("name,prediction_type", SUPPORTED)
def test_perfect_denoiser_lands_on_x0_for_every_step_count(name, prediction_type):
    """Steps 1..50: the output is x0 (max abs error < 1e-4) - or, for a sampler whose last sigma
    is sigma_min (DEIS), the exact ODE point there, ``sqrt(abar_0) x0 + sqrt(1 - abar_0) eps_T``.

    Deterministic samplers must also call the network only on the exact path (within 1e-3: float32
    sigmas leave <= 1.4e-4, Heun at 2 steps; stepping to the wrong timestep, as diffusers' DDIM does
    on the trailing schedule, strays 5e-3 at 3 steps). That catches errors the last step hides: a
    final first-order step to sigma = 0 returns the x0 prediction of the last call, exact however
    the sample got there (diffusers' DDIM still ends on x0 at 3 steps). Stochastic samplers leave
    the path by design (they re-noise)."""
    check_lands_on_x0(name, prediction_type, ORACLE_STEPS)


def test_oracle_covers_every_sampler_and_the_stated_exceptions():
    """Guard: every sampler runs the oracle with epsilon and v; only "sample" is ever refused,
    and "zero" is the final sigma of all but DEIS."""
    assert {name for name, _ in SUPPORTED} == set(DDPM_SAMPLERS)
    assert all(p == "sample" for _, p in UNSUPPORTED)
    assert {name for name, _ in UNSUPPORTED} == {"euler-a", "kdpm2", "kdpm2-a"}
    assert [n for n in DDPM_SAMPLERS if sampler_spec(n).final_sigmas_type != "zero"] == ["deis"]
    assert all(sampler_spec(n).final_sigmas_type in ("zero", "sigma_min") for n in DDPM_SAMPLERS)


@pytest.mark.parametrize("name,prediction_type", UNSUPPORTED)
def test_unsupported_prediction_type_is_refused_up_front(name, prediction_type):
    """build_sampler raises ValueError naming what is accepted - because diffusers' own update
    has no branch for it (stepping the bare class fails), which this also checks."""
    with pytest.raises(ValueError, match=rf"{name}.*{prediction_type}.*accepts"):
        build_sampler(name, TRAIN, prediction_type=prediction_type)
    spec = sampler_spec(name)
    bare = spec.scheduler_class(**{**training_schedule(TRAIN), "timestep_spacing": "trailing",
                                   **spec.options, "prediction_type": prediction_type})
    bare.set_timesteps(2)
    x = NOISE * bare.init_noise_sigma
    t = bare.timesteps[0]
    with pytest.raises((NotImplementedError, ValueError)):
        bare.step(bare.scale_model_input(x, t), t, x, **step_kwargs(bare))


@pytest.mark.parametrize("n", [1, 4, 10, 50])
@pytest.mark.parametrize("name,parent,options", [
    ("ddim", DDIMScheduler, {"eta": 0.0}), ("ddim", DDIMScheduler, {"eta": 1.0}),
    ("pndm", PNDMScheduler, {})])
def test_scheduled_subclasses_equal_diffusers_where_its_stride_is_right(name, parent, options, n):
    """Where ``T % n == 0`` diffusers' ``t - T // n`` is the next scheduled timestep, and the
    registry's DDIM and PNDM subclasses give bit-identical samples (PNDM: epsilon-prediction)."""
    config = dict(fresh_sampler(name).config)
    ours, theirs = fresh_sampler(name), parent.from_config(config)
    samples = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(n)
        x = NOISE.float().clone()
        kwargs = {**options, **step_kwargs(scheduler)} if options else {}
        for t in scheduler.timesteps:
            x = scheduler.step(0.5 * x + 1e-3 * t, t, x, **kwargs).prev_sample
        samples.append(x)
    assert type(ours) is not type(theirs)
    assert torch.equal(*samples)


# --- x0 clipping and thresholding ---------------------------------------------------------------

#: The options that switch each mode on; "off" switches every offered one off. Thresholding with
#: sample_max_value 1.5 rescales x0 by its 0.995 quantile s in [1, 1.5] (clipping to [-1, 1] where
#: s = 1), so on data beyond [-1, 1] it differs from clip_sample.
CLIP_MODES = {"clip_sample": {"clip_sample": True},
              "thresholding": {"thresholding": True, "sample_max_value": 1.5}}
OFFERED = [(name, mode) for name in DDPM_SAMPLERS for mode in clipping_options(name)]
X0_OUTSIDE = 1.5 * X0   # in [-1.5, 1.5]: 34 of 128 values beyond [-1, 1]
CONSISTENT_ATOL = 1e-5  # every step of the clipping sampler vs the oracle for the clipped data
#: (sampler, mode, prediction type) for every sampler that offers clipping: its modes and "off".
CLIPPING_RUNS = [(name, mode, p) for name in DDPM_SAMPLERS if clipping_options(name)
                 for mode in ("off", *clipping_options(name))
                 for p in sampler_spec(name).prediction_types]


def clip_options(name: str, mode: str) -> dict:
    """Build options for ``mode`` ("off" or a key of CLIP_MODES): every switch the sampler offers
    explicitly off, but the mode's."""
    return {**{switch: False for switch in clipping_options(name)}, **CLIP_MODES.get(mode, {})}


def clipped(x0: torch.Tensor, mode: str) -> torch.Tensor:
    """x0 as the scheduler clips it (by hand): ``clamp(x0, -1, 1)``, or dynamic thresholding
    ``clamp(x0, -s, s) / s`` with ``s`` the 0.995 quantile of ``|x0|`` per image clamped to
    ``[1, 1.5]`` (Saharia et al. 2022, Sec. 2.3)."""
    if mode == "clip_sample":
        return x0.clamp(-1, 1)
    s = torch.quantile(x0.abs().flatten(1), 0.995, dim=1).clamp(1, 1.5)[:, None, None, None]
    return x0.clamp(-s, s) / s


def test_clipping_is_offered_where_diffusers_has_it():
    """The table of docs/samplers.md: which sampler offers what (from its scheduler class), and
    every other sampler offers neither. The data above does reach beyond the clip range."""
    offered = {name: clipping_options(name) for name in DDPM_SAMPLERS if clipping_options(name)}
    assert offered == {"ddim": ("clip_sample", "thresholding"),
                       "ddpm": ("clip_sample", "thresholding"), "heun": ("clip_sample",),
                       **{name: ("thresholding",) for name in
                          ["deis", "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-sde", "unipc"]}}
    assert int((X0_OUTSIDE.abs() > 1).sum()) == 34 and float(X0.abs().max()) < 1
    gap = clipped(X0_OUTSIDE, "thresholding") - clipped(X0_OUTSIDE, "clip_sample")
    assert float(gap.abs().max()) > 0.3  # the two modes are different tests
    torch.testing.assert_close(clipped(X0_OUTSIDE, "thresholding"),
                               build_sampler("ddim", TRAIN, **clip_options("ddim", "thresholding"))
                               ._threshold_sample(X0_OUTSIDE), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,mode,prediction_type", CLIPPING_RUNS)
def test_clipping_keeps_the_oracle_on_x0_inside_the_clip_range(name, mode, prediction_type):
    """Data in [-1, 1]: clipping and thresholding must not change the answer, so every sampler
    that offers them still ends on x0 (1e-4) and stays on the ODE path, at 1..50 steps."""
    check_lands_on_x0(name, prediction_type, (1, 2, 3, 7, 20, 50), **clip_options(name, mode))


def deviation(steps: list, reference: list) -> float:
    """Max abs difference between two runs' samples after every step."""
    assert len(steps) == len(reference)
    return max(float((a - b).abs().max()) for a, b in zip(steps, reference))


@pytest.mark.parametrize("n", [1, 2, 10, 25])
@pytest.mark.parametrize("name,mode", OFFERED)
def test_clipping_steps_as_if_the_network_had_predicted_the_clipped_x0(name, mode, n):
    """Data partly outside [-1, 1]. A consistent step uses the clipped x0 and the epsilon
    recomputed from it, ``(x_t - sqrt(abar) clip(x0)) / sqrt(1 - abar)``: the sampler with
    clipping on, fed the oracle for x0, must then take exactly the steps that the sampler with
    clipping off takes when fed the oracle for clip(x0) (same noise for the stochastic ones).
    All in float64 (sigmas too: float32 sigmas alone leave up to 1.3e-4, heun at 2 steps; float64
    leaves < 1e-11). That it is not vacuous: without clipping the run strays far from those steps.
    """
    ours, reference, unclipped = [], [], []
    run = functools.partial(sample_with_oracle, name, n, "epsilon", float64_sigmas=True)
    run(x0=X0_OUTSIDE, steps=ours, **clip_options(name, mode))
    run(x0=clipped(X0_OUTSIDE, mode), steps=reference, **clip_options(name, "off"))
    run(x0=X0_OUTSIDE, steps=unclipped, **clip_options(name, "off"))
    assert deviation(ours, reference) < CONSISTENT_ATOL
    assert deviation(unclipped, reference) > 0.1


def ddim_eq12(x_t, x0, eps, abar, abar_prev, eta, z):
    """DDIM eq. 12 with eq. 16's ``sigma_t(eta)``, by hand (Song et al. 2021)."""
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
    return abar_prev ** 0.5 * x0 + (1 - abar_prev - sigma ** 2) ** 0.5 * eps + sigma * z


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("mode", ["clip_sample", "thresholding"])
def test_ddim_clipped_step_is_eq12_with_the_epsilon_of_the_clipped_x0(mode, prediction_type, eta):
    """Every step of 1, 7 and 20-step schedules from ``x_t`` on the exact path of data partly
    outside [-1, 1]: ``step`` equals eq. 12 by hand with x0 = clip(x0) and its epsilon (1e-5).
    The old update - diffusers' ``DDIMScheduler`` (same stride at 20 steps) with its default
    ``use_clipped_model_output=False``, i.e. clipped x0 beside the network's epsilon - is 0.39 off;
    with ``use_clipped_model_output=True`` diffusers is bit-identical to the registry's DDIM."""
    z = torch.randn(X0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x0_clipped = clipped(X0_OUTSIDE, mode)
    ours_error, old_error, parent_error = 0.0, 0.0, 0.0
    for n in (1, 7, 20):
        ours = fresh_sampler("ddim", prediction_type, **clip_options("ddim", mode))
        parent = DDIMScheduler.from_config(ours.config)
        for scheduler in (ours, parent):
            scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
            scheduler.set_timesteps(n)
        schedule = [int(t) for t in ours.timesteps]
        for t, t_prev in zip(schedule, schedule[1:] + [-1]):
            abar = ours.alphas_cumprod[t]
            abar_prev = ours.alphas_cumprod[t_prev] if t_prev >= 0 else ours.final_alpha_cumprod
            x_t = abar.sqrt() * X0_OUTSIDE + (1 - abar).sqrt() * NOISE
            target, _ = oracle_output(x_t, abar, X0_OUTSIDE, prediction_type)
            _, eps_clipped = oracle_output(x_t, abar, x0_clipped, prediction_type)
            expected = ddim_eq12(x_t, x0_clipped, eps_clipped, abar, abar_prev, eta, z)
            old = ddim_eq12(x_t, x0_clipped, NOISE, abar, abar_prev, eta, z)
            step = ours.step(target, t, x_t, eta=eta, variance_noise=z)
            ours_error = max(ours_error, float((step.prev_sample - expected).abs().max()))
            torch.testing.assert_close(step.pred_original_sample, x0_clipped, atol=1e-9, rtol=0)
            old_error = max(old_error, float((old - expected).abs().max()))
            if n == 20:  # T % n == 0: diffusers' stride t - T // n is the schedule's
                kwargs = {"eta": eta, "variance_noise": z}
                assert torch.equal(parent.step(target, t, x_t, use_clipped_model_output=True,
                                               **kwargs).prev_sample, step.prev_sample)
                parent_old = parent.step(target, t, x_t, **kwargs).prev_sample
                parent_error = max(parent_error, float((parent_old - old).abs().max()))
    assert ours_error < CONSISTENT_ATOL
    assert old_error > 0.2 and parent_error < 1e-9  # the old way is diffusers' default, and fails


@pytest.mark.parametrize("mode", ["clip_sample", "thresholding"])
def test_ddim_refuses_the_unclipped_epsilon_beside_a_clipped_x0(mode):
    """``use_clipped_model_output=False`` asks for the inconsistent step: refused, not ignored.
    Without clipping it means what it does in diffusers (nothing to recompute)."""
    sampler = fresh_sampler("ddim", **clip_options("ddim", mode))
    sampler.set_timesteps(4)
    t = sampler.timesteps[0]
    with pytest.raises(ValueError, match="use_clipped_model_output=False.*clipped x0"):
        sampler.step(NOISE, t, NOISE, use_clipped_model_output=False)
    plain = fresh_sampler("ddim")
    plain.set_timesteps(4)
    assert torch.equal(plain.step(NOISE, t, NOISE, use_clipped_model_output=False).prev_sample,
                       plain.step(NOISE, t, NOISE).prev_sample)


NOT_OFFERED = [(name, option, switch or option) for name in DDPM_SAMPLERS
               for option, switch in X0_CLIPPING_OPTIONS.items()
               if (switch or option) not in clipping_options(name)]


@pytest.mark.parametrize("name,option,switch", NOT_OFFERED)
def test_clip_options_a_sampler_lacks_are_refused_by_name(name, option, switch):
    """A sampler whose scheduler has no such option raises ValueError naming it and the samplers
    that offer it (diffusers' own constructor would raise a bare TypeError)."""
    offered = [n for n in DDPM_SAMPLERS if switch in clipping_options(n)]
    message = f"sampler '{name}' does not offer {option} (.*); {switch} is offered by {offered}"
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_sampler(name, TRAIN, **{option: True})


@pytest.mark.parametrize("name,options,message", [
    ("ddim", {"clip_sample_range": 2.0}, r"clip_sample_range=2.0 has no effect unless clip_sample"),
    ("heun", {"clip_sample_range": 2.0}, r"no effect unless clip_sample=True"),
    ("dpmpp-2m", {"sample_max_value": 2.0}, r"no effect unless thresholding=True"),
    ("ddpm", {"dynamic_thresholding_ratio": 0.9}, r"no effect unless thresholding=True"),
    ("ddim", {"thresholding": True, "clip_sample": True}, r"thresholding replaces clipping"),
    ("ddpm", {"thresholding": True, "clip_sample_range": 2.0}, r"thresholding replaces clipping"),
    ("unipc", {"thresholding": True, "predict_x0": False}, r"only with predict_x0=True"),
])
def test_clip_options_without_effect_are_refused(name, options, message):
    """Options diffusers would accept and then ignore: a range or ratio without its switch,
    clipping under thresholding (diffusers thresholds and skips the clip), UniPC's thresholding
    of a noise-prediction update (diffusers skips it)."""
    with pytest.raises(ValueError, match=message):
        build_sampler(name, TRAIN, **options)


def test_clip_options_that_act_are_accepted_and_defaults_unchanged():
    """What the user asks for reaches the config; without asking, nothing clips but DDPM
    (its registry default, consistent: the posterior mean of Ho et al. 2020, eq. 7)."""
    assert build_sampler("ddpm", TRAIN, clip_sample_range=2.0).config.clip_sample_range == 2.0
    assert build_sampler("heun", TRAIN, clip_sample=True).config.clip_sample is True
    unipc = build_sampler("unipc", TRAIN, thresholding=True, sample_max_value=2.0)
    assert unipc.config.thresholding and unipc.config.sample_max_value == 2.0
    for name in DDPM_SAMPLERS:
        config = build_sampler(name, TRAIN).config
        assert not config.get("thresholding", False)
        assert config.get("clip_sample", False) == (name == "ddpm")


# --- zero terminal SNR -------------------------------------------------------------------------

#: Linear betas rescaled to zero terminal SNR (Lin et al. 2024, Alg. 1): alphas_cumprod[-1] = 0.
TRAIN_ZERO_SNR = DDPMScheduler(num_train_timesteps=T, rescale_betas_zero_snr=True,
                               prediction_type="v_prediction")
ZERO_SNR_RUNS = [(name, p) for name in zero_terminal_snr_samplers()
                 for p in ZERO_SNR_PREDICTION_TYPES if p in sampler_spec(name).prediction_types]
ZERO_SNR_REFUSED = [name for name in DDPM_SAMPLERS if name not in zero_terminal_snr_samplers()]


@pytest.mark.parametrize("name,prediction_type", ZERO_SNR_RUNS)
def test_zero_snr_perfect_denoiser_lands_on_x0(name, prediction_type):
    """With zero terminal SNR the first call is at SNR 0 (DDIM, DDPM: abar = 0 exactly; the
    sigma-based samplers: diffusers' stand-in abar = 2**-24, sigma = 4096): every sampler that
    accepts the schedule still ends on x0 and, if deterministic, stays on the ODE path."""
    check_lands_on_x0(name, prediction_type, [1, 2, 3, 7, 10, 25, 50], train=TRAIN_ZERO_SNR)


def test_zero_snr_samplers_are_the_stated_ones():
    """docs/samplers.md: which samplers run a zero-terminal-SNR schedule, and the oracle really
    starts each of them at SNR 0 (abar ~ 0 at the first call)."""
    assert zero_terminal_snr_samplers() == ["ddim", "ddpm", "dpmpp-2m", "dpmpp-sde", "euler",
                                            "euler-a", "unipc"]
    assert float(TRAIN_ZERO_SNR.alphas_cumprod[-1]) == 0.0
    for name in zero_terminal_snr_samplers():
        scheduler = fresh_sampler(name, "v_prediction", TRAIN_ZERO_SNR)
        scheduler.set_timesteps(5)
        x = NOISE * scheduler.init_noise_sigma
        t = scheduler.timesteps[0]
        abar = alpha_bar_seen(scheduler, t, x, scheduler.scale_model_input(x, t))
        assert int(t) == T - 1 and float(abar) <= 2 ** -24, name


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # lms on sigma = inf
@pytest.mark.parametrize("name", ZERO_SNR_REFUSED)
def test_zero_snr_is_refused_by_name_where_it_cannot_work(name):
    """build_sampler refuses the others by name, listing those that accept it - because it would
    not work: a class without the option returns NaN on the rescaled betas (sigma_T = inf, or
    division by sqrt(abar_T) = 0), and Karras sigmas start at t = 995, not T - 1."""
    with pytest.raises(ValueError, match=rf"{name}.*zero-terminal-SNR.*use one of .*'ddim'"):
        build_sampler(name, TRAIN_ZERO_SNR)
    spec = sampler_spec(name)
    kwargs = {**training_schedule(TRAIN_ZERO_SNR), "timestep_spacing": "trailing", **spec.options}
    if "rescale_betas_zero_snr" in inspect.signature(spec.scheduler_class.__init__).parameters:
        bare = spec.scheduler_class(**kwargs)  # takes the option: Karras sigmas
        bare.set_timesteps(10)
        assert int(bare.timesteps[0]) < T - 1
        return
    kwargs.pop("rescale_betas_zero_snr")
    bare = spec.scheduler_class(**kwargs)
    bare.set_timesteps(10)
    x = NOISE.float() * bare.init_noise_sigma
    kw = step_kwargs(bare)
    for t in bare.timesteps:
        x = bare.step(torch.zeros_like(x), t, bare.scale_model_input(x, t), **kw).prev_sample
    assert not torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["euler", "dpmpp-2m", "unipc"])
def test_zero_snr_refuses_karras_sigmas_on_any_sampler(name):
    with pytest.raises(ValueError, match=rf"{name}.*use_karras_sigmas.*t = 995"):
        build_sampler(name, TRAIN_ZERO_SNR, use_karras_sigmas=True)


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp-2m"])
def test_zero_snr_refuses_an_epsilon_network(name):
    """At SNR 0, x_T = eps: an epsilon network cannot give x0 (Lin et al. 2024, Sec. 3.2)."""
    with pytest.raises(ValueError, match=r"rescale_betas_zero_snr.*prediction_type.*'epsilon'"):
        build_sampler(name, TRAIN_ZERO_SNR, prediction_type="epsilon")


# --- timestep layouts --------------------------------------------------------------------------

LAYOUT_STEPS = [1, 3, 7, 20, 50, 53, 1000]
#: Sampler -> how its ``timesteps`` relate to the trailing n-step schedule ``t_0 > ... > t_{n-1}``.
LAYOUTS = {
    **{name: "trailing" for name in ["ddim", "ddpm", "deis", "dpmpp-2m", "dpmpp-sde", "euler",
                                     "euler-a", "lms", "unipc"]},
    "dpmpp-2m-karras": "karras",   # Karras sigmas rounded to timesteps
    "heun": "heun",                # t_0, t_1, t_1, ..., t_{n-1}, t_{n-1}: 2n - 1
    "kdpm2": "midpoint",           # t_0, m_1, t_1, ..., m_{n-1}, t_{n-1}: 2n - 1
    "kdpm2-a": "midpoint",
    "pndm": "pndm",                # t_0, t_1, t_1, t_2, ..., t_{n-1}: n + 1 (n >= 2)
}
EXPECTED_NFE = {"trailing": lambda n: n, "karras": lambda n: n, "heun": lambda n: 2 * n - 1,
                "midpoint": lambda n: 2 * n - 1, "pndm": lambda n: n + 1 if n > 1 else 1}
KARRAS_REPEATS_FROM = 79  # first n whose rounded Karras timesteps repeat (linear schedule)


def trailing(n: int) -> torch.Tensor:
    """The trailing schedule ``round(T - k T / n) - 1``, k = 0..n-1 (Lin et al. 2024, Table 2)."""
    return torch.from_numpy(np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)


def timesteps_of(name: str, n: int) -> torch.Tensor:
    sampler = fresh_sampler(name)
    sampler.set_timesteps(n)
    return sampler.timesteps


def names_with(layout: str) -> list[str]:
    return [name for name in DDPM_SAMPLERS if LAYOUTS.get(name) == layout]


def test_every_sampler_has_a_known_layout():
    assert set(LAYOUTS) == set(DDPM_SAMPLERS)
    assert set(LAYOUTS) | set(FLOW_LAYOUTS) | set(EDM_LAYOUTS) == set(list_samplers())


@pytest.mark.parametrize("n", LAYOUT_STEPS)
@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_timesteps_are_in_range_and_cost_what_the_layout_says(name, n):
    timesteps = timesteps_of(name, n)
    assert ((timesteps >= 0) & (timesteps < T)).all()
    assert int(timesteps[0]) == T - 1  # trailing spacing starts from pure noise
    assert len(timesteps) == EXPECTED_NFE[LAYOUTS[name]](n) == nfe_for_steps(name, TRAIN, n)


@pytest.mark.parametrize("n", LAYOUT_STEPS)
@pytest.mark.parametrize("name", names_with("trailing"))
def test_single_stage_samplers_use_exactly_the_trailing_schedule(name, n):
    """n strictly decreasing timesteps: the trailing schedule itself."""
    timesteps = timesteps_of(name, n)
    assert torch.equal(timesteps.double(), trailing(n).double())
    assert (timesteps[1:] < timesteps[:-1]).all()


@pytest.mark.parametrize("n", LAYOUT_STEPS)
def test_heun_evaluates_every_step_twice_but_the_last(n):
    expected = torch.cat([trailing(n)[:1], trailing(n)[1:].repeat_interleave(2)])
    assert torch.equal(timesteps_of("heun", n).double(), expected.double())


@pytest.mark.parametrize("n", LAYOUT_STEPS)
@pytest.mark.parametrize("name", names_with("midpoint"))
def test_dpm2_samplers_interleave_midpoints(name, n):
    """Even entries: the trailing schedule. Odd entries: the network call at the log-midpoint
    sigma of each step. For kdpm2-a that midpoint is ``sqrt(sigma * sigma_down)``, which equals
    ``sigma_next`` exactly at eta = 1 (as in k-diffusion's sample_dpm_2_ancestral), so its
    midpoints repeat the next timestep up to float32 rounding."""
    timesteps = timesteps_of(name, n).double()
    assert torch.equal(timesteps[0::2], trailing(n).double())
    mids, before, after = timesteps[1::2], timesteps[0:-1:2], timesteps[2::2]
    if name == "kdpm2-a":
        torch.testing.assert_close(mids, after, atol=1e-3, rtol=0)
    else:
        assert ((after < mids) & (mids < before)).all()


@pytest.mark.parametrize("n", LAYOUT_STEPS)
def test_pndm_evaluates_its_first_step_twice(n):
    """PLMS warm-up (skip_prk_steps): the second call of the first step re-does it with the mean
    of two slopes, so ``t_1`` appears twice; then one call per step."""
    schedule = trailing(n)
    expected = schedule if n == 1 else torch.cat([schedule[:2], schedule[1:]])
    assert torch.equal(timesteps_of("pndm", n), expected)


@pytest.mark.parametrize("n", LAYOUT_STEPS + [KARRAS_REPEATS_FROM - 1, KARRAS_REPEATS_FROM])
def test_karras_timesteps_decrease_and_repeat_only_where_the_grid_is_too_coarse(n):
    """n timesteps from 999 down to 0 (sigma_max to sigma_min); the sigmas the solver uses are
    always strictly decreasing, the rounded timesteps only below KARRAS_REPEATS_FROM steps."""
    sampler = build_sampler("dpmpp-2m-karras", TRAIN)
    sampler.set_timesteps(n)
    timesteps, sigmas = sampler.timesteps, sampler.sigmas[:n]
    assert len(timesteps) == n and (timesteps[1:] <= timesteps[:-1]).all()
    assert (sigmas[1:] < sigmas[:-1]).all()
    assert n == 1 or int(timesteps[-1]) == 0
    assert bool((timesteps[1:] < timesteps[:-1]).all()) == (n < KARRAS_REPEATS_FROM)


# --- NFE helpers -------------------------------------------------------------------------------

def test_nfe_helpers_on_heun_and_pndm():
    assert nfe_for_steps("heun", TRAIN, 10) == 19
    budgets = (1, 2, 3, 18, 19, 20)
    assert [steps_for_nfe("heun", TRAIN, nfe) for nfe in budgets] == [1, 1, 2, 9, 10, 10]
    assert [nfe_for_steps("pndm", TRAIN, n) for n in (1, 2, 10)] == [1, 3, 11]
    assert [steps_for_nfe("pndm", TRAIN, nfe) for nfe in (1, 2, 3, 11)] == [1, 1, 2, 10]
    assert steps_for_nfe("ddim", TRAIN, 20) == 20
    assert steps_for_nfe("ddim", TRAIN, 5000) == T  # capped at num_train_timesteps


@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_steps_for_nfe_is_the_largest_step_count_within_budget(name):
    for nfe in (1, 2, 3, 20):
        n = steps_for_nfe(name, TRAIN.config, nfe)
        assert nfe_for_steps(name, TRAIN.config, n) <= nfe < nfe_for_steps(name, TRAIN, n + 1)


@pytest.mark.parametrize("bad", [0, -1, T + 1, 2.0, True, "3", None])
def test_nfe_for_steps_rejects_bad_step_counts(bad):
    with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, 1000\]"):
        nfe_for_steps("ddim", TRAIN, bad)


@pytest.mark.parametrize("bad", [0, -5, 2.0, False, None])
def test_steps_for_nfe_rejects_bad_budgets(bad):
    with pytest.raises(ValueError, match=r"nfe must be an int >= 1"):
        steps_for_nfe("heun", TRAIN, bad)


def test_nfe_helpers_reject_unknown_samplers():
    for call in (lambda: nfe_for_steps("nope", TRAIN, 3), lambda: steps_for_nfe("nope", TRAIN, 3)):
        with pytest.raises(ValueError, match="unknown sampler 'nope'"):
            call()


# --- NFE the pipeline reports ------------------------------------------------------------------

@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_pipeline_nfe_is_the_counted_forwards_and_nfe_for_steps(tiny_pipe, name, guidance_scale):
    """One U-Net forward per timestep, guided or not: guidance batches the null and conditional
    rows into that forward (2 images -> batch 4) instead of adding calls."""
    steps = 3
    with forward_spy(tiny_pipe.unet) as calls:
        out = tiny_pipe(class_labels=[0, 1], num_inference_steps=steps, sampler=name,
                        guidance_scale=guidance_scale, generator=generators(2), output_type="pt")
    assert out.nfe == len(calls) == nfe_for_steps(name, tiny_pipe.scheduler, steps)
    assert all(call.batch == (4 if guidance_scale != 1.0 else 2) for call in calls)


# --- flow matching (Lipman et al. 2023; Liu et al. 2023) ----------------------------------------
#
# The oracle velocity for the one data point x0: on the straight path
# ``x_sigma = (1 - sigma) x0 + sigma eps`` the velocity ``d x / d sigma = eps - x0`` is constant,
# and from ``x_t`` alone ``v = (x_t - x0) / sigma`` with ``sigma = t / T`` read off the timestep the
# network is given. Every flow update is exact on it, so each sampler must land on x0 (the path
# ends at sigma = 0) and call the network only on the straight line of its first noise.

FLOW_SAMPLERS = list_samplers("flow")
FLOW_SHIFTS = (1.0, 3.0)
#: flow sampler -> its timestep layout on the n-step schedule (the NFE per image)
FLOW_LAYOUTS = {"flow-euler": "trailing", "flow-dpmpp-2m": "trailing", "flow-unipc": "trailing",
                "flow-heun": "heun"}   # sigma_0, sigma_1, sigma_1, ..., sigma_{n-1}, sigma_{n-1}


def flow_train(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)


def flow_oracle(timestep, x_t: torch.Tensor, x0: torch.Tensor = X0):
    """``(v, eps, sigma)``: the exact velocity ``eps - x0`` of the data point ``x0`` at ``x_t`` and
    ``sigma = timestep / T``, with the noise ``eps = (x_t - (1 - sigma) x0) / sigma`` it implies."""
    sigma = torch.as_tensor(timestep, dtype=torch.float64) / T
    eps = (x_t - (1 - sigma) * x0) / sigma
    return eps - x0, eps, sigma


def sample_flow_with_oracle(name: str, n: int, shift: float, x0: torch.Tensor = X0):
    """Run flow sampler ``name`` for ``n`` steps from ``NOISE`` with the oracle velocity as network,
    as the pipeline does (no input scaling, initial sigma 1). Returns ``(x, path_error, calls)``."""
    scheduler = build_sampler(name, flow_train(shift))
    scheduler.set_timesteps(n)
    x, eps_first, path_error = NOISE.clone(), None, 0.0
    for t in scheduler.timesteps:
        v, eps, sigma = flow_oracle(t, x, x0)
        eps_first = eps if eps_first is None else eps_first
        path_error = max(path_error, float((sigma * (eps - eps_first)).abs().max()))
        x = scheduler.step(v, t, x).prev_sample
    return x, path_error, len(scheduler.timesteps)


@pytest.mark.parametrize("shift", FLOW_SHIFTS)
@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_flow_oracle_velocity_lands_on_x0_for_every_step_count(name, shift):
    """Steps 1..50, shift 1 and 3: the output is x0 (max abs error < 1e-4), the network is only
    called on the straight path (1e-3), and the calls made are ``nfe_for_steps``. (The oracle
    reads sigma off the timestep: a sampler evaluating the network at a timestep other than the
    sigma it steps with misses, see test_flow_solvers_need_float_timesteps.)"""
    errors, strays = {}, {}
    for n in ORACLE_STEPS:
        x, path_error, calls = sample_flow_with_oracle(name, n, shift)
        errors[n], strays[n] = float((x - X0).abs().max()), path_error
        assert calls == nfe_for_steps(name, flow_train(shift), n)
    assert not {n: e for n, e in errors.items() if not e < ATOL}, f"{name} misses x0: {errors}"
    assert not {n: e for n, e in strays.items() if not e < PATH_ATOL}, f"{name} strays: {strays}"


@pytest.mark.parametrize("name", ["flow-dpmpp-2m", "flow-unipc"])
def test_flow_solvers_need_float_timesteps(name):
    """Why the registry's flow solvers subclass diffusers': the parent classes truncate the
    network's timestep ``sigma * T`` to an int while stepping with the exact sigma, so the oracle
    (which, like a trained network, reads sigma from the timestep) misses x0 at 50 steps."""
    ours = build_sampler(name, flow_train(1.0))
    parent = type(ours).__mro__[2].from_config(ours.config)
    assert type(parent).__name__ in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
    errors = []
    for scheduler in (ours, parent):
        scheduler.set_timesteps(50)
        x = NOISE.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(flow_oracle(t, x)[0], t, x).prev_sample
        errors.append(float((x - X0).abs().max()))
    assert errors[0] < ATOL < 1e-3 < errors[1]


@pytest.mark.parametrize("n", LAYOUT_STEPS)
@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_flow_timesteps_are_sigma_times_T_and_cost_what_the_layout_says(name, n):
    """Float timesteps in (0, T], decreasing (Heun: each but the first twice), starting at
    sigma ~ 1; NFE n, or 2n - 1 for Heun (its last step is an Euler step to sigma = 0)."""
    scheduler = build_sampler(name, flow_train(3.0))
    scheduler.set_timesteps(n)
    timesteps = scheduler.timesteps.double()
    assert scheduler.timesteps.is_floating_point()
    assert ((timesteps > 0) & (timesteps <= T)).all() and float(timesteps[0]) > T - 1
    expected = {"trailing": n, "heun": 2 * n - 1}[FLOW_LAYOUTS[name]]
    assert len(timesteps) == expected == nfe_for_steps(name, flow_train(3.0), n)
    distinct = timesteps if FLOW_LAYOUTS[name] == "trailing" else \
        torch.cat([timesteps[:1], timesteps[1::2]])
    assert len(distinct) == n and (distinct[1:] < distinct[:-1]).all()
    if FLOW_LAYOUTS[name] == "heun":
        assert torch.equal(timesteps[1::2], timesteps[2::2])


def test_flow_nfe_helpers_count_heun_twice_but_the_last_step():
    train = flow_train(1.0)
    assert [nfe_for_steps("flow-heun", train, n) for n in (1, 2, 10)] == [1, 3, 19]
    assert [steps_for_nfe("flow-heun", train, nfe) for nfe in (1, 2, 3, 19, 20)] == [1, 1, 2, 10, 10]
    for name in ("flow-euler", "flow-dpmpp-2m", "flow-unipc"):
        assert nfe_for_steps(name, train, 10) == 10 and steps_for_nfe(name, train, 20) == 20


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_pipeline_nfe_on_a_flow_model(name, guidance_scale):
    """A flow model's pipeline: one batched forward per timestep, reported as nfe_for_steps."""
    pipe = make_pipe(scheduler=flow_train(3.0))
    with forward_spy(pipe.unet) as calls:
        out = pipe(class_labels=[0, 1], num_inference_steps=3, sampler=name,
                   guidance_scale=guidance_scale, generator=generators(2), output_type="pt")
    assert out.nfe == len(calls) == nfe_for_steps(name, pipe.scheduler, 3)
    assert all(call.batch == (4 if guidance_scale != 1.0 else 2) for call in calls)
    assert torch.isfinite(out.images).all()


# --- EDM preconditioning (Karras et al. 2022) ---------------------------------------------------
#
# The oracle network for the one data point x0: the sampler's network output ``F`` chosen so that
# the preconditioned denoiser ``D(x; sigma) = c_skip x + c_out F`` (Table 1) is exactly x0, i.e.
# ``F = (x0 - c_skip x) / c_out``, with sigma read off the network's timestep
# (``c_noise = ln(sigma) / 4``, as a trained network reads it) and the unscaled x off its input
# (``c_in x``, checked against the sample the sampler holds). On ``x_sigma = x0 + sigma eps`` every
# EDM update is exact, so each sampler must land on x0 and call the network only on that line.

EDM_SAMPLERS = list_samplers("edm")
#: EDM sampler -> its timestep layout on the n-step Karras schedule (the NFE per image)
EDM_LAYOUTS = {"edm-euler": "trailing", "edm-dpmpp-2m": "trailing",
               "edm-heun": "heun"}   # sigma_0, sigma_1, sigma_1, ..., sigma_{n-1}, sigma_{n-1}
SIGMA_DATA = 0.5


def edm_train(**options) -> EDMEulerScheduler:
    """The EDM training schedule (sigma_min 0.002, sigma_max 80, sigma_data 0.5, rho 7)."""
    return EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=SIGMA_DATA, rho=7.0,
                             **options)


def edm_oracle(timestep, model_input: torch.Tensor, sample: torch.Tensor, x0: torch.Tensor = X0):
    """``(F, eps, sigma)``: the network output that makes ``D(x; sigma) = x0`` for
    ``sigma = exp(4 c_noise)`` at ``x = sample``, the noise ``eps = (x - x0) / sigma`` it implies,
    and sigma. Checks that ``model_input = c_in(sigma) x`` (Table 1: ``1 / sqrt(sigma^2 +
    sigma_data^2)``) to float32 precision."""
    sigma = torch.exp(4 * torch.as_tensor(timestep, dtype=torch.float64))
    norm = (sigma ** 2 + SIGMA_DATA ** 2).sqrt()
    c_skip, c_out, c_in = SIGMA_DATA ** 2 / norm ** 2, sigma * SIGMA_DATA / norm, 1 / norm
    torch.testing.assert_close(model_input.double(), c_in * sample.double(), rtol=2e-6, atol=0)
    return (x0 - c_skip * sample) / c_out, (sample - x0) / sigma, sigma


def sample_edm_with_oracle(name: str, n: int, x0: torch.Tensor = X0, **options):
    """Run EDM sampler ``name`` (built with ``options``) for ``n`` steps from
    ``init_noise_sigma * NOISE`` with the oracle as network, as the pipeline does. Returns
    ``(x, path_error, calls)``."""
    scheduler = build_sampler(name, edm_train(), **options)
    scheduler.set_timesteps(n)
    x, eps_first, path_error = NOISE * scheduler.init_noise_sigma, None, 0.0
    for t in scheduler.timesteps:
        f, eps, sigma = edm_oracle(t, scheduler.scale_model_input(x, t), x, x0)
        eps_first = eps if eps_first is None else eps_first
        path_error = max(path_error, float((sigma * (eps - eps_first)).abs().max()))
        x = scheduler.step(f, t, x, **step_kwargs(scheduler)).prev_sample
    return x, path_error, len(scheduler.timesteps)


@pytest.mark.parametrize("name", EDM_SAMPLERS)
def test_edm_oracle_denoiser_lands_on_x0_for_every_step_count(name):
    """Steps 1..50, deterministic (no churn): the output is x0 (max abs error < 1e-4), every
    network call is on the straight line ``x0 + sigma eps_T`` (1e-3) with ``c_in x`` as input and
    ``c_noise`` of the sigma the update uses (else the oracle's D is not x0), and the calls made
    are ``nfe_for_steps``."""
    errors, strays = {}, {}
    for n in ORACLE_STEPS:
        x, path_error, calls = sample_edm_with_oracle(name, n)
        errors[n], strays[n] = float((x - X0).abs().max()), path_error
        assert calls == nfe_for_steps(name, edm_train(), n)
    assert not {n: e for n, e in errors.items() if not e < ATOL}, f"{name} misses x0: {errors}"
    assert not {n: e for n, e in strays.items() if not e < PATH_ATOL}, f"{name} strays: {strays}"


def test_edm_heun_with_churn_lands_on_x0_off_the_path_and_is_seeded():
    """Alg. 2 with S_churn = 40 (S_tmin 0.05, S_tmax 50, S_noise 1.003): the oracle still ends on
    x0 (the last step is Euler to sigma = 0, exact for D = x0), the calls leave the deterministic
    path (the churn noise), and the same generator gives the same trajectory."""
    churn = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
    for n in (1, 2, 5, 18, 50):
        x, path_error, calls = sample_edm_with_oracle("edm-heun", n, **churn)
        assert float((x - X0).abs().max()) < ATOL, n
        assert calls == 2 * n - 1
        if n >= 5:
            assert path_error > 1e-2, n
    scheduler = build_sampler("edm-heun", edm_train(), **churn)
    scheduler.set_timesteps(5)
    runs = []
    for seed in (3, 3, 4):
        x = NOISE * scheduler.init_noise_sigma
        scheduler.set_timesteps(5)
        trace = []
        for t in scheduler.timesteps:
            x = scheduler.step(0.3 * scheduler.scale_model_input(x, t), t, x,
                               generator=torch.Generator().manual_seed(seed)).prev_sample
            trace.append(x)
        runs.append(torch.stack(trace))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_edm_heun_churn_follows_alg_2():
    """The churned sigmas by hand: gamma = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax],
    the first call at sigma_hat_0 = init_noise_sigma, the calls sigma_hat_i then sigma_{i+1}."""
    n, churn = 4, 1.0
    scheduler = build_sampler("edm-heun", edm_train(), s_churn=churn, s_tmin=0.1, s_tmax=10.0)
    scheduler.set_timesteps(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7     # eq. 5
    gamma = torch.where((sigmas >= 0.1) & (sigmas <= 10.0), min(churn / n, 2 ** 0.5 - 1), 0.0)
    hats = sigmas * (1 + gamma)
    assert gamma.tolist() == [0.0, 0.25, 0.25, 0.0]  # 80 and 0.002 lie outside [0.1, 10]
    expected = torch.stack([hats[0], sigmas[1], hats[1], sigmas[2], hats[2], sigmas[3], hats[3]])
    torch.testing.assert_close(scheduler.call_sigmas.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(scheduler.timesteps.double(), expected.log() / 4, rtol=0, atol=1e-6)
    assert scheduler.init_noise_sigma == pytest.approx(80.0)


@pytest.mark.parametrize("n", LAYOUT_STEPS)
@pytest.mark.parametrize("name", EDM_SAMPLERS)
def test_edm_timesteps_are_c_noise_of_karras_sigmas_and_cost_what_the_layout_says(name, n):
    """Float timesteps ``ln(sigma) / 4`` of the Karras sigmas (eq. 5) from sigma_max = 80 down to
    sigma_min = 0.002 (n = 1: sigma_max only); NFE n, or 2n - 1 for Heun."""
    scheduler = build_sampler(name, edm_train())
    scheduler.set_timesteps(n)
    timesteps = scheduler.timesteps.double()
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    karras = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    distinct = timesteps if EDM_LAYOUTS[name] == "trailing" else \
        torch.cat([timesteps[:1], timesteps[2::2]])
    torch.testing.assert_close(distinct, karras.log() / 4, rtol=0, atol=1e-6)
    expected = {"trailing": n, "heun": 2 * n - 1}[EDM_LAYOUTS[name]]
    assert len(timesteps) == expected == nfe_for_steps(name, edm_train(), n)
    if EDM_LAYOUTS[name] == "heun":
        assert torch.equal(timesteps[1::2], timesteps[2::2])


def test_edm_nfe_helpers_count_heun_twice_but_the_last_step():
    train = edm_train()
    assert [nfe_for_steps("edm-heun", train, n) for n in (1, 2, 10, 18)] == [1, 3, 19, 35]
    assert [steps_for_nfe("edm-heun", train, nfe) for nfe in (1, 2, 3, 35, 36)] == [1, 1, 2, 18, 18]
    for name in ("edm-euler", "edm-dpmpp-2m"):
        assert nfe_for_steps(name, train, 10) == 10 and steps_for_nfe(name, train, 20) == 20


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
@pytest.mark.parametrize("name", EDM_SAMPLERS)
def test_pipeline_nfe_on_an_edm_model(name, guidance_scale):
    """An EDM model's pipeline: one batched forward per timestep, reported as nfe_for_steps."""
    pipe = make_pipe(scheduler=edm_train())
    with forward_spy(pipe.unet) as calls:
        out = pipe(class_labels=[0, 1], num_inference_steps=3, sampler=name,
                   guidance_scale=guidance_scale, generator=generators(2), output_type="pt")
    assert out.nfe == len(calls) == nfe_for_steps(name, pipe.scheduler, 3)
    assert all(call.batch == (4 if guidance_scale != 1.0 else 2) for call in calls)
    assert torch.isfinite(out.images).all()


def test_edm_heun_with_churn_in_the_pipeline_is_seeded_and_batch_invariant():
    """S_churn > 0 through DiffusionImagePipeline with one generator per image: an image depends
    only on its own generator (the initial noise and every churn draw), not on the batch it sits
    in; another seed gives another image; churn changes the image (it is used)."""
    churned = make_pipe(scheduler=build_sampler("edm-heun", edm_train(), s_churn=30.0,
                                                s_tmin=0.01, s_tmax=50.0))
    kwargs = dict(num_inference_steps=4, guidance_scale=2.0, output_type="pt")
    batch = churned(class_labels=[0, 1, 2], generator=generators(3), **kwargs).images
    alone = churned(class_labels=[1], generator=generators(1, offset=1), **kwargs).images
    again = churned(class_labels=[0, 1, 2], generator=generators(3), **kwargs).images
    other = churned(class_labels=[1], generator=generators(1, offset=7), **kwargs).images
    plain = make_pipe(scheduler=build_sampler("edm-heun", edm_train()))(
        class_labels=[1], generator=generators(1, offset=1), **kwargs).images
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=0)  # batched conv rounding
    assert (other - alone).abs().max() > 1e-3 and (plain - alone).abs().max() > 1e-3
