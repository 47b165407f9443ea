"""EDM preconditioning (training/objectives/edm.py): Table 1's coefficients by hand, the weighted
loss by hand, the sigma density, the c_noise embedding, the config checks, and a tiny run through
the one loop that exports an EDM pipeline."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import EDMEulerScheduler
from diffusers.models.embeddings import get_timestep_embedding

from conftest import generators, seeded_unet
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from training.config import load_config
from training.objectives import OBJECTIVES, build_objective
from training.objectives.edm import edm_loss, edm_training_scheduler, sample_edm_sigmas
from training_helpers import TINY, make_fashion_root

SIGMA_DATA = 0.5
SIGMAS = (0.002, 0.1, 0.5, 2.0, 80.0)


class RecordingUNet(torch.nn.Module):
    """Returns ``0.5 * input`` and records the timesteps and inputs it is called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_in, timestep, **conditions):
        self.calls.append(SimpleNamespace(x_in=x_in.clone(), timestep=timestep.clone(), **conditions))
        return SimpleNamespace(sample=0.5 * x_in)


def edm_cfg(*overrides):
    return load_config(None, ["train.objective=edm", *TINY, *overrides])


def table_1(sigma: float, sigma_data: float = SIGMA_DATA) -> dict:
    """Karras et al. 2022, Table 1 ("EDM" column), written out."""
    return {"c_skip": sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2),
            "c_out": sigma * sigma_data / math.sqrt(sigma ** 2 + sigma_data ** 2),
            "c_in": 1 / math.sqrt(sigma ** 2 + sigma_data ** 2),
            "c_noise": math.log(sigma) / 4,
            "lambda": (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2}


def test_edm_objectives_are_registered():
    assert OBJECTIVES["edm"].__name__ == "EDMObjective"
    assert OBJECTIVES["text-edm"].__name__ == "TextEDMObjective"


@pytest.mark.parametrize("sigma", SIGMAS)
def test_preconditioning_is_table_1(sigma):
    """The training schedule's precondition_* (what the loss and every EDM sampler use) give
    Table 1's c_skip, c_out, c_in and c_noise; a few by hand: sigma = sigma_data = 0.5 gives
    c_skip = 1/2, c_out = c_in^-1 / 2 = sqrt(1/8) ... checked against the closed forms."""
    scheduler = edm_training_scheduler(edm_cfg())
    s = torch.tensor(sigma, dtype=torch.float64)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    got = {"c_skip": float(scheduler.precondition_outputs(one, zero, s)),
           "c_out": float(scheduler.precondition_outputs(zero, one, s)),
           "c_in": float(scheduler.precondition_inputs(one, s)),
           "c_noise": float(scheduler.precondition_noise(s))}
    expected = table_1(sigma)
    for key in got:
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    assert expected["lambda"] == pytest.approx(1 / expected["c_out"] ** 2, rel=1e-12)
    if sigma == 0.5:  # by hand: sigma^2 + sigma_data^2 = 1/2
        assert (got["c_skip"], got["c_out"], got["c_in"]) == pytest.approx((0.5, 0.5 ** 1.5, 2 ** 0.5))
        assert expected["lambda"] == pytest.approx(8.0)


