"""GAN baseline: diffusion/models/gan.py (networks), diffusion/pipelines/gan.py, training/objectives/gan.py,
training/diffaugment.py, training through training/loop.py, and `python -m diffusion generate`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.models.gan import ConditionalGenerator, ProjectionDiscriminator
from diffusion.pipelines.gan import GANPipeline, draw_latents
from diffusion.pipelines.loading import load_pipeline
from training.config import load_config
from diffusion.data.datasets import TensorImageDataset
from training.diffaugment import (cutout_mask, diff_augment, parse_policy, sample_augment_params,
                                  translate)
from training.loop import Trainer
from training.objectives import (GANObjective, hinge_d_loss, hinge_g_loss, ns_d_loss, ns_g_loss,
                                 r1_penalty)

NUM_CLASSES = 3
LATENT = 8


def seeded(cls, seed=0, **kwargs):
    """``cls(**kwargs)`` with weights from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


def tiny_generator(seed=0, **kw):
    return seeded(ConditionalGenerator, seed, **{**dict(latent_dim=LATENT, num_classes=NUM_CLASSES,
                                                          channels=(8, 4)), **kw})


def tiny_discriminator(seed=0, **kw):
    return seeded(ProjectionDiscriminator, seed,
                  **{**dict(num_classes=NUM_CLASSES, channels=(4, 8)), **kw})


def gens(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


@pytest.fixture
def pipe():
    g = tiny_generator()
    with torch.random.fork_rng(devices=[]):  # non-trivial BatchNorm running statistics
        torch.manual_seed(1)
        g.train()
        for _ in range(3):
            g(torch.randn(16, LATENT), torch.randint(0, NUM_CLASSES, (16,)))
    p = GANPipeline(generator_model=g.eval(), class_names=["T-shirt/top", "Trouser", "Bag"])
    p.set_progress_bar_config(disable=True)
    return p


# -- networks ------------------------------------------------------------------------------------

def test_generator_shapes_range_and_stage_rule():
    g = tiny_generator().eval()
    x = g(torch.randn(5, LATENT), torch.tensor([0, 1, 2, 0, 1]))
    assert x.shape == (5, 1, 28, 28) and x.abs().max() <= 1
    g32 = tiny_generator(channels=(8, 8, 4), image_size=32, out_channels=3).eval()
    assert g32(torch.randn(2, LATENT), torch.tensor([0, 2])).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*len\\(channels\\) = 8"):
        ConditionalGenerator(image_size=28, channels=(8, 8, 8))
    with pytest.raises(ValueError, match="class_labels must be given"):
        g(torch.randn(2, LATENT))
    # The class changes the image (conditional BatchNorm), once the per-class gains differ.
    with torch.no_grad():
        for norm in g.norms:
            norm.gamma.weight.normal_(1.0, 0.5, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, LATENT)
    assert (g(z, torch.tensor([0])) - g(z, torch.tensor([1]))).abs().max() > 1e-3


def test_discriminator_output_shape_and_projection_term():
    d = tiny_discriminator().eval()  # eval: no power iteration, weights fixed between calls
    x = torch.randn(4, 1, 28, 28)
    y0, y1 = torch.tensor([0, 0, 0, 0]), torch.tensor([1, 2, 1, 2])
    out0, out1 = d(x, y0), d(x, y1)
    assert out0.shape == (4,)
    with torch.no_grad():
        phi = d.features(x)                                      # (4, 8) sum-pooled features
        embed = d.embed.weight                                   # spectrally normalised table
        # D(x, y) - D(x, y') = <e_y - e_y', phi(x)>  (Miyato & Koyama 2018, eq. 3) ...
        torch.testing.assert_close(out1 - out0, ((embed[y1] - embed[y0]) * phi).sum(1))
        # ... and D(x, y) - <e_y, phi(x)> = psi(phi(x)) does not depend on y.
        torch.testing.assert_close(out0 - (embed[y0] * phi).sum(1), out1 - (embed[y1] * phi).sum(1))
    assert (out1 - out0).abs().min() > 1e-4                      # the class really matters
    with pytest.raises(ValueError, match="class_labels must be given"):
        d(x)


def test_spectral_norm_keeps_sigma_max_near_one_after_updates():
    """One power iteration per training forward (Miyato et al. 2018, Alg. 1): the estimate lags
    the weight updates by a few percent (most on the 4x9 first conv, whose top singular values
    are close: 2-6% over seeds 0-4 here), so the tolerance is 10%."""
    d = tiny_discriminator().train()
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, NUM_CLASSES, (8,), generator=g)
    for _ in range(30):
        loss = -d(x + 0.1 * torch.randn(x.shape, generator=g), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    d.eval()
    normalised = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(normalised) == len(d.convs) + 2                   # convs, psi, embedding
    raw, effective = [], []
    with torch.no_grad():
        for m in normalised:
            w_eff, w_raw = m.weight, m.parametrizations.weight.original
            raw.append(torch.linalg.matrix_norm(w_raw.reshape(w_raw.shape[0], -1), ord=2).item())
            effective.append(torch.linalg.matrix_norm(w_eff.reshape(w_eff.shape[0], -1), ord=2).item())
    assert max(raw) > 1.5 and min(raw) < 0.6                     # raw weights are far from 1
    assert all(abs(s - 1) < 0.1 for s in effective), effective


# -- losses and R1 ------------------------------------------------------------------------------------

def test_hinge_losses_on_hand_computed_values():
    d_real, d_fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # mean(relu(1 - [2, .5, -1])) = (0 + .5 + 2) / 3; mean(relu(1 + [-2, 0, 1.5])) = (0 + 1 + 2.5) / 3
    assert hinge_d_loss(d_real, d_fake).item() == pytest.approx(2.0)
    assert hinge_g_loss(d_fake).item() == pytest.approx(0.5 / 3)      # -mean(-2, 0, 1.5)


def test_non_saturating_losses_on_hand_computed_values():
    zero, log3 = torch.zeros(2), torch.full((2,), math.log(3.0))
    assert ns_d_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    # sigmoid(log 3) = 3/4: -log(3/4) - log(1 - 3/4) = log(4/3) + log(4)
    assert ns_d_loss(log3, log3).item() == pytest.approx(math.log(4 / 3) + math.log(4))
    assert ns_g_loss(log3).item() == pytest.approx(math.log(4 / 3))
    assert ns_g_loss(-log3).item() == pytest.approx(math.log(4))


def test_r1_penalty_on_a_linear_critic_is_the_squared_weight_norm():
    w = torch.randn(1 * 6 * 6, requires_grad=True)
    x = torch.randn(5, 1, 6, 6, requires_grad=True)
    d_out = x.flatten(1) @ w + 0.3                               # grad_x D = w for every image
    r1 = r1_penalty(d_out, x)
    assert r1.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-6)
    (grad_w,) = torch.autograd.grad(r1, w)                      # create_graph: d r1 / dw = 2 w
    torch.testing.assert_close(grad_w, 2 * w.detach())


