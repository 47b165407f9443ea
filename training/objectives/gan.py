"""The GAN objective (``train.objective=gan``): a conditional generator and a projection
discriminator (:mod:`diffusion.models.gan`), sampled and exported as a
:class:`~diffusion.pipelines.gan.GANPipeline`.

Losses by ``gan.loss`` (hinge or non-saturating), lazy R1 on reals, optional DiffAugment
(:mod:`training.diffaugment`), separate learning rates and Adam betas for both networks (TTUR),
and a mode-collapse detector at each evaluation (:meth:`GANObjective.diversity`).

Example::

    >>> import torch
    >>> from training.objectives.gan import hinge_d_loss
    >>> hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])).item()   # 0.5 + 0.5
    1.0
"""

from __future__ import annotations

import logging
from typing import Dict

import torch
import torch.nn.functional as F

from diffusion.data import load_dataset
from diffusion.models.gan import ConditionalGenerator, ProjectionDiscriminator
from diffusion.pipelines.gan import GANPipeline
from training.diffaugment import diff_augment, parse_policy, sample_augment_params
from training.objectives.base import Objective, draw_generators, quiet

logger = logging.getLogger(__name__)


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
    """Conditional GAN (:mod:`diffusion.models.gan`): the discriminator steps first, then the
    generator, on each batch; fakes use the real batch's labels. Losses by ``gan.loss`` (hinge or
    non-saturating); lazy R1 on reals every ``gan.r1_every`` steps with weight
    ``gan.r1_gamma / 2 * r1_every`` (Karras et al. 2020, sec. 4 / App. B); optional DiffAugment
    applied with the same per-row parameters to reals and fakes in the discriminator step and
    freshly drawn in the generator step. Samples and export use the EMA generator.

    The discriminator's parameters are frozen (``requires_grad=False``) during the generator's
    loss, so its backward reaches the generator alone, and both networks run unwrapped there
    where no gradient sync is wanted.
    """

    ema_modules = ("generator",)
    sample_module = "generator"

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
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

    def pipeline(self, generator_model) -> GANPipeline:
        return quiet(GANPipeline(generator_model=generator_model, class_names=self.class_names or None))

    def evaluate(self, modules, generator):
        """A grid: one row per class (up to 10 classes, 10 images each), EMA generator, eval
        mode (the pipeline's), truncation ``gan.truncation``; and the collapse detector's scalars
        (:meth:`diversity`)."""
        net = modules["generator"]
        grid = self.sample_grid(self.pipeline(net), generator, truncation=self.cfg.gan.truncation)
        return self.diversity(net, generator), grid

    def _diversity_setup(self):
        """Load the shipped classifier's features and the real per-class diversity, once per run
        (``self._real_diversity``); ``None`` features (with one log line) when they do not apply."""
        from diffusion.evaluation.diversity import class_diversity  # the evaluation stack, lazily
        from diffusion.evaluation.features import ClassifierFeatures

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
        images = self.pipeline(generator_model)(
            class_labels=classes, num_images_per_prompt=n, output_type="pt",
            generator=draw_generators(generator, len(classes) * n)).images  # (K*n, C, H, W)
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
