"""Tests for samplers/guidance.py: each method against a hand-computed combination on tiny tensors,
against diffusers' functions on random tensors where one exists, and the registry's errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from samplers import build_guidance, build_sampler, list_guidance_methods
from samplers.guidance import (CFGPP_SAMPLERS, GuidanceStep, as_guidance, guidance_options,
                               is_default_guidance, noise_level)


def t4(*values):
    """A (1, 1, 1, n) float32 tensor: one image of n pixels."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def fake_step(alpha_bar=0.64, prediction_type="epsilon", index=0, x_t=None, num_steps=10):
    """A step whose timestep 0 has ``alpha_bar`` (sqrt 0.8, sqrt(1 - abar) 0.6 by default)."""
    scheduler = SimpleNamespace(alphas_cumprod=torch.tensor([alpha_bar], dtype=torch.float64),
                                config=SimpleNamespace(prediction_type=prediction_type),
                                scale_model_input=lambda sample, t: sample)
    x_t = t4(0.0, 0.0) if x_t is None else x_t
    return GuidanceStep(index, num_steps, 0, x_t, x_t, scheduler)


# --- the registry -----------------------------------------------------------------------------

def test_every_method_is_registered_with_a_source():
    assert list_guidance_methods() == ["apg", "autoguidance", "cfg", "cfg++", "cfg-zero-star",
                                       "interval"]
    for name in list_guidance_methods():
        method = build_guidance(name)
        assert method.name == name and method.source and "20" in method.source
        assert as_guidance(method.spec()).spec() == method.spec()