def test_r1_penalty_equals_per_image_autograd_reference():
    d = tiny_discriminator().eval()
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    r1 = r1_penalty(d(x, y), x)
    reference = []
    for i in range(3):
        xi = x[i : i + 1].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(d(xi, y[i : i + 1]).sum(), xi)
        reference.append(g.pow(2).sum())
    assert r1.item() == pytest.approx(torch.stack(reference).mean().item(), rel=1e-5)
    assert r1.item() > 0


# -- DiffAugment -------------------------------------------------------------------------------------

def test_translation_is_a_zero_filled_shift():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = translate(x, torch.tensor([[1, -2], [0, 0]]))
    expected = torch.zeros(5, 5)
    expected[1:, :3] = x[0, 0, :4, 2:]                           # down 1, left 2
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[1], x[1])


def test_cutout_zeroes_a_half_size_square_and_augmentation_is_differentiable():
    mask = cutout_mask((2, 1, 28, 28), torch.tensor([[3, 5], [-10, 20]]))
    assert (mask[0] == 0).sum() == 14 * 14 and mask[0, 0, 3, 5] == 0 and mask[0, 0, 17, 5] == 1
    assert (mask[1] == 0).sum() == 4 * 8                         # clipped at the borders
    policy = parse_policy("color,translation,cutout")
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    params = sample_augment_params(x.shape, policy, torch.Generator().manual_seed(0))
    out = diff_augment(x, params)
    # The same params give the same transform (reals and fakes share it), new draws differ.
    torch.testing.assert_close(out, diff_augment(x, params))
    other = sample_augment_params(x.shape, policy, torch.Generator().manual_seed(1))
    assert not torch.allclose(out, diff_augment(x, other))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="unknown DiffAugment policies \\['flip'\\]"):
        parse_policy("color,flip")


