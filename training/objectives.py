"""Per-family training objectives: what the one loop in :mod:`training.loop` optimises.

An objective owns its trainable modules, says which optimizer trains which module (a GAN has two),
computes a loss for one optimizer on one micro-batch, and knows how to show progress (a sample
grid, an accuracy) and how to export its result. The loop owns everything else: data, devices,
mixed precision, accumulation, EMA, LR schedules, logging, checkpoints and resume.

Randomness (noise, timesteps, condition dropout, augmentation) comes from the ``generator`` the
loop passes in, whose state is checkpointed, so a resumed run draws exactly what a straight run
would have.
"""

from __future__ import annotations

from pathlib import Path
import logging
from typing import Dict

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from diffusion.models.classifier import ImageClassifier
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from diffusion.models.unet import build_unet
from samplers.diffusion import build_sampler
from training.config import ExperimentConfig

logger = logging.getLogger(__name__)

#: config name -> diffusers ``beta_schedule``
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


class Objective:
    """The seam between the loop and a model family. Subclasses set ``self.modules``."""

    #: the loop's training set (:class:`diffusion.data.datasets.TensorImageDataset`, images in [-1, 1]),
    #: set by :class:`training.loop.Trainer`; for evaluations that compare with real images
    train_data = None

    #: names in ``modules`` whose weights get an EMA copy (used for samples and export)
    ema_modules: tuple = ("model",)
    #: the optimizer step about to be taken (0-based); the loop sets it before each step's losses
    step: int = 0

    def __init__(self, cfg: ExperimentConfig, num_classes: int, class_names=()):
        self.cfg, self.num_classes, self.class_names = cfg, num_classes, list(class_names)
        self.modules: Dict[str, nn.Module] = {}

    def prepare_dataset(self, dataset):
        """The dataset the loop trains on, made from the loaded one (default: unchanged; the AR
        prior tokenises it once)."""
        return dataset

    def optimizer_groups(self) -> Dict[str, str]:
        """optimizer name -> module name; optimizers step in this order on each batch."""
        return {"model": "model"}

    def optimizer_settings(self) -> Dict[str, dict]:
        """optimizer name -> AdamW keyword overrides (``lr``, ``betas``, ...) of ``cfg.train``'s."""
        return {}

    def loss(self, optimizer: str, modules: Dict[str, nn.Module], batch, generator: torch.Generator):
        """``(loss, logs)`` for ``optimizer`` on one micro-batch; ``logs`` maps name -> float."""
        raise NotImplementedError

    def evaluate(self, modules: Dict[str, nn.Module], generator: torch.Generator):
        """``(scalars, image_grid or None)`` to log; ``modules`` hold EMA weights if enabled."""
        return {}, None

    def export(self, modules: Dict[str, nn.Module], out_dir: Path) -> None:
        """Write the trained model (``modules`` hold EMA weights if enabled) to ``out_dir``."""
        raise NotImplementedError


def training_scheduler(cfg: ExperimentConfig) -> DDPMScheduler:
    """The training noise schedule (forward process q(x_t | x_0), Ho et al. 2020, eq. 4)."""
    d = cfg.diffusion
    return DDPMScheduler(num_train_timesteps=d.num_train_timesteps, beta_start=d.beta_start,
                         beta_end=d.beta_end, beta_schedule=BETA_SCHEDULES[d.beta_schedule],
                         prediction_type=d.prediction_type)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 10-11) for each parameterisation.

    The x0-loss weight is ``min(SNR, gamma)``; an epsilon-MSE equals the x0-MSE times ``1/SNR``
    and a v-MSE equals it times ``1/(SNR + 1)``, so those are divided out.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


