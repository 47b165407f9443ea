"""Flow matching (training/objectives/flow.py): the velocity loss by hand, the timestep densities,
the shift, the config checks, and a tiny run through the one loop that exports a flow pipeline."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from conftest import generators, seeded_unet
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from training.config import load_config
from training.objectives import OBJECTIVES, build_objective
from training.objectives.flow import (FlowMatchingObjective, flow_matching_loss, sample_flow_timesteps,
                                      shift_sigmas)
from training_helpers import TINY, make_fashion_root

T = 1000


class RecordingUNet(torch.nn.Module):
    """Returns ``0.5 * x_t`` and records the timesteps and inputs it is called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_t, timestep, **conditions):
        self.calls.append(SimpleNamespace(x_t=x_t.clone(), timestep=timestep.clone(), **conditions))
        return SimpleNamespace(sample=0.5 * x_t)


def flow_cfg(*overrides):
    return load_config(None, ["train.objective=flow-matching", *TINY, *overrides])


def test_flow_objectives_are_registered():
    assert OBJECTIVES["flow-matching"].__name__ == "FlowMatchingObjective"
    assert OBJECTIVES["text-flow-matching"].__name__ == "TextFlowMatchingObjective"


def test_loss_is_the_velocity_mse_by_hand():
    """2 images, sigma = 0.25 and 0.9: x_t = (1 - sigma) x0 + sigma eps, the U-Net (a real tiny
    seeded one) called at t = sigma * T, loss = mean((v_pred - (eps - x0))^2)."""
    g = torch.Generator().manual_seed(0)
    x0 = 2 * torch.rand(2, 1, 8, 8, generator=g) - 1
    noise = torch.randn(2, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.25, 0.9])
    unet = seeded_unet()
    labels = torch.tensor([0, 3])
    loss, logs = flow_matching_loss(unet, x0, noise, sigma, T, class_labels=labels)
    x_t = torch.stack([0.75 * x0[0] + 0.25 * noise[0], 0.1 * x0[1] + 0.9 * noise[1]])
    with torch.no_grad():
        pred = torch.cat([unet(x_t[i:i + 1], torch.tensor([t]), class_labels=labels[i:i + 1]).sample
                          for i, t in enumerate([250.0, 900.0])])
    expected = ((pred - (noise - x0)) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)
    assert logs == {"loss": pytest.approx(float(expected), rel=1e-5)}
    # a known network gives a known number: v_pred = 0.5 x_t
    stub = RecordingUNet()
    loss, _ = flow_matching_loss(stub, x0, noise, sigma, T)
    assert float(loss) == pytest.approx(float(((0.5 * x_t - (noise - x0)) ** 2).mean()), rel=1e-6)
    torch.testing.assert_close(stub.calls[0].timestep, torch.tensor([250.0, 900.0]))


@pytest.mark.parametrize("scheme,options", [("uniform", []), ("mode", ["flow.mode_scale=1.29"]),
                                            ("logit-normal", ["flow.logit_mean=0.3", "flow.shift=3.0"])])
