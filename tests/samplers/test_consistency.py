"""Consistency samplers (samplers/consistency.py and the registry's lcm / flow-lcm): an exact
denoiser lands on x0 for every step count, the grid and NFE, batch invariance, the guidance
refusal, and how they are listed."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler

from conftest import forward_spy, generators, make_pipe
from samplers import (build_sampler, is_distilled_sampler, list_samplers, nfe_for_steps,
                      sampler_name, samplers_for, steps_for_nfe)
from samplers.consistency import (FlowLCMScheduler, edm_boundary_scalings, flow_grid_sigmas,
                                  grid_indices)

T = 1000
X0 = 2 * torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1
NOISE = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ATOL = 1e-4


def ddpm_oracle_output(scheduler, t, x_t, prediction_type):
    """The exact network output for the one data point X0 at ``(x_t, t)``."""
    abar = scheduler.alphas_cumprod[int(t)].double()
    eps = (x_t - abar.sqrt() * X0) / (1 - abar).sqrt()
    return {"epsilon": eps, "sample": X0,
            "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * X0}[prediction_type]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_lcm_with_an_exact_denoiser_returns_x0(prediction_type, n):
    """Every step predicts x0 exactly; re-noising with fresh noise does not move the result: the
    output is x0 to 1e-4 (the boundary scalings leave c_skip(t) <= 7e-6 on the grid)."""
    scheduler = build_sampler("lcm", DDPMScheduler(num_train_timesteps=T,
                                                   prediction_type=prediction_type))
    scheduler.set_timesteps(n)
    x, g = NOISE.clone(), torch.Generator().manual_seed(3)
    for t in scheduler.timesteps:
        x = scheduler.step(ddpm_oracle_output(scheduler, t, x, prediction_type), t, x,
                           generator=g).prev_sample
    assert float((x - X0).abs().max()) < ATOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_flow_lcm_with_an_exact_velocity_returns_x0(shift, n):
    scheduler = build_sampler("flow-lcm", FlowMatchEulerDiscreteScheduler(num_train_timesteps=T,
                                                                          shift=shift))
    scheduler.set_timesteps(n)
    x, g = NOISE.clone(), torch.Generator().manual_seed(3)
    for t in scheduler.timesteps:
        v = (x - X0) / (t.double() / T)             # exact velocity eps - x0 on the straight path
        x = scheduler.step(v, t, x, generator=g).prev_sample
    assert float((x - X0).abs().max()) < ATOL


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_edm_lcm_with_an_exact_denoiser_returns_x0(n):
    """The network output F with D = c_skip x + c_out F = x0 exactly (x read off its input c_in x,
    sigma the scheduler's own: float32 c_noise misreads sigma = 80 by ~1e-4): x0 to 1e-4."""
    scheduler = build_sampler("edm-lcm", EDMEulerScheduler(sigma_max=80.0))
    scheduler.set_timesteps(n)
    x, g = NOISE.clone() * scheduler.init_noise_sigma, torch.Generator().manual_seed(3)
    sd = scheduler.config.sigma_data
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        sigma = scheduler.sigmas[scheduler.step_index].double()    # = exp(4 c_noise), exactly
        unscaled = model_input * (sigma ** 2 + sd ** 2).sqrt()
        c_skip, c_out = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        x = scheduler.step((X0 - c_skip * unscaled) / c_out, t, x, generator=g).prev_sample
    assert float((x - X0).abs().max()) < ATOL
    # f = c_skip' x + c_out' D leaves c_skip'(sigma) (x - x0) of the last step's input: < 3e-7 x 1
    assert edm_boundary_scalings(torch.tensor(0.19), 0.002, 0.5)[0] < 3e-7


def test_grids_are_lcms_evenly_spaced_indices():
    lcm = build_sampler("lcm", DDPMScheduler())
    flow = build_sampler("flow-lcm", FlowMatchEulerDiscreteScheduler(shift=1.0))
    expected = {1: [999], 2: [999, 499], 3: [999, 679, 339], 4: [999, 759, 499, 259]}
    for n, timesteps in expected.items():
        lcm.set_timesteps(n)
        flow.set_timesteps(n)
        assert lcm.timesteps.tolist() == timesteps
        # flow: sigma = (j + 1) / 50 for the same grid indices j (the grid has no "- 1" offset)
        assert torch.allclose(flow.timesteps, torch.tensor(timesteps, dtype=torch.float32) + 1)
        assert flow.sigmas[-1] == 0 and nfe_for_steps("flow-lcm", flow, n) == n
    assert grid_indices(50, 4).tolist() == [0, 12, 25, 37]
    sigmas = flow_grid_sigmas(4, 3.0)
    assert torch.allclose(sigmas, torch.tensor([0, 0.5, 0.75, 0.9, 1], dtype=torch.float64))


def test_step_counts_beyond_the_grid_are_refused_and_helpers_stop_there():
    flow = FlowLCMScheduler(original_inference_steps=8)
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 8\]"):
        flow.set_timesteps(9)
    with pytest.raises(ValueError, match="is smaller than `num_inference_steps`: 51"):
        build_sampler("lcm", DDPMScheduler()).set_timesteps(51)
    assert steps_for_nfe("lcm", DDPMScheduler(), 80) == 50
    assert steps_for_nfe("flow-lcm", FlowMatchEulerDiscreteScheduler(), 3) == 3