class DiffusionObjective(Objective):
    """Denoising loss ``|| f(x_t, t, c) - target ||^2`` (Ho et al. 2020, eq. 14), target by
    ``prediction_type``: noise (epsilon), v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022), or x0.
    Labels are replaced by the null class with probability ``cond_drop_prob``."""

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        m = cfg.model
        self.modules["model"] = build_unet(
            sample_size=cfg.data.image_size, in_channels=cfg.data.channels, num_classes=num_classes,
            block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
            attention_levels=m.attention_levels, attention_head_dim=m.attention_head_dim,
            norm_num_groups=m.norm_num_groups, dropout=m.dropout)
        self.noise_scheduler = training_scheduler(cfg)

    def loss(self, optimizer, modules, batch, generator):
        x0, labels = batch
        # 1. Condition dropout -> the null class (Ho & Salimans 2022, Alg. 1).
        drop = torch.rand(x0.shape[0], generator=generator) < self.cfg.diffusion.cond_drop_prob
        labels = torch.where(drop.to(x0.device), torch.full_like(labels, self.num_classes), labels)
        return self.denoising_loss(modules["model"], x0, generator, class_labels=labels)

    def denoising_loss(self, unet, x0, generator, **conditions):
        """``(loss, logs)`` of one noising of ``x0`` (steps 2-3), the U-Net called with
        ``conditions`` (``class_labels=...`` or text ``encoder_hidden_states=...``)."""
        d, sched = self.cfg.diffusion, self.noise_scheduler
        b, device = x0.shape[0], x0.device
        # 2. t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        x_t = sched.add_noise(x0, noise, t)
        target = {"epsilon": noise, "sample": x0}.get(d.prediction_type)
        if target is None:
            target = sched.get_velocity(x0, noise, t)
        pred = unet(x_t, t, **conditions).sample  # 3. the loss, min-SNR weighted if set
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if d.snr_gamma is not None:
            abar = sched.alphas_cumprod.to(device)[t]
            per_sample = per_sample * min_snr_weights(abar / (1 - abar), d.snr_gamma, d.prediction_type)
        loss = per_sample.mean()
        return loss, {"loss": loss.item()}

    def pipeline(self, unet) -> DiffusionImagePipeline:
        pipe = DiffusionImagePipeline(unet=unet,
                                      scheduler=build_sampler(self.cfg.diffusion.sampler,
                                                              self.noise_scheduler),
                                      class_names=self.class_names or None)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def evaluate(self, modules, generator):
        """A grid: one row per class (up to 10 classes, 10 images each), EMA weights."""
        d = self.cfg.diffusion
        unet = modules["model"]
        was_training = unet.training
        unet.eval()
        classes = list(range(min(self.num_classes, 10)))
        n = 10
        seeds = torch.randint(0, 2**31, (len(classes) * n,), generator=generator).tolist()
        out = self.pipeline(unet)(class_labels=classes, num_images_per_prompt=n,
                                  num_inference_steps=d.sample_steps, guidance_scale=d.guidance_scale,
                                  generator=[torch.Generator().manual_seed(s) for s in seeds],
                                  output_type="pt")
        scalars = self.evaluate_metrics(unet) if d.eval_num_samples > 0 else {}
        unet.train(was_training)
        from torchvision.utils import make_grid

        return scalars, make_grid(out.images, nrow=n, padding=1)

    def evaluate_metrics(self, unet) -> dict:
        """Cheap periodic evaluation: ``eval_metrics`` on ``eval_num_samples`` images (seed 0,
        the training sampler / steps / guidance) against ``data.eval_split``. Keys carry n, e.g.
        ``fid_n500``: FID at small n is biased upward, so only compare values at equal n."""
        from diffusion.evaluation import evaluate

        d, data = self.cfg.diffusion, self.cfg.data
        n = d.eval_num_samples
        result = evaluate(self.pipeline(unet), dataset=data.name, dataset_root=data.root,
                          metrics=d.eval_metrics, num_samples=n, batch_size=min(n, 250),
                          sampler=d.sampler, num_inference_steps=d.sample_steps,
                          guidance_scale=d.guidance_scale, seed=0,
                          feature_network=d.eval_feature_network, reference_split=data.eval_split,
                          cache_samples=False, progress=False)
        return {f"{m}_n{n}": result[m] for m in ("fid", "kid", "precision", "recall",
                                                  "inception_score", "accuracy") if m in result}

    def export(self, modules, out_dir):
        self.pipeline(modules["model"]).save_pretrained(out_dir, safe_serialization=True)


class ClassifierObjective(Objective):
    """Cross-entropy classifier with random-translation augmentation; evaluates test accuracy."""

    ema_modules = ()

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        c = cfg.classifier
        self.modules["model"] = ImageClassifier(in_channels=cfg.data.channels, num_classes=num_classes,
                                                channels=c.channels, dropout=c.dropout,
                                                class_names=list(class_names))
        self._eval_data = None

    def loss(self, optimizer, modules, batch, generator):
        x, labels = batch
        s = self.cfg.classifier.max_shift
        if s:
            # Random translation by up to s pixels: pad with background (-1) and crop.
            dx, dy = torch.randint(-s, s + 1, (2,), generator=generator).tolist()
            x = torch.roll(F.pad(x, (s, s, s, s), value=-1.0), shifts=(dy, dx), dims=(2, 3))
            x = x[:, :, s:-s, s:-s]
        logits = modules["model"](x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.classifier.label_smoothing)
        acc = (logits.argmax(1) == labels).float().mean().item()
        return loss, {"loss": loss.item(), "train_accuracy": acc}

    def evaluate(self, modules, generator):
        from diffusion.data import load_dataset

        if self._eval_data is None:
            d = self.cfg.data
            self._eval_data = load_dataset(d.name, split=d.eval_split, root=d.root,
                                           image_size=d.image_size, channels=d.channels)
        model = modules["model"]
        pred = model.predict(self._eval_data.images)
        acc = (pred == self._eval_data.labels).float().mean().item()
        return {f"{self.cfg.data.eval_split}_accuracy": acc}, None

    def export(self, modules, out_dir):
        modules["model"].save_pretrained(out_dir, safe_serialization=True)