def test_objective_draws_t_shift_noise_and_dropout_from_the_loop_generator(scheme, options):
    """The objective's loss of a batch equals the loss rebuilt by hand from the same generator:
    dropout draw, t from diffusers' density, sigma = shift(t), eps; the U-Net sees sigma * T."""
    cfg = flow_cfg(f"flow.timestep_sampling={scheme}", "diffusion.cond_drop_prob=0.5", *options)
    objective = build_objective(cfg, num_classes=10)
    stub = RecordingUNet()
    x0 = 2 * torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) - 1
    labels = torch.arange(6)
    loss, _ = objective.loss("model", {"model": stub}, (x0, labels), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    drop = torch.rand(6, generator=g) < 0.5
    f = cfg.flow
    t = compute_density_for_timestep_sampling(
        {"uniform": "none", "logit-normal": "logit_normal", "mode": "mode"}[scheme], 6,
        f.logit_mean, f.logit_std, f.mode_scale, generator=g)
    sigma = f.shift * t / (1 + (f.shift - 1) * t)
    noise = torch.randn(x0.shape, generator=g)
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    call = stub.calls[0]
    torch.testing.assert_close(call.timestep, sigma * T)
    torch.testing.assert_close(call.x_t, x_t)
    assert torch.equal(call.class_labels, torch.where(drop, torch.tensor(10), labels))
    assert float(loss) == pytest.approx(float(((0.5 * x_t - (noise - x0)) ** 2).mean()), rel=1e-5)


def test_timestep_densities():
    """200k draws: uniform has mean 1/2 and variance 1/12; logit-normal(0.5, 0.8) has logit(t)
    with that mean and std; mode (scale 1.29) has the quantiles of t = f(u), f decreasing."""
    n, g = 200_000, torch.Generator().manual_seed(0)
    u = sample_flow_timesteps("uniform", n, g)
    assert u.shape == (n,) and 0 <= float(u.min()) and float(u.max()) <= 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(u.var()) == pytest.approx(1 / 12, abs=0.002)
    t = sample_flow_timesteps("logit-normal", n, g, logit_mean=0.5, logit_std=0.8)
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(logit.std()) == pytest.approx(0.8, abs=0.01)
    s = 1.29
    t = sample_flow_timesteps("mode", n, g, mode_scale=s)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # P(t <= f(1 - q)) = q
        u0 = 1 - q
        f = 1 - u0 - s * (math.cos(math.pi * u0 / 2) ** 2 - 1 + u0)
        assert float(torch.quantile(t, q)) == pytest.approx(f, abs=0.005), q
    assert float(torch.quantile(t, 0.75)) < 0.65  # heavier middle than uniform's 0.75
    with pytest.raises(ValueError, match="timestep sampling must be one of"):
        sample_flow_timesteps("cosmap", 4)


def test_shift_maps_t_as_sd3_and_the_flow_scheduler():
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(t, 3.0), torch.tensor([0.0, 0.5, 0.75, 0.9, 1.0],
                                                                   dtype=torch.float64))
    assert torch.equal(shift_sigmas(t, 1.0), t)
    grid = torch.linspace(1, T, T).flip(0) / T   # the scheduler's own unshifted sigmas
    torch.testing.assert_close(shift_sigmas(grid, 3.0),
                               FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas, atol=1e-6, rtol=0)
    # the objective's sigmas under uniform t and shift 3: median shift(1/2) = 3/4
    objective = build_objective(flow_cfg("flow.timestep_sampling=uniform", "flow.shift=3.0"), 10)
    stub = RecordingUNet()
    objective.denoising_loss(stub, torch.zeros(4000, 1, 1, 1), torch.Generator().manual_seed(0))
    sigma = stub.calls[0].timestep / T
    assert float(sigma.median()) == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize("override,message", [
    ("flow.sampler=euler", r"flow.sampler must be a flow-matching sampler"),
    ("diffusion.sampler=flow-euler", r"does not read diffusion.sampler"),
    ("diffusion.prediction_type=v_prediction", r"does not read diffusion.prediction_type"),
    ("diffusion.beta_schedule=cosine", r"does not read diffusion.beta_schedule"),
    ("flow.shift=0", r"flow.shift and flow.logit_std must be > 0"),
    ("flow.mode_scale=2.0", r"flow.mode_scale must be in \[-1, 1.7519\]"),
    ("flow.timestep_sampling=cosmap", r"flow.timestep_sampling must be one of"),
])
def test_flow_config_refusals(override, message):
    with pytest.raises(ValueError, match=message):
        flow_cfg(override)


@pytest.mark.parametrize("objective", ["diffusion", "text-diffusion"])
def test_ddpm_objectives_refuse_a_flow_sampler_at_load(objective):
    with pytest.raises(ValueError, match=r"diffusion.sampler must be a sampler for DDPM models.*"
                                         r"got 'flow-heun' \(a flow-matching sampler"):
        load_config(None, [f"train.objective={objective}", "diffusion.sampler=flow-heun"])
    assert load_config(None, [f"train.objective={objective}", "diffusion.sampler=heun"])


