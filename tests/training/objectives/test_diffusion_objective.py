"""Diffusion objective (training/objectives/diffusion.py): noise schedules, targets per prediction
type, min-SNR weights, condition dropout - against values computed independently here."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from training.config import load_config
from training.objectives.diffusion import DiffusionObjective, min_snr_weights, training_scheduler

TINY = ["model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.layers_per_block=1",
        "model.attention_levels=[]", "model.attention_head_dim=8"]


class ZeroModel(torch.nn.Module):
    """Predicts zeros and records the class labels it was given."""

    def __init__(self):
        super().__init__()
        self.labels = []

    def forward(self, x, t, class_labels=None):
        self.labels.append(class_labels.clone())
        return SimpleNamespace(sample=torch.zeros_like(x))


def objective(*overrides):
    obj = DiffusionObjective(load_config(None, [*TINY, *overrides]), num_classes=10)
    obj.modules["model"] = ZeroModel()
    return obj


def test_noise_schedules_match_their_definitions():
    linear = training_scheduler(load_config(None, []))
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(linear.betas, torch.linspace(1e-4, 0.02, 1000))
    cosine = training_scheduler(load_config(None, ["diffusion.beta_schedule=cosine"]))
    # Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)
    f = lambda t: torch.cos(torch.tensor((t / 1000 + 0.008) / 1.008 * torch.pi / 2)) ** 2
    assert cosine.alphas_cumprod[499].item() == pytest.approx((f(500) / f(0)).item(), rel=1e-3)
    sigmoid = training_scheduler(load_config(None, ["diffusion.beta_schedule=sigmoid"]))
    assert torch.allclose(sigmoid.betas, torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.02 - 1e-4) + 1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_target_per_prediction_type(prediction_type):
    obj = objective(f"diffusion.prediction_type={prediction_type}", "diffusion.cond_drop_prob=0")
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3])
    loss, _ = obj.loss("model", obj.modules, (x0, labels), torch.Generator().manual_seed(3))
    # Draw what the objective draws, in its order: dropout, t, eps.
    g = torch.Generator().manual_seed(3)
    torch.rand(4, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = obj.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = {"epsilon": eps, "sample": x0,
              "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction_type]
    assert loss.item() == pytest.approx(target.pow(2).mean().item(), rel=1e-5)


def test_min_snr_weights_reference_values():
    snr = torch.tensor([0.5, 5.0, 50.0])
    assert torch.allclose(min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.1]))
    assert torch.allclose(min_snr_weights(snr, 5.0, "v_prediction"),
                          torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))
    assert torch.allclose(min_snr_weights(snr, 5.0, "sample"), torch.tensor([0.5, 5.0, 5.0]))


def _min_snr_closed_form(snr: float, gamma: float, prediction_type: str) -> float:
    """Hang et al. 2023, eq. 10-11 in plain floats, with the epsilon weight's limit 1 at SNR = 0
    (min(SNR, gamma) / SNR = 1 for every 0 < SNR <= gamma)."""
    clipped = min(snr, gamma)
    if prediction_type == "epsilon":
        return 1.0 if snr == 0 else clipped / snr
    if prediction_type == "v_prediction":
        return 0.0 if snr == float("inf") else clipped / (snr + 1)
    return clipped


SNRS = [0.0, 1e-38, 1e-6, 0.5, 5.0, 50.0, 1e20, 3e38, float("inf")]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_match_the_closed_form_at_every_snr(prediction_type, gamma):
    """Finite everywhere, including SNR = 0 (formerly 0/0 = NaN for epsilon) and SNR -> inf."""
    weights = min_snr_weights(torch.tensor(SNRS), gamma, prediction_type)
    assert torch.isfinite(weights).all(), weights
    expected = torch.tensor([_min_snr_closed_form(s, gamma, prediction_type) for s in SNRS])
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=0.0)


def test_min_snr_loss_is_finite_where_alphas_cumprod_underflows_to_zero():
    """beta_end=0.5: alphas_cumprod is exactly 0 in float32 from t = 609 on (SNR = 0), where
    the epsilon weight is its limit 1."""
    obj = objective("diffusion.cond_drop_prob=0", "diffusion.snr_gamma=5", "diffusion.beta_end=0.5")
    x0, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    g = torch.Generator().manual_seed(0)
    torch.rand(64, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = obj.noise_scheduler.alphas_cumprod[t].double()
    assert (abar == 0).any()
    snr = abar / (1 - abar)
    w = torch.where(snr == 0, 1.0, torch.clamp(snr, max=5.0) / snr)  # the closed form
    expected = (eps.double().pow(2).mean(dim=(1, 2, 3)) * w).mean()
    loss, _ = obj.loss("model", obj.modules, (x0, labels), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_min_snr_loss_is_the_weighted_mean():
    x0, labels = torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)
    plain = objective("diffusion.cond_drop_prob=0")
    weighted = objective("diffusion.cond_drop_prob=0", "diffusion.snr_gamma=5")
    g = torch.Generator().manual_seed(0)
    torch.rand(6, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = plain.noise_scheduler.alphas_cumprod[t]
    w = min_snr_weights(abar / (1 - abar), 5.0, "epsilon")
    expected = (eps.pow(2).mean(dim=(1, 2, 3)) * w).mean()
    loss, _ = weighted.loss("model", weighted.modules, (x0, labels), torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("p, expected_null", [(0.0, 0), (1.0, 64)])
def test_condition_dropout_replaces_labels_by_the_null_class(p, expected_null):
    obj = objective(f"diffusion.cond_drop_prob={p}")
    x0, labels = torch.zeros(64, 1, 28, 28), torch.arange(64) % 10
    obj.loss("model", obj.modules, (x0, labels), torch.Generator().manual_seed(0))
    seen = obj.modules["model"].labels[0]
    assert int((seen == 10).sum()) == expected_null
    if p == 0.0:
        assert torch.equal(seen, labels)


def test_condition_dropout_rate_is_close_to_p():
    obj = objective("diffusion.cond_drop_prob=0.1")
    labels = torch.arange(4000) % 10
    obj.loss("model", obj.modules, (torch.zeros(4000, 1, 28, 28), labels), torch.Generator().manual_seed(0))
    rate = (obj.modules["model"].labels[0] == 10).float().mean().item()
    assert 0.08 < rate < 0.12


def test_periodic_evaluation_reports_metrics_with_n_in_their_names(tmp_path, monkeypatch):
    """``diffusion.eval_num_samples`` adds FID/KID/accuracy on that many samples to the grid,
    against the data's eval split (here a synthetic 64-image Fashion-MNIST-like test split)."""
    from training_helpers import make_fashion_root

    monkeypatch.setenv("DIFFUSION_CENTRIC_CACHE", str(tmp_path / "cache"))
    root = make_fashion_root(tmp_path / "data", n_train=32, n_test=64)
    cfg = load_config(None, [*TINY, f"data.root={root}", "diffusion.eval_num_samples=20",
                             "diffusion.sample_steps=2", "diffusion.sampler=ddim"])
    obj = DiffusionObjective(cfg, num_classes=10)
    with torch.no_grad():
        scalars, grid = obj.evaluate(obj.modules, torch.Generator().manual_seed(0))
    assert sorted(scalars) == ["accuracy_n20", "fid_n20", "kid_n20"]
    assert scalars["fid_n20"] > 0 and 0 <= scalars["accuracy_n20"] <= 1
    assert grid.shape[0] == 3  # the sample grid is still made
    refs = [p.name for p in (tmp_path / "cache" / "reference").iterdir()]
    assert len(refs) == 1 and "-test-nall-" in refs[0]
    assert not (tmp_path / "cache" / "samples").exists()  # training samples are not cached