def test_listing_names_and_round_trip(tmp_path):
    assert list_samplers(distilled=True) == ["edm-lcm", "flow-lcm", "lcm"]
    assert "lcm" not in list_samplers() and "lcm" in list_samplers(distilled=None)
    lcm = build_sampler("lcm", DDPMScheduler())
    assert type(lcm) is LCMScheduler and sampler_name(lcm) == "lcm" and is_distilled_sampler(lcm)
    assert not is_distilled_sampler(DDPMScheduler()) and not is_distilled_sampler("ddim")
    assert "lcm" in samplers_for(lcm) and "lcm" not in samplers_for(DDPMScheduler())
    flow = build_sampler("flow-lcm", FlowMatchEulerDiscreteScheduler(shift=3.0),
                         original_inference_steps=20)
    flow.save_pretrained(tmp_path)
    again = FlowLCMScheduler.from_pretrained(tmp_path)
    assert (again.config.shift, again.config.original_inference_steps) == (3.0, 20)
    assert samplers_for(again) == ["flow-dpmpp-2m", "flow-euler", "flow-heun", "flow-lcm",
                                   "flow-unipc"]


@pytest.mark.parametrize("name, train", [("lcm", None),
                                         ("flow-lcm", FlowMatchEulerDiscreteScheduler(shift=3.0)),
                                         ("edm-lcm", EDMEulerScheduler(sigma_max=40.0))])
def test_pipeline_one_forward_per_step_seeds_and_batch_invariance(name, train):
    """NFE = steps (one conditional forward each, batch 2 for 2 images: no guidance rows); the
    image of seed 1 is the same alone and second in a batch (the re-noising draws from each image's
    own generator); guidance_scale != 1 is refused by name."""
    pipe = make_pipe(scheduler=train)
    pipe.set_sampler(name)
    for steps in (1, 2, 4):
        with forward_spy(pipe.unet) as calls:
            out = pipe(class_labels=[0, 1], num_inference_steps=steps, guidance_scale=1.0,
                       generator=generators(2), output_type="pt")
        assert out.nfe == len(calls) == steps and all(c.batch == 2 for c in calls)
        alone = pipe(class_labels=[1], num_inference_steps=steps, guidance_scale=1.0,
                     generator=generators(1, offset=1), output_type="pt")
        torch.testing.assert_close(alone.images[0], out.images[1], rtol=0, atol=1e-6)
        again = pipe(class_labels=[0, 1], num_inference_steps=steps, guidance_scale=1.0,
                     generator=generators(2), output_type="pt")
        assert torch.equal(again.images, out.images)
    with pytest.raises(ValueError, match=f"sampler '{name}' samples a distilled consistency model"):
        pipe(class_labels=[0], num_inference_steps=2)   # the call's default guidance_scale=2.0
    base = make_pipe(scheduler=train)
    with pytest.raises(ValueError, match="pass guidance_scale=1"):
        base(class_labels=[0], num_inference_steps=2, sampler=name, guidance_scale=3.0)