# -- pipeline ----------------------------------------------------------------------------------------

def test_same_seed_same_images_independent_of_batch_and_nfe_is_one(pipe):
    out = pipe(class_labels=[0, 1, 2], generator=gens(3), output_type="pt")
    assert out.nfe == 1 and out.images.shape == (3, 1, 28, 28)
    assert 0 <= out.images.min() and out.images.max() <= 1
    again = pipe(class_labels=[0, 1, 2], generator=gens(3), output_type="pt").images
    torch.testing.assert_close(out.images, again, rtol=0, atol=0)
    alone = pipe(class_labels=[1], generator=gens(1, offset=1), output_type="pt").images
    torch.testing.assert_close(alone[0], out.images[1], rtol=0, atol=1e-6)
    other = pipe(class_labels=[0, 1, 2], generator=gens(3, offset=10), output_type="pt").images
    assert (other - out.images).abs().max() > 1e-3
    # num_images_per_prompt repeats labels in place; PIL output is 28x28 grayscale.
    pil = pipe(class_labels=[2], num_images_per_prompt=2, generator=gens(2))
    assert len(pil.images) == 2 and pil.images[0].size == (28, 28) and pil.images[0].mode == "L"
    assert pipe.generator_model.training is False


def test_given_latents_are_used_and_generator_mode_is_restored(pipe):
    z = draw_latents(2, LATENT, gens(2))
    a = pipe(class_labels=[0, 1], latents=z, output_type="pt").images
    b = pipe(class_labels=[0, 1], generator=gens(2), output_type="pt").images
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    pipe.generator_model.train()
    pipe(class_labels=[0], generator=gens(1), output_type="pt")
    assert pipe.generator_model.training                         # mode restored after the call


def test_truncation_resamples_only_components_beyond_the_threshold(pipe):
    full = draw_latents(4, 64, gens(4))
    cut = draw_latents(4, 64, gens(4), truncation=0.5)
    inside = full.abs() <= 0.5
    assert cut.abs().max() <= 0.5 and (~inside).any()
    torch.testing.assert_close(cut[inside], full[inside], rtol=0, atol=0)
    assert (cut[~inside] != full[~inside]).all()
    assert (cut.norm(dim=1) < full.norm(dim=1)).all()
    # Batch-independent too, and the pipeline uses the truncated latents.
    torch.testing.assert_close(draw_latents(1, 64, gens(1, offset=2), truncation=0.5)[0], cut[2])
    out = pipe(class_labels=[0, 1], generator=gens(2), truncation=0.5, output_type="pt").images
    ref = pipe(class_labels=[0, 1], latents=draw_latents(2, LATENT, gens(2), truncation=0.5),
               output_type="pt").images
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(class_labels=[0], prompt="a shirt"), "no text encoder"),
    (dict(class_labels=None), "class_labels is required"),
    (dict(class_labels=[3]), "integers in \\[0, 2\\]"),
    (dict(class_labels=[0], truncation=0.0), "truncation must be None or a finite number >= 0.01"),
    (dict(class_labels=[0], truncation=0.5, latents=torch.zeros(1, LATENT)), "not both"),
    (dict(class_labels=[0], latents=torch.zeros(1, 5)), "latents must have shape \\(1, 8\\)"),
    (dict(class_labels=[0, 1], generator=gens(1)), "got 1 generators for 2 images"),
    (dict(class_labels=[0], output_type="jpg"), "output_type must be one of"),
    (dict(class_labels=[0], num_images_per_prompt=0), "num_images_per_prompt must be an int >= 1"),
])
def test_bad_arguments_raise_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_save_load_round_trip_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "gan", safe_serialization=True)
    assert (tmp_path / "gan" / "generator_model" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_pipeline(tmp_path / "gan", quiet=True)
    assert type(loaded) is GANPipeline and loaded.config.class_names == pipe.config.class_names
    a = pipe(class_labels=[0, 2], generator=gens(2), output_type="np").images
    b = loaded(class_labels=[0, 2], generator=gens(2), output_type="np").images
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    assert loaded.class_id("bag") == 2


def test_evaluation_sampling_gives_uint8_images_and_nfe_one(pipe):
    from diffusion.evaluation import generate_samples

    run = generate_samples(pipe, 6, progress=False, batch_size=4)
    assert run.images.dtype == torch.uint8 and run.images.shape == (6, 1, 28, 28)
    assert run.nfe == 1 and run.labels.tolist() == [0, 1, 2, 0, 1, 2]
    expected = pipe(class_labels=[1], generator=gens(1, offset=4), output_type="pt").images
    assert (run.images[4].float() - expected[0] * 255).abs().max() <= 1


def test_cli_generate_loads_a_gan_and_passes_no_sampler_arguments(pipe, tmp_path, capsys):
    from diffusion.__main__ import main

    pipe.save_pretrained(tmp_path / "gan")
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(tmp_path / "gan"), "--per-class", "2",
                 "--truncation", "0.8", "--out", str(out), "--quiet"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[:2] == (2 + 3 * 30, 2 + 2 * 30)            # 3 class rows x 2, 2-px padding
    printed = capsys.readouterr().out
    assert "GANPipeline NFE=1" in printed and "6 images" in printed


def test_cli_truncation_on_a_diffusion_model_is_a_clear_error(tmp_path):
    from conftest import make_pipe
    from diffusion.__main__ import main

    make_pipe().save_pretrained(tmp_path / "dm")
    with pytest.raises(SystemExit, match="--truncation: only gan pipelines take this; this is a diffusion model"):
        main(["generate", "--model", str(tmp_path / "dm"), "--truncation", "0.5", "--quiet"])


# -- config --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("gan.loss=wasserstein", "gan.loss must be one of"),
    ("gan.diffaugment=color,flip", "gan.diffaugment may list"),
    ("gan.r1_every=0", "gan.r1_every must be an int >= 1"),
])
def test_bad_gan_config_is_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_shipped_gan_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "training" / "configs" / "fashion_mnist_gan.yaml")
    assert cfg.train.objective == "gan" and cfg.gan.loss == "hinge"
    assert (cfg.gan.generator_lr, cfg.gan.discriminator_lr) == (2e-4, 2e-4)
    assert (cfg.train.max_steps, cfg.train.sample_every) == (6000, 250)   # the shipped run