def test_loss_is_the_lambda_weighted_denoiser_mse_by_hand():
    """2 images, sigma = 0.1 and 3.0: the U-Net (a real tiny seeded one) called at
    (c_in x, c_noise), D = c_skip x + c_out F, loss = mean(lambda (D - x0)^2), all from Table 1."""
    g = torch.Generator().manual_seed(0)
    x0 = 2 * torch.rand(2, 1, 8, 8, generator=g) - 1
    noise = torch.randn(2, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.1, 3.0])
    unet, labels = seeded_unet(), torch.tensor([0, 3])
    scheduler = edm_training_scheduler(edm_cfg())
    loss, logs = edm_loss(unet, x0, noise, sigma, scheduler, class_labels=labels)
    terms = []
    with torch.no_grad():
        for i, s in enumerate([0.1, 3.0]):
            c = table_1(s)
            x = x0[i:i + 1] + s * noise[i:i + 1]
            f = unet(c["c_in"] * x, torch.tensor([c["c_noise"]]), class_labels=labels[i:i + 1]).sample
            d = c["c_skip"] * x + c["c_out"] * f
            terms.append(c["lambda"] * ((d - x0[i:i + 1]) ** 2).mean())
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)
    assert logs == {"loss": pytest.approx(float(expected), rel=1e-5)}
    # a known network gives a known number: F = 0.5 * its input
    stub = RecordingUNet()
    loss, _ = edm_loss(stub, x0, noise, sigma, scheduler)
    by_hand = []
    for i, s in enumerate([0.1, 3.0]):
        c = table_1(s)
        x = x0[i] + s * noise[i]
        d = c["c_skip"] * x + c["c_out"] * 0.5 * c["c_in"] * x
        by_hand.append(c["lambda"] * ((d - x0[i]) ** 2).mean())
    assert float(loss) == pytest.approx(float(sum(by_hand) / 2), rel=1e-5)
    torch.testing.assert_close(stub.calls[0].timestep, sigma.log() / 4)


def test_objective_draws_sigma_noise_and_dropout_from_the_loop_generator():
    """The objective's loss of a batch equals the loss rebuilt by hand from the same generator:
    dropout draw, ln(sigma) ~ N(P_mean, P_std^2), n; the U-Net sees (c_in x, ln(sigma) / 4)."""
    cfg = edm_cfg("diffusion.cond_drop_prob=0.5", "edm.p_mean=-0.5", "edm.p_std=0.8",
                  "edm.sigma_data=0.6")
    objective = build_objective(cfg, num_classes=10)
    stub = RecordingUNet()
    x0 = 2 * torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) - 1
    labels = torch.arange(6)
    loss, _ = objective.loss("model", {"model": stub}, (x0, labels), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    drop = torch.rand(6, generator=g) < 0.5
    sigma = torch.exp(torch.randn(6, generator=g) * 0.8 - 0.5)
    noise = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * noise
    c_in = 1 / (s ** 2 + 0.36).sqrt()
    call = stub.calls[0]
    torch.testing.assert_close(call.timestep, sigma.log() / 4)
    torch.testing.assert_close(call.x_in, c_in * x)
    assert torch.equal(call.class_labels, torch.where(drop, torch.tensor(10), labels))
    d = 0.36 / (s ** 2 + 0.36) * x + s * 0.6 * c_in * 0.5 * c_in * x
    weight = (s ** 2 + 0.36) / (s * 0.6) ** 2
    assert float(loss) == pytest.approx(float((weight * (d - x0) ** 2).mean()), rel=1e-5)


def test_sigma_density_is_log_normal():
    """200k draws: ln(sigma) has EDM's mean -1.2 and std 1.2 (and another pair), median e^-1.2."""
    n, g = 200_000, torch.Generator().manual_seed(0)
    sigma = sample_edm_sigmas(n, g)
    assert sigma.shape == (n,) and sigma.dtype == torch.float32 and float(sigma.min()) > 0
    log_sigma = sigma.log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.01)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.01)
    assert float(sigma.median()) == pytest.approx(math.exp(-1.2), rel=0.01)
    other = sample_edm_sigmas(n, g, p_mean=0.4, p_std=0.5).log()
    assert (float(other.mean()), float(other.std())) == pytest.approx((0.4, 0.5), abs=0.01)
    # the objective's draw: the U-Net's timesteps are ln(sigma) / 4
    objective = build_objective(edm_cfg(), 10)
    stub = RecordingUNet()
    objective.denoising_loss(stub, torch.zeros(4000, 1, 1, 1), torch.Generator().manual_seed(0))
    log_sigma = 4 * stub.calls[0].timestep
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.06)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.06)


