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
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from diffusion.classifier import ImageClassifier
from diffusion.pipeline import DiffusionImagePipeline
from diffusion.unet import build_unet
from samplers.diffusion import build_sampler
from training.config import ExperimentConfig

#: config name -> diffusers ``beta_schedule``
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


class Objective:
    """The seam between the loop and a model family. Subclasses set ``self.modules``."""

    #: names in ``modules`` whose weights get an EMA copy (used for samples and export)
    ema_modules: tuple = ("model",)

    def __init__(self, cfg: ExperimentConfig, num_classes: int, class_names=()):
        self.cfg, self.num_classes, self.class_names = cfg, num_classes, list(class_names)
        self.modules: Dict[str, nn.Module] = {}

    def optimizer_groups(self) -> Dict[str, str]:
        """optimizer name -> module name; optimizers step in this order on each batch."""
        return {"model": "model"}

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
        d, sched = self.cfg.diffusion, self.noise_scheduler
        x0, labels = batch
        b, device = x0.shape[0], x0.device
        # 1. Condition dropout -> the null class (Ho & Salimans 2022, Alg. 1).
        drop = torch.rand(b, generator=generator) < d.cond_drop_prob
        labels = torch.where(drop.to(device), torch.full_like(labels, self.num_classes), labels)
        # 2. t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        x_t = sched.add_noise(x0, noise, t)
        target = {"epsilon": noise, "sample": x0}.get(d.prediction_type)
        if target is None:
            target = sched.get_velocity(x0, noise, t)
        pred = modules["model"](x_t, t, class_labels=labels).sample
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
        from training.data import load_dataset

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


OBJECTIVES = {"diffusion": DiffusionObjective, "classifier": ClassifierObjective}


def build_objective(cfg: ExperimentConfig, num_classes: int, class_names=()) -> Objective:
    """The objective named by ``cfg.train.objective``; raises ``ValueError`` for unknown names."""
    if cfg.train.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.train.objective!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[cfg.train.objective](cfg, num_classes, class_names)