# -- training through the one loop ------------------------------------------------------------------

GAN_TINY = ("train.objective=gan", f"gan.latent_dim={LATENT}", "gan.generator_channels=[8,4]",
            "gan.discriminator_channels=[4,8]", "data.image_size=28", "train.batch_size=8",
            "train.mixed_precision=no", "train.num_threads=1", "train.log_every=1",
            "train.sample_every=0", "train.checkpoint_every=0", "train.lr_scheduler=constant",
            "train.lr_warmup_steps=0", "train.max_grad_norm=null", "train.ema_warmup=false",
            "train.ema_max_decay=0.5", "gan.generator_lr=1e-3", "gan.discriminator_lr=4e-3",
            "gan.adam_betas=[0.5,0.99]", "gan.r1_gamma=1.0", "gan.r1_every=2",
            "gan.diffaugment=color,translation,cutout")


@pytest.fixture(autouse=True)
def _fresh_accelerate(fresh_accelerate_state):
    """No accelerate singletons leak between tests (fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def dataset():
    """32 images 28x28 in [-1, 1], 3 classes: a bright bar whose row depends on the class."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (32,), generator=g)
    images = torch.rand(32, 1, 28, 28, generator=g) * 0.4 - 1
    for i, y in enumerate(labels.tolist()):
        images[i, 0, 4 + 8 * y : 8 + 8 * y, 4:24] = 1.0
    return TensorImageDataset(images, labels, ["a", "b", "c"])


def gan_trainer(dataset, out, *overrides):
    return Trainer(load_config(None, [*GAN_TINY, f"train.output_dir={out}", *overrides]),
                   dataset=dataset)


def snapshot(trainer):
    """Parameters and buffers of both networks, the EMA generator, both optimizers' states."""
    acc = trainer.accelerator
    nets = {f"{n}.{k}": v.detach().clone() for n, m in trainer.modules.items()
            for k, v in acc.unwrap_model(m).state_dict().items()}
    ema = {f"ema.{i}": p.clone() for i, p in enumerate(trainer.emas["generator"].shadow_params)}
    opts = {f"{n}.{i}.{k}": v.clone() for n, o in trainer.optimizers.items()
            for i, s in enumerate(o.optimizer.state.values()) for k, v in s.items()}
    return {**nets, **ema, **opts}