@pytest.mark.parametrize("call, message", [
    (lambda: build_guidance("pag"), r"unknown guidance method 'pag'; choose one of \['apg'"),
    (lambda: build_guidance("apg", beta=1), r"'apg' has no option 'beta'; it takes \['eta', "
                                            r"'norm_threshold', 'momentum'\]"),
    (lambda: build_guidance("cfg", guidance_rescale=2), r"guidance_rescale must be a finite "
                                                        r"number in \[0, 1\], got 2"),
    (lambda: build_guidance("interval", sigma_lo=3.0, sigma_hi=1.0), r"sigma_hi must be .*>= 3\.0"),
    (lambda: build_guidance("cfg-zero-star", zero_init_steps=-1), r"zero_init_steps must be an "
                                                                  r"int >= 0"),
    (lambda: as_guidance(3), r"guidance must be a name from"),
])
def test_bad_names_and_options_name_what_is_allowed(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_default_is_plain_cfg():
    assert is_default_guidance(None) and is_default_guidance("cfg")
    assert not is_default_guidance(build_guidance("cfg", guidance_rescale=0.5))
    assert guidance_options("interval") == {"sigma_lo": 0.28, "sigma_hi": 5.42,
                                            "guidance_rescale": 0.0}


# --- cfg and guidance rescale -------------------------------------------------------------------

def test_cfg_is_uncond_plus_s_times_difference_and_cond_alone_without_null():
    cfg, step = build_guidance("cfg"), fake_step()
    cond, uncond = t4(1.0, 0.5), t4(-0.5, 0.25)
    out, sample = cfg.guide(cond, uncond, step, 3.0)
    assert out.flatten().tolist() == [4.0, 1.0]            # -0.5 + 3 * 1.5, 0.25 + 3 * 0.25
    assert sample is step.sample
    assert cfg.guide(cond, None, step, 1.0)[0] is cond     # s == 1: the cond output unchanged
    assert not cfg.needs_null(step, 1.0) and cfg.needs_null(step, 1.5)


def test_guidance_rescale_hand_computed_and_equal_to_diffusers():
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    cond, uncond = t4(1.0, -1.0), t4(0.0, 0.0)       # x_cfg = 2 cond: std(x_cfg) = 2 std(cond)
    out, _ = build_guidance("cfg", guidance_rescale=0.5).guide(cond, uncond, fake_step(), 2.0)
    # Lin et al. eq. 15-16: 0.5 * x_cfg * std(cond) / std(x_cfg) + 0.5 * x_cfg = 0.5 c + c
    assert out.flatten().tolist() == [1.5, -1.5]
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    out, _ = build_guidance("cfg", guidance_rescale=0.7).guide(cond, uncond, fake_step(), 5.0)
    torch.testing.assert_close(out, rescale_noise_cfg(uncond + 5.0 * (cond - uncond), cond, 0.7))


# --- interval ---------------------------------------------------------------------------------

def test_interval_guides_only_inside_its_sigma_range():
    method = build_guidance("interval", sigma_lo=0.5, sigma_hi=2.0)
    cond, uncond = t4(1.0), t4(0.0)
    for alpha_bar, inside in ((0.75, True), (0.25, True), (0.5, True), (0.9, False), (0.1, False)):
        step = fake_step(alpha_bar)      # sigma = sqrt((1 - a) / a): 0.58, 1.73, 1, 0.33, 3
        assert method.needs_null(step, 3.0) is inside
        out, _ = method.guide(cond, uncond if inside else None, step, 3.0)
        assert out.item() == (3.0 if inside else 1.0)
    assert not method.needs_null(fake_step(0.5), 1.0)


def test_noise_level_is_exact_at_integers_and_inverts_karras_timesteps():
    train = DDPMScheduler(num_train_timesteps=1000)
    assert noise_level(train.alphas_cumprod, torch.tensor(999)) == float(train.alphas_cumprod[999])
    euler = build_sampler("euler", train, use_karras_sigmas=True)
    euler.set_timesteps(10)
    for t, sigma in zip(euler.timesteps, euler.sigmas[:-1]):
        a = noise_level(euler.alphas_cumprod, t)
        assert math.sqrt((1 - a) / a) == pytest.approx(float(sigma), rel=1e-4)
    with pytest.raises(ValueError, match=r"timestep 1000\.0 is outside the training schedule"):
        noise_level(train.alphas_cumprod, 1000)


# --- APG --------------------------------------------------------------------------------------

def test_apg_splits_the_update_parallel_and_orthogonal_to_cond_in_x0_space():
    # x0 prediction: x0_cond = (2, 0), x0_uncond = (0, 1): D = (2, -1), D_par = (2, 0), D_orth = (0, -1)
    step, cond, uncond = fake_step(prediction_type="sample"), t4(2.0, 0.0), t4(0.0, 1.0)
    out, _ = build_guidance("apg").guide(cond, uncond, step, 3.0)          # eta 0
    assert out.flatten().tolist() == [2.0, -2.0]                            # c + 2 D_orth
    out, _ = build_guidance("apg", eta=0.5).guide(cond, uncond, step, 3.0)
    assert out.flatten().tolist() == [4.0, -2.0]                            # c + 2 (D_orth + D_par / 2)
    out, _ = build_guidance("apg", eta=1.0).guide(cond, uncond, step, 3.0)
    assert out.flatten().tolist() == [6.0, -2.0]                            # = CFG: u + 3 (c - u)
    # norm threshold r = 1: D scaled to norm 1, D / sqrt(5) = (2, -1) / sqrt(5)
    out, _ = build_guidance("apg", eta=1.0, norm_threshold=1.0).guide(cond, uncond, step, 3.0)
    torch.testing.assert_close(out, t4(2 + 4 / 5 ** 0.5, -2 / 5 ** 0.5))


def test_apg_momentum_accumulates_across_steps_and_resets_per_call():
    method, step = build_guidance("apg", eta=1.0, momentum=-0.5), fake_step(prediction_type="sample")
    cond, uncond = t4(1.0, 1.0), t4(0.0, 0.0)                   # D = (1, 1) at every step
    first, _ = method.guide(cond, uncond, step, 2.0)            # c + D
    second, _ = method.guide(cond, uncond, step, 2.0)           # c + (D - 0.5 D)
    assert first.flatten().tolist() == [2.0, 2.0] and second.flatten().tolist() == [1.5, 1.5]
    method.reset()
    assert method.guide(cond, uncond, step, 2.0)[0].flatten().tolist() == [2.0, 2.0]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_apg_equals_the_paper_formula_in_x0_space_on_random_tensors(prediction_type):
    """Sadat et al. 2024, Alg. 1, written out here, against the method (diffusers' math) for
    every parameterisation: x0 from each output, guided in x0, back to the output."""
    g = torch.Generator().manual_seed(1)
    x_t, cond, uncond = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
                         for _ in range(3))
    a = 0.3
    step = fake_step(a, prediction_type, x_t=x_t)

    def x0_of(out):
        return {"epsilon": (x_t - (1 - a) ** 0.5 * out) / a ** 0.5, "sample": out,
                "v_prediction": a ** 0.5 * x_t - (1 - a) ** 0.5 * out}[prediction_type]

    c, u = x0_of(cond), x0_of(uncond)
    d = c - u
    d = d * torch.clamp(2.0 / d.flatten(1).norm(dim=1), max=1).view(-1, 1, 1, 1)   # r = 2
    unit = c / c.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    par = (d * unit).flatten(1).sum(1).view(-1, 1, 1, 1) * unit
    x0 = c + (4.0 - 1) * ((d - par) + 0.25 * par)
    out, _ = build_guidance("apg", eta=0.25, norm_threshold=2.0).guide(cond, uncond, step, 4.0)
    torch.testing.assert_close(x0_of(out), x0)