def test_c_noise_embedding_is_one_to_one_but_coarse():
    """What the module docstring states about feeding c_noise = ln(sigma) / 4 to UNet2DModel's
    sinusoidal embedding (32 channels, flip_sin_to_cos, no shift, as build_unet builds it): over
    sigma in [0.002, 80] its sin(c_noise) channel is monotone (one-to-one), 9 of 32 channels vary by
    more than 0.1 (DDPM's 0..999: 30), and neighbouring 18-step Karras sigmas are 0.1 - 0.4 apart
    (DDPM's 20 trailing steps: > 3.5)."""
    unet = seeded_unet(block_out_channels=(32, 64), norm_num_groups=8)
    assert unet.config.flip_sin_to_cos and unet.config.freq_shift == 0

    def embed(t):
        return get_timestep_embedding(t.double(), 32, flip_sin_to_cos=True,
                                      downscale_freq_shift=0).double()

    torch.testing.assert_close(unet.time_proj(torch.tensor([0.3, -1.1])).double(),
                               embed(torch.tensor([0.3, -1.1])), atol=1e-6, rtol=0)
    sigmas = torch.logspace(math.log10(0.002), math.log10(80), 200, dtype=torch.float64)
    e = embed(sigmas.log() / 4)
    sin_channel = e[:, 16]  # flip_sin_to_cos: cos then sin; channel 16 = sin(c_noise * 1)
    assert bool((sin_channel[1:] > sin_channel[:-1]).all())
    assert int(((e.max(0).values - e.min(0).values) > 0.1).sum()) == 9
    ddpm = embed(torch.arange(1000, dtype=torch.float64))
    assert int(((ddpm.max(0).values - ddpm.min(0).values) > 0.1).sum()) == 30
    ramp = torch.linspace(0, 1, 18, dtype=torch.float64)
    karras = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    gaps = embed(karras.log() / 4).diff(dim=0).norm(dim=1)
    assert 0.09 < float(gaps.min()) and float(gaps.max()) < 0.41
    trailing = torch.round(torch.linspace(999, 0, 20, dtype=torch.float64))
    assert float(embed(trailing).diff(dim=0).norm(dim=1).min()) > 3.5


@pytest.mark.parametrize("override,message", [
    ("edm.sampler=euler", r"edm.sampler must be an EDM sampler"),
    ("edm.sampler=flow-euler", r"edm.sampler must be an EDM sampler"),
    ("diffusion.sampler=edm-heun", r"does not read diffusion.sampler.*EDM is set in edm.\*"),
    ("diffusion.prediction_type=v_prediction", r"does not read diffusion.prediction_type"),
    ("diffusion.snr_gamma=5.0", r"does not read diffusion.snr_gamma"),
    ("edm.sigma_data=0", r"edm.sigma_data, edm.p_std and edm.rho must be > 0"),
    ("edm.p_std=-1", r"edm.sigma_data, edm.p_std and edm.rho must be > 0"),
    ("edm.sigma_min=100", r"0 < sigma_min < sigma_max"),
])
def test_edm_config_refusals(override, message):
    with pytest.raises(ValueError, match=message):
        edm_cfg(override)


def test_ddpm_objective_refuses_an_edm_sampler_at_load():
    with pytest.raises(ValueError, match=r"diffusion.sampler must be a sampler for DDPM models.*"
                                         r"got 'edm-heun' \(an EDM sampler: see train.objective=edm"):
        load_config(None, ["train.objective=diffusion", "diffusion.sampler=edm-heun"])