def test_objective_registers_two_optimizers_with_ttur_settings(dataset, tmp_path):
    trainer = gan_trainer(dataset, tmp_path)
    assert isinstance(trainer.objective, GANObjective)
    assert list(trainer.groups) == ["discriminator", "generator"]
    for name, lr in (("discriminator", 4e-3), ("generator", 1e-3)):
        group = trainer.optimizers[name].param_groups[0]
        assert group["lr"] == lr and group["betas"] == (0.5, 0.99)
    assert set(trainer.emas) == {"generator"}


def test_one_training_step_changes_both_networks_and_logs_both_losses(dataset, tmp_path):
    trainer = gan_trainer(dataset, tmp_path)
    before = snapshot(trainer)
    data = iter([batch for batch in trainer.loader])
    logs = trainer.train_step(data)
    after = snapshot(trainer)
    for net in ("generator", "discriminator"):
        changed = [k for k in before if k.startswith(net + ".") and "running" not in k
                   and "num_batches" not in k and not torch.equal(before[k], after[k])]
        assert changed, f"{net} did not change"
    for key in ("discriminator/d_loss", "discriminator/d_real", "discriminator/d_fake",
                "discriminator/r1", "generator/g_loss", "generator/d_fake"):
        assert math.isfinite(logs[key]), key
    # Hinge loss is >= 0 at any D; r1 applied at step 0 (0 % r1_every == 0), not at step 1.
    assert logs["discriminator/d_loss"] >= 0
    assert "discriminator/r1" not in trainer.train_step(data)
    # The generator step leaves no gradient on the (frozen) discriminator.
    assert all(p.grad is None for p in trainer.modules["discriminator"].parameters())


def test_resume_equals_a_straight_run_and_exports_a_gan_pipeline(dataset, tmp_path):
    straight = gan_trainer(dataset, tmp_path / "straight", "train.max_steps=4")
    final = straight.run()
    split = tmp_path / "split"
    gan_trainer(dataset, split, "train.max_steps=2", "train.export=false").run()
    ckpt = split / "checkpoints" / "checkpoint-0000002"
    assert {"model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin"} <= {
        p.name for p in ckpt.iterdir()}                      # both nets and both optimizers
    resumed = gan_trainer(dataset, split, "train.max_steps=4", "train.export=false")
    resumed.run()
    assert resumed.state.step == 4
    a, b = snapshot(straight), snapshot(resumed)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # The export is the EMA generator as a GANPipeline, and the sample grid was written.
    pipe = load_pipeline(final, quiet=True)
    ema = straight.emas["generator"].shadow_params
    for p, s in zip(pipe.generator_model.parameters(), ema):
        torch.testing.assert_close(p.detach(), s, rtol=0, atol=0)
    assert pipe(class_labels=[0], generator=gens(1), output_type="pt").nfe == 1
    assert (tmp_path / "straight" / "samples" / "step-0000004.png").is_file()


def test_evaluate_scores_a_gan_and_ignores_diffusion_settings(pipe, tmp_path):
    from diffusion.evaluation import evaluate
    from diffusion.data.datasets import TensorImageDataset

    real = TensorImageDataset(torch.rand(30, 1, 28, 28) * 2 - 1, torch.arange(30) % NUM_CLASSES,
                              ["a", "b", "c"])
    r = evaluate(pipe, real, metrics="fid,kid,precision,recall", num_samples=9,
                 sampler="dpmpp-2m", num_inference_steps=20, guidance_scale=2.0,
                 cache_dir=tmp_path, progress=False)
    assert r["nfe"] == 1 and r["n"] == 9 and r["pipeline"] == "GANPipeline"
    assert r["sampler"] is None and r["num_inference_steps"] is None and r["fid"] > 0
    trunc = evaluate(pipe, real, metrics="fid", num_samples=9, cache_dir=tmp_path, progress=False,
                     pipeline_kwargs={"truncation": 0.5})
    assert trunc["generated"] == 9 and trunc["fid"] != r["fid"]  # another cache key, other images