# -- GAN -------------------------------------------------------------------------------------------

def hinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]`` (Lim & Ye 2017; Miyato et al. 2018, eq. 16).
    ``d_real``, ``d_fake``: logits ``(B,)``; returns a scalar."""
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


def hinge_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """``-E[D(G(z))]`` (Miyato et al. 2018, eq. 17)."""
    return -d_fake.mean()


def ns_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``-E[log sigmoid(D(x))] - E[log(1 - sigmoid(D(G(z))))]`` =
    ``E[softplus(-D(x))] + E[softplus(D(G(z)))]`` (Goodfellow et al. 2014, eq. 1)."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def ns_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating ``-E[log sigmoid(D(G(z)))]`` = ``E[softplus(-D(G(z)))]`` (Goodfellow et al.
    2014, sec. 3)."""
    return F.softplus(-d_fake).mean()


#: ``gan.loss`` -> (discriminator loss, generator loss)
GAN_LOSSES = {"hinge": (hinge_d_loss, hinge_g_loss), "non_saturating": (ns_d_loss, ns_g_loss)}


def r1_penalty(d_out_real: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """``E_x ||grad_x D(x)||^2`` over the batch (Mescheder et al. 2018, eq. 9, without the
    ``gamma / 2``), differentiable (``create_graph=True``) so it can be minimised.

    ``d_out_real``: logits ``(B,)`` computed from ``real_images`` ``(B, C, H, W)``, which must
    require grad. Each logit must depend on its own image only (no batch statistics in ``D``).
    """
    (grad,) = torch.autograd.grad(d_out_real.sum(), real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


#: collapse detector (GANObjective.diversity): generated images per class at each evaluation,
#: and real training images per class behind the reference diversity (computed once per run)
DIVERSITY_PER_CLASS = 50
DIVERSITY_REAL_PER_CLASS = 500


class GANObjective(Objective):
    """Conditional GAN (:mod:`diffusion.gan`): the discriminator steps first, then the generator,
    on each batch; fakes use the real batch's labels. Losses by ``gan.loss`` (hinge or
    non-saturating); lazy R1 on reals every ``gan.r1_every`` steps with weight
    ``gan.r1_gamma / 2 * r1_every`` (Karras et al. 2020, sec. 4 / App. B); optional DiffAugment
    applied with the same per-row parameters to reals and fakes in the discriminator step and
    freshly drawn in the generator step. Samples and export use the EMA generator.

    The discriminator's parameters are frozen (``requires_grad=False``) during the generator's
    loss, so its backward reaches the generator alone, and both networks run unwrapped there
    where no gradient sync is wanted.
    """

    ema_modules = ("generator",)

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        from diffusion.models.gan import ConditionalGenerator, ProjectionDiscriminator
        from training.diffaugment import parse_policy

        g, d = cfg.gan, cfg.data
        self.modules["generator"] = ConditionalGenerator(
            latent_dim=g.latent_dim, num_classes=num_classes, out_channels=d.channels,
            image_size=d.image_size, channels=g.generator_channels,
            layers_per_block=g.generator_layers_per_block)
        self.modules["discriminator"] = ProjectionDiscriminator(
            in_channels=d.channels, num_classes=num_classes, image_size=d.image_size,
            channels=g.discriminator_channels, layers_per_block=g.discriminator_layers_per_block)
        self.d_loss_fn, self.g_loss_fn = GAN_LOSSES[g.loss]
        self.policy = parse_policy(g.diffaugment)
        self._diversity_net = None      # ClassifierFeatures once loaded; False: detector off
        self._real_diversity = None     # float64 (num_classes,), real per-class diversity

    def optimizer_groups(self):
        return {"discriminator": "discriminator", "generator": "generator"}

    def optimizer_settings(self):
        g, lr = self.cfg.gan, self.cfg.train.learning_rate
        betas = tuple(float(b) for b in g.adam_betas)
        return {"discriminator": {"lr": lr if g.discriminator_lr is None else g.discriminator_lr,
                                  "betas": betas},
                "generator": {"lr": lr if g.generator_lr is None else g.generator_lr, "betas": betas}}

    def _augment(self, images, generator, params=None):
        from training.diffaugment import diff_augment, sample_augment_params

        if not self.policy:
            return images, None
        params = params or sample_augment_params(images.shape, self.policy, generator)
        return diff_augment(images, params), params

    def loss(self, optimizer, modules, batch, generator):
        g = self.cfg.gan
        x_real, labels = batch
        b, device = x_real.shape[0], x_real.device
        net_g, net_d = modules["generator"], modules["discriminator"]
        plain_g, plain_d = getattr(net_g, "module", net_g), getattr(net_d, "module", net_d)
        z = torch.randn(b, g.latent_dim, generator=generator).to(device, x_real.dtype)
        if optimizer == "discriminator":
            plain_d.requires_grad_(True)
            with torch.no_grad():
                x_fake = plain_g(z, labels)
            # 1. Lazy R1 (gradient w.r.t. the un-augmented reals) on every r1_every-th step.
            apply_r1 = g.r1_gamma > 0 and self.step % g.r1_every == 0
            x_real = x_real.detach().requires_grad_(apply_r1)
            real_in, params = self._augment(x_real, generator)
            fake_in, _ = self._augment(x_fake, generator, params)
            # 2. One forward over [reals; fakes] (D has no batch statistics).
            d_real, d_fake = net_d(torch.cat([real_in, fake_in]), torch.cat([labels, labels])).chunk(2)
            loss = self.d_loss_fn(d_real.float(), d_fake.float())
            logs = {"d_loss": loss.item(), "d_real": d_real.mean().item(),
                    "d_fake": d_fake.mean().item()}
            if apply_r1:
                r1 = r1_penalty(d_real, x_real)
                loss = loss + 0.5 * g.r1_gamma * g.r1_every * r1
                logs["r1"] = r1.item()
            return loss, logs
        if optimizer != "generator":
            raise ValueError(f"unknown optimizer {optimizer!r}; known: discriminator, generator")
        plain_d.requires_grad_(False)
        x_fake, _ = self._augment(net_g(z, labels), generator)
        d_fake = plain_d(x_fake, labels)
        loss = self.g_loss_fn(d_fake.float())
        return loss, {"g_loss": loss.item(), "d_fake": d_fake.mean().item()}

    def pipeline(self, generator_model):
        from diffusion.pipelines.gan import GANPipeline

        pipe = GANPipeline(generator_model=generator_model, class_names=self.class_names or None)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def evaluate(self, modules, generator):
        """A grid: one row per class (up to 10 classes, 10 images each), EMA generator, eval
        mode, truncation ``gan.truncation``; and the collapse detector's scalars
        (:meth:`diversity`)."""
        from torchvision.utils import make_grid

        classes = list(range(min(self.num_classes, 10)))
        n = 10
        seeds = torch.randint(0, 2**31, (len(classes) * n,), generator=generator).tolist()
        out = self.pipeline(modules["generator"])(
            class_labels=classes, num_images_per_prompt=n, truncation=self.cfg.gan.truncation,
            generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt")
        return self.diversity(modules["generator"], generator), make_grid(out.images, nrow=n, padding=1)

    def _diversity_setup(self):
        """Load the shipped classifier's features and the real per-class diversity, once per run
        (``self._real_diversity``); ``None`` features (with one log line) when they do not apply."""
        from diffusion.evaluation.diversity import class_diversity
        from diffusion.evaluation.features import ClassifierFeatures
        from diffusion.data import load_dataset

        d = self.cfg.data
        try:
            net = ClassifierFeatures()
        except FileNotFoundError as err:
            logger.info("collapse detector off: %s", err)
            return None
        size = None if net.image_size is None else tuple(net.image_size)
        if d.channels not in net.in_channels or (size is not None and size != (d.image_size,) * 2) \
                or self.num_classes is None or self.num_classes < 1:
            logger.info("collapse detector off: %s takes %s-channel %s images of a class-conditional "
                        "model; this run has %d-channel %dx%d images, num_classes=%s", net.name,
                        "/".join(map(str, net.in_channels)), size, d.channels, d.image_size,
                        d.image_size, self.num_classes)
            return None
        real = self.train_data
        if real is None:
            real = load_dataset(d.name, split=d.split, root=d.root, image_size=d.image_size,
                                channels=d.channels)
        perm = torch.randperm(len(real.labels), generator=torch.Generator().manual_seed(0))
        labels = real.labels[perm]
        counts = torch.bincount(real.labels, minlength=self.num_classes)
        if (counts < 2).any():
            logger.info("collapse detector off: classes %s have fewer than 2 real images",
                        torch.nonzero(counts < 2).flatten().tolist())
            return None
        keep = torch.cat([perm[labels == k][:DIVERSITY_REAL_PER_CLASS]
                          for k in range(self.num_classes)])
        with torch.autocast("cpu", enabled=False):
            feats = net((real.images[keep].float() + 1) / 2)      # [-1, 1] -> [0, 1]
        self._real_diversity = class_diversity(feats, real.labels[keep], self.num_classes)
        logger.info("collapse detector: %s features, real per-class diversity (n <= %d per class) "
                    "%s", net.name, DIVERSITY_REAL_PER_CLASS,
                    [round(v, 3) for v in self._real_diversity.tolist()])
        return net

    def diversity(self, generator_model, generator: torch.Generator) -> Dict[str, float]:
        """Collapse detector: per-class diversity of ``DIVERSITY_PER_CLASS`` generated images
        (untruncated) over that of real training images of the class, in the shipped classifier's
        penultimate features (:func:`diffusion.evaluation.diversity.diversity_ratios`).

        Returns ``{"diversity_ratio_min_n50": ..., "diversity_ratio_mean_n50": ...}`` (``n50``:
        50 generated images per class) and logs a warning naming every class whose ratio is below
        :data:`~diffusion.evaluation.diversity.COLLAPSE_THRESHOLD` (0.5). Returns ``{}`` when the
        images do not fit the classifier (not 28x28 grayscale) or it is missing (logged once).
        """
        from diffusion.evaluation.diversity import COLLAPSE_THRESHOLD, class_diversity, collapsed_classes

        if self._diversity_net is False:
            return {}
        if self._diversity_net is None:
            self._diversity_net = self._diversity_setup() or False
            if self._diversity_net is False:
                return {}
        net, n = self._diversity_net, DIVERSITY_PER_CLASS
        classes = list(range(self.num_classes))
        seeds = torch.randint(0, 2**31, (len(classes) * n,), generator=generator).tolist()
        images = self.pipeline(generator_model)(
            class_labels=classes, num_images_per_prompt=n, output_type="pt",
            generator=[torch.Generator().manual_seed(s) for s in seeds]).images  # (K*n, C, H, W)
        labels = torch.arange(len(classes)).repeat_interleave(n)
        with torch.autocast("cpu", enabled=False):
            fake = class_diversity(net(images.float().to(net.device)), labels, self.num_classes)
        ratios = fake / self._real_diversity
        for k in collapsed_classes(ratios, COLLAPSE_THRESHOLD):
            name = self.class_names[k] if k < len(self.class_names) else str(k)
            logger.warning("possible mode collapse in class %d (%s): diversity ratio %.3f < %.2f "
                           "(generated vs real, n=%d)", k, name, ratios[k].item(), COLLAPSE_THRESHOLD, n)
        return {f"diversity_ratio_min_n{n}": ratios.min().item(),
                f"diversity_ratio_mean_n{n}": ratios.mean().item()}

    def export(self, modules, out_dir):
        self.pipeline(modules["generator"]).save_pretrained(out_dir, safe_serialization=True)


#: objective name -> class, or ``"module:Class"`` imported on first use (the autoregressive
#: family's objectives live in their own module, which imports :class:`Objective` from here).
OBJECTIVES = {"diffusion": DiffusionObjective, "classifier": ClassifierObjective,
              "gan": GANObjective, "vqvae": "training.ar_objectives:VQVAEObjective",
              "prior": "training.ar_objectives:PriorObjective",
              "text-diffusion": "training.text_objectives:TextDiffusionObjective"}


def build_objective(cfg: ExperimentConfig, num_classes: int, class_names=()) -> Objective:
    """The objective named by ``cfg.train.objective``; raises ``ValueError`` for unknown names."""
    if cfg.train.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.train.objective!r}; known: {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[cfg.train.objective]
    if isinstance(cls, str):
        import importlib

        module, name = cls.split(":")
        cls = getattr(importlib.import_module(module), name)
    return cls(cfg, num_classes, class_names)