def test_committed_edm_config_matches_the_diffusion_recipe():
    from training_helpers import REPO

    edm = load_config(REPO / "training" / "configs" / "fashion_mnist_edm.yaml")
    ddpm = load_config(REPO / "training" / "configs" / "fashion_mnist_diffusion.yaml")
    assert edm.train.objective == "edm"
    assert (edm.edm.sigma_data, edm.edm.p_mean, edm.edm.p_std) == (0.5, -1.2, 1.2)
    assert (edm.edm.sigma_min, edm.edm.sigma_max, edm.edm.rho) == (0.002, 80.0, 7.0)
    for key in ("seed", "max_steps", "batch_size", "learning_rate", "lr_scheduler",
                "lr_warmup_steps", "mixed_precision", "use_ema", "ema_max_decay"):
        assert getattr(edm.train, key) == getattr(ddpm.train, key), key
    assert edm.model == ddpm.model and edm.data == ddpm.data
    assert edm.train.output_dir != ddpm.train.output_dir


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_tiny_edm_run_exports_an_edm_pipeline_that_reloads_and_samples(tmp_path):
    """3 steps of EDM through the one loop (sigma_max 40, sigma_data 0.6): the export is a
    DiffusionImagePipeline with diffusers' EDMEulerScheduler carrying the training schedule,
    reloads with from_pretrained, takes exactly the EDM samplers, and draws finite images with
    each (the NFE each counts), edm-heun with churn too; a DDPM sampler is refused by name."""
    from samplers import samplers_for
    from training.loop import train

    root = make_fashion_root(tmp_path / "data", n_train=64, n_test=16)
    cfg = edm_cfg(f"data.root={root}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=3",
                  "train.lr_warmup_steps=1", "edm.sigma_max=40", "edm.sigma_data=0.6")
    final = train(cfg)
    pipe = DiffusionImagePipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler) is EDMEulerScheduler
    c = pipe.scheduler.config
    assert (c.sigma_min, c.sigma_max, c.sigma_data, c.rho, c.prediction_type) == \
        (0.002, 40.0, 0.6, 7.0, "epsilon")
    assert samplers_for(pipe.scheduler) == ["edm-dpmpp-2m", "edm-euler", "edm-heun"]
    for sampler, nfe in (("edm-euler", 4), ("edm-heun", 7), ("edm-dpmpp-2m", 4), (None, 4)):
        out = pipe(class_labels=[0, 5], num_inference_steps=4, sampler=sampler, guidance_scale=2.0,
                   generator=generators(2), output_type="pt")
        assert out.nfe == nfe and out.images.shape == (2, 1, 28, 28), sampler
        assert torch.isfinite(out.images).all()
    from samplers import build_sampler

    churned = DiffusionImagePipeline(pipe.unet, build_sampler("edm-heun", pipe.scheduler,
                                                              s_churn=10.0), pipe.class_names)
    churned.set_progress_bar_config(disable=True)
    out = churned(class_labels=[0, 5], num_inference_steps=4, generator=generators(2),
                  output_type="pt")
    assert out.nfe == 7 and torch.isfinite(out.images).all()
    with pytest.raises(ValueError, match="is for DDPM models"):
        pipe(class_labels=[0], num_inference_steps=2, sampler="dpmpp-2m")


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_tiny_text_edm_run_exports_a_prompt_pipeline(tmp_path):
    """text-edm: captions through the frozen encoder (a tiny random BERT with the real MiniLM
    tokenizer, as the text-flow-matching test), the same preconditioned loss, an export that
    generates from prompts with the EDM samplers (edm-heun saved: our class reloads)."""
    pytest.importorskip("transformers")
    from diffusion.conditioning import build_tiny_text_encoder, load_tokenizer
    from diffusion.pipelines.loading import load_pipeline
    from training.loop import train

    encoder = tmp_path / "encoder"
    tokenizer = load_tokenizer()
    build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=16).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    cfg = load_config(None, [*TINY, "model.attention_levels=[1]", "train.objective=text-edm",
                             "data.name=fashion-mnist-captions", "data.subset=64",
                             f"text.encoder_path={encoder}", f"train.output_dir={tmp_path / 'run'}",
                             "text.sample_prompts=[a sneaker,a bag]", "train.max_steps=2",
                             "train.lr_warmup_steps=1", "edm.sampler=edm-heun"])
    pipe = load_pipeline(train(cfg), quiet=True)
    assert pipe.takes_text and type(pipe.scheduler).__name__ == "EDMHeunScheduler"
    out = pipe(prompt=["a photo of a sneaker", "a bag"], num_inference_steps=2,
               generator=generators(2), output_type="pt")
    assert out.nfe == 3 and torch.isfinite(out.images).all()
    out = pipe(prompt=["a bag"], num_inference_steps=3, sampler="edm-dpmpp-2m",
               generator=generators(1), output_type="pt")
    assert out.nfe == 3 and torch.isfinite(out.images).all()