# --- CFG-Zero* --------------------------------------------------------------------------------

def test_cfg_zero_star_scales_the_null_prediction_and_zeroes_the_first_steps():
    method = build_guidance("cfg-zero-star", zero_init_steps=1)
    cond, uncond = t4(1.0, 1.0), t4(2.0, 0.0)     # s* = <c, u> / |u|^2 = 2 / 4 = 0.5: s* u = (1, 0)
    step0, step1 = fake_step(index=0), fake_step(index=1)
    assert not method.needs_null(step0, 3.0) and method.needs_null(step1, 3.0)
    assert method.guide(cond, None, step0, 3.0)[0].flatten().tolist() == [0.0, 0.0]
    out, _ = method.guide(cond, uncond, step1, 3.0)
    assert out.flatten().tolist() == [1.0, 3.0]    # (1, 0) + 3 ((1, 1) - (1, 0))


def test_cfg_zero_star_scale_is_the_least_squares_projection():
    """diffusers' cfg_zero_star_scale (used by the method) is argmin_s ||c - s u||^2 per image."""
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    out, _ = build_guidance("cfg-zero-star", zero_init_steps=0).guide(cond, uncond, fake_step(), 2.5)
    s = ((cond * uncond).flatten(1).sum(1) / (uncond ** 2).flatten(1).sum(1)).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, s * uncond + 2.5 * (cond - s * uncond))


# --- CFG++ ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_cfgpp_step_renoises_the_guided_x0_with_the_unconditional_epsilon(name):
    """Through the real scheduler: ddim gives sqrt(abar_prev) x0_lam + sqrt(1 - abar_prev) eps_u
    (Chung et al. Alg. 1); euler x0_lam + sigma_next eps_u in its sigma-scaled latents (Alg. 2).
    (ddpm and euler-a step from the same state (x0_lam, eps_u), adding their noise.)"""
    scheduler = build_sampler(name, DDPMScheduler(num_train_timesteps=1000))
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    for i in range(3):  # walk a few steps so Euler's step index advances
        t = scheduler.timesteps[i]
        sample = torch.randn(2, 1, 4, 4, generator=g) * float(scheduler.init_noise_sigma)
        x_t = scheduler.scale_model_input(sample, t)
        cond, uncond = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
        step = GuidanceStep(i, 10, t, x_t, sample, scheduler)
        lam, a = 0.6, step.alpha_bar
        x0_lam = (x_t - (1 - a) ** 0.5 * (uncond + lam * (cond - uncond))) / a ** 0.5
        out, moved = build_guidance("cfg++").guide(cond, uncond, step, lam)
        got = scheduler.step(out, t, moved).prev_sample
        if name == "ddim":
            t_prev = scheduler.timesteps[i + 1]
            a_prev = float(scheduler.alphas_cumprod[t_prev])
            expected = a_prev ** 0.5 * x0_lam + (1 - a_prev) ** 0.5 * uncond
        else:
            expected = x0_lam + float(scheduler.sigmas[i + 1]) * uncond  # VE: x = x0 + sigma eps
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_cfgpp_is_refused_for_other_samplers_and_scales_above_one():
    method = build_guidance("cfg++")
    for name in CFGPP_SAMPLERS:
        method.check_sampler(name)
    with pytest.raises(ValueError, match=r"'cfg\+\+' is defined for the samplers \['ddim', 'ddpm', "
                                         r"'euler', 'euler-a'\].*not for sampler 'dpmpp-2m'"):
        method.check_sampler("dpmpp-2m")
    with pytest.raises(ValueError, match=r"guidance_scale must be a finite number in \[0, 1\] for "
                                         r"guidance 'cfg\+\+'"):
        method.check_scale(2.0)


# --- autoguidance -----------------------------------------------------------------------------

def test_autoguidance_combines_like_cfg_with_the_weak_prediction():
    method = build_guidance("autoguidance", guide_model="some/folder")
    assert method.uses_guide_network
    out, _ = method.guide(t4(1.0), t4(0.5), fake_step(), 3.0)   # w + 3 (c - w)
    assert out.item() == 2.0
    with pytest.raises(ValueError, match="guide_model must be a saved pipeline folder"):
        build_guidance("autoguidance", guide_model=3)