# -- zero terminal SNR (Lin et al. 2024) ---------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_zero_terminal_snr_schedule_ends_at_snr_zero_with_finite_min_snr_weights(prediction_type):
    """Rescaled betas (Lin et al. 2024, Alg. 1): abar_{T-1} = 0 exactly, abar_0 unchanged; the
    min-SNR weights stay finite at every t (0 for v and x0 at SNR 0, min(SNR, gamma) = 0); the
    exported pipeline's sampler carries the option."""
    obj = objective("diffusion.rescale_betas_zero_snr=true", f"diffusion.prediction_type={prediction_type}",
                    "diffusion.snr_gamma=5", "diffusion.cond_drop_prob=0")
    abar = obj.noise_scheduler.alphas_cumprod
    assert float(abar[-1]) == 0.0 and float(abar[-2]) > 0
    plain = training_scheduler(load_config(None, []))
    assert float(abar[0]) == pytest.approx(float(plain.alphas_cumprod[0]), rel=1e-5)
    snr = abar.double() / (1 - abar.double())
    weights = min_snr_weights(snr, 5.0, prediction_type)
    assert torch.isfinite(weights).all() and float(weights[-1]) == 0.0
    x0, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    loss, _ = obj.loss("model", obj.modules, (x0, labels), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    scheduler = obj.pipeline(obj.build_unet()).scheduler
    assert scheduler.config.rescale_betas_zero_snr is True


def test_zero_terminal_snr_off_builds_the_schedule_of_before():
    """Off, the schedule is built with the arguments of before (its config, _use_default_values
    included, is unchanged)."""
    before = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                           beta_schedule="linear", prediction_type="epsilon")
    assert training_scheduler(load_config(None, [])).config == before.config


@pytest.mark.parametrize("prediction_type", ["epsilon"])
def test_zero_terminal_snr_with_an_epsilon_model_is_refused_at_load(prediction_type):
    with pytest.raises(ValueError, match=r"diffusion\.rescale_betas_zero_snr.*diffusion\.prediction_type"
                                         r"=v_prediction.*'epsilon'"):
        load_config(None, ["diffusion.rescale_betas_zero_snr=true",
                           f"diffusion.prediction_type={prediction_type}"])


@pytest.mark.slow  # trains 3 steps and samples twice: ~5 s on 2 cores
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_zero_terminal_snr_run_exports_a_pipeline_that_samples_finite_images(tmp_path):
    """Train a few steps with v-prediction on zero terminal SNR, load the export, generate with
    its sampler and with euler: finite images; heun is refused by name."""
    from diffusion.pipelines.loading import load_pipeline
    from training.loop import Trainer
    from training_helpers import TINY as RUN_TINY
    from training_helpers import make_fashion_root

    root = make_fashion_root(tmp_path / "data", n_train=32, n_test=16)
    cfg = load_config(None, [*RUN_TINY, f"data.root={root}", f"train.output_dir={tmp_path / 'run'}",
                             "train.max_steps=3", "diffusion.prediction_type=v_prediction",
                             "diffusion.rescale_betas_zero_snr=true", "diffusion.sampler=ddim"])
    pipe = load_pipeline(Trainer(cfg).run(), quiet=True)
    assert pipe.scheduler.config.rescale_betas_zero_snr is True
    assert float(pipe.scheduler.alphas_cumprod[-1]) == 0.0
    for sampler in (None, "euler"):
        images = pipe(class_labels=[0, 1], num_inference_steps=3, guidance_scale=1.0, sampler=sampler,
                      generator=torch.Generator().manual_seed(0), output_type="pt").images
        assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all(), sampler
    with pytest.raises(ValueError, match=r"'heun' cannot sample a zero-terminal-SNR"):
        pipe(class_labels=[0], num_inference_steps=2, sampler="heun", output_type="pt")