def test_committed_flow_config_matches_the_diffusion_recipe():
    from training_helpers import REPO

    flow = load_config(REPO / "training" / "configs" / "fashion_mnist_flow.yaml")
    ddpm = load_config(REPO / "training" / "configs" / "fashion_mnist_diffusion.yaml")
    assert flow.train.objective == "flow-matching" and flow.flow.timestep_sampling == "logit-normal"
    for key in ("seed", "max_steps", "batch_size", "learning_rate", "lr_scheduler",
                "lr_warmup_steps", "mixed_precision", "use_ema", "ema_max_decay"):
        assert getattr(flow.train, key) == getattr(ddpm.train, key), key
    assert flow.model == ddpm.model and flow.data == ddpm.data
    assert flow.train.output_dir != ddpm.train.output_dir


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_tiny_flow_run_exports_a_flow_pipeline_that_reloads_and_samples(tmp_path):
    """3 steps of flow matching through the one loop (shift 3): the export is a
    DiffusionImagePipeline with FlowMatchEulerDiscreteScheduler(T, shift 3), reloads with
    from_pretrained, takes exactly the flow samplers, and draws finite images with flow-euler and
    flow-heun (the NFE each counts)."""
    from training.loop import train

    root = make_fashion_root(tmp_path / "data", n_train=64, n_test=16)
    cfg = flow_cfg(f"data.root={root}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=3",
                   "train.lr_warmup_steps=1", "flow.shift=3.0")
    final = train(cfg)
    pipe = DiffusionImagePipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler
    assert (pipe.scheduler.config.num_train_timesteps, pipe.scheduler.config.shift) == (T, 3.0)
    from samplers import samplers_for

    assert samplers_for(pipe.scheduler) == ["flow-dpmpp-2m", "flow-euler", "flow-heun", "flow-unipc"]
    for sampler, nfe in (("flow-euler", 4), ("flow-heun", 7)):
        out = pipe(class_labels=[0, 5], num_inference_steps=4, sampler=sampler, guidance_scale=2.0,
                   generator=generators(2), output_type="pt")
        assert out.nfe == nfe and out.images.shape == (2, 1, 28, 28)
        assert torch.isfinite(out.images).all()
    with pytest.raises(ValueError, match="is for DDPM models"):
        pipe(class_labels=[0], num_inference_steps=2, sampler="dpmpp-2m")


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_tiny_text_flow_run_exports_a_prompt_pipeline(tmp_path):
    """text-flow-matching: captions through the frozen encoder (a tiny random BERT with the real
    MiniLM tokenizer, as tests/training/test_text_objective.py), the same velocity loss, an export
    that generates from prompts with the flow samplers."""
    pytest.importorskip("transformers")
    from diffusion.conditioning import build_tiny_text_encoder, load_tokenizer
    from diffusion.pipelines.loading import load_pipeline
    from training.loop import train

    encoder = tmp_path / "encoder"
    tokenizer = load_tokenizer()
    build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=16).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    cfg = load_config(None, [*TINY, "model.attention_levels=[1]", "train.objective=text-flow-matching",
                             "data.name=fashion-mnist-captions", "data.subset=64",
                             f"text.encoder_path={encoder}", f"train.output_dir={tmp_path / 'run'}",
                             "text.sample_prompts=[a sneaker,a bag]", "train.max_steps=2",
                             "train.lr_warmup_steps=1", "flow.sampler=flow-heun"])
    pipe = load_pipeline(train(cfg), quiet=True)
    assert pipe.takes_text and type(pipe.scheduler).__name__ == "FlowMatchHeunDiscreteScheduler"
    out = pipe(prompt=["a photo of a sneaker", "a bag"], num_inference_steps=2,
               generator=generators(2), output_type="pt")
    assert out.nfe == 3 and torch.isfinite(out.images).all()
