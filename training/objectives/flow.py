"""Flow matching (rectified flow) on the diffusion family's U-Net: ``train.objective=flow-matching``
(class labels) and ``text-flow-matching`` (captions).

The straight path from data to noise and its constant velocity (Lipman et al. 2023, eq. 20-23
with sigma_min = 0; Liu et al. 2023, eq. 1; the convention of SD3 and diffusers' flow schedulers)::

    x_t = (1 - sigma) x0 + sigma eps,    target v = eps - x0,    loss = || v_theta(x_t, t) - v ||^2

with ``sigma`` in [0, 1] drawn by ``flow.timestep_sampling`` (:func:`sample_flow_timesteps`:
uniform, logit-normal or mode; Esser et al. 2024, Sec. 3.1, through diffusers'
``compute_density_for_timestep_sampling``) and moved by ``flow.shift``
(:func:`shift_sigmas`, Esser et al. 2024, Sec. 5.3.2). The U-Net (``UNet2DModel``, the same
:func:`diffusion.models.unet.build_unet` as DDPM) is given ``t = sigma * T``,
``T = diffusion.num_train_timesteps``: the timesteps diffusers' flow schedulers give the network,
so sampling evaluates it where it was trained.

Everything else is the DDPM objective's (:class:`~training.objectives.diffusion.DiffusionObjective`):
class or caption dropout to the null condition (guidance), the sample grids, periodic metrics,
the export as a :class:`~diffusion.pipelines.diffusion.DiffusionImagePipeline`. The export's
scheduler is ``flow.sampler`` built on the training schedule - by default a
``FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=flow.shift)``, from which
``from_pretrained`` and every flow sampler (:func:`samplers.list_samplers` ``("flow")``) rebuild it.

Example::

    >>> from training.config import load_config
    >>> cfg = load_config(None, ["train.objective=flow-matching", "flow.shift=3.0"])
    >>> flow_training_scheduler(cfg).config.shift
    3.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from samplers.diffusion import list_samplers
# DDPM_ONLY_SETTINGS re-exported: it lived here before EDM shared it.
from training.objectives.diffusion import (DDPM_ONLY_SETTINGS, DiffusionObjective,  # noqa: F401
                                           TextDiffusionObjective, check_no_ddpm_settings)

#: ``flow.timestep_sampling`` -> diffusers' ``weighting_scheme`` name
TIMESTEP_SAMPLING = {"uniform": "none", "logit-normal": "logit_normal", "mode": "mode"}



def flow_training_scheduler(cfg) -> FlowMatchEulerDiscreteScheduler:
    """The flow training schedule of ``cfg``: ``num_train_timesteps`` from ``diffusion`` and
    ``shift`` from ``flow`` (what :func:`samplers.diffusion.flow_training_schedule` reads)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.diffusion.num_train_timesteps,
                                           shift=cfg.flow.shift)


def sample_flow_timesteps(scheme: str, batch_size: int, generator: torch.Generator = None,
                          logit_mean: float = 0.0, logit_std: float = 1.0,
                          mode_scale: float = 1.29) -> torch.Tensor:
    """``batch_size`` times ``t`` in [0, 1] (CPU float32 ``(B,)``) from the density ``scheme``
    (Esser et al. 2024, Sec. 3.1), drawn with diffusers' ``compute_density_for_timestep_sampling``:

    * ``"uniform"``: ``t ~ U(0, 1)``;
    * ``"logit-normal"``: ``logit(t) ~ N(logit_mean, logit_std^2)`` (eq. 19; SD3 uses 0, 1);
    * ``"mode"``: ``t = 1 - u - mode_scale (cos^2(pi u / 2) - 1 + u)``, ``u ~ U(0, 1)`` (eq. 20;
      a monotone map of [0, 1] onto itself for ``mode_scale`` in ``[-1, 2 / (pi - 2)]``).

    Raises:
        ValueError: an unknown ``scheme``.
    """
    if scheme not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep sampling must be one of {tuple(TIMESTEP_SAMPLING)}, got {scheme!r}")
    return compute_density_for_timestep_sampling(
        weighting_scheme=TIMESTEP_SAMPLING[scheme], batch_size=batch_size, logit_mean=logit_mean,
        logit_std=logit_std, mode_scale=mode_scale, device="cpu", generator=generator)


def shift_sigmas(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``sigma = shift t / (1 + (shift - 1) t)`` (Esser et al. 2024, eq. 23, with
    ``shift = sqrt(m / n)``): the identity for ``shift = 1``; ``shift > 1`` moves every ``t`` in
    (0, 1) towards noise, as ``FlowMatchEulerDiscreteScheduler(shift=...)`` does to its sigmas.
    Maps [0, 1] onto [0, 1], keeping 0 and 1."""
    return shift * t / (1 + (shift - 1) * t)


class FlowMatchingMixin:
    """What flow matching changes in a diffusion objective: the training schedule, the loss of
    one noising, the sampler, and its config checks. Mixed into the class and text objectives."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse a non-flow ``flow.sampler``, a non-positive ``flow.shift`` or ``flow.logit_std``,
        a ``flow.mode_scale`` whose map leaves [0, 1], and DDPM-only ``diffusion.*`` settings
        (:data:`DDPM_ONLY_SETTINGS`) changed from their defaults."""
        f = cfg.flow
        if f.sampler not in list_samplers("flow"):
            raise ValueError(f"flow.sampler must be a flow-matching sampler, one of "
                             f"{list_samplers('flow')}; got {f.sampler!r}")
        if not f.shift > 0 or not f.logit_std > 0:
            raise ValueError(f"flow.shift and flow.logit_std must be > 0, got {f.shift}, {f.logit_std}")
        if not -1 <= f.mode_scale <= 2 / (math.pi - 2):
            raise ValueError(f"flow.mode_scale must be in [-1, {2 / (math.pi - 2):.4f}] (else the "
                             f"mode density's t leaves [0, 1]), got {f.mode_scale}")
        check_no_ddpm_settings(cfg, "flow", "flow matching")

    def build_training_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return flow_training_scheduler(self.cfg)

    @property
    def sampler_name(self) -> str:
        """``flow.sampler``."""
        return self.cfg.flow.sampler

    def denoising_loss(self, unet, x0, generator, **conditions):
        """``(loss, logs)``: the velocity MSE of one noising of ``x0`` ``(B, C, H, W)`` in [-1, 1],
        the U-Net called with ``conditions``; logs ``loss``."""
        f, num_train_timesteps = self.cfg.flow, self.cfg.diffusion.num_train_timesteps
        # 2. t ~ p(t), sigma = shift(t), eps ~ N(0, I) - all on the loop's CPU generator.
        t = sample_flow_timesteps(f.timestep_sampling, x0.shape[0], generator, f.logit_mean,
                                  f.logit_std, f.mode_scale)
        sigma = shift_sigmas(t, f.shift).to(x0.device)                        # (B,)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return flow_matching_loss(unet, x0, noise, sigma, num_train_timesteps, **conditions)


def flow_matching_loss(unet, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                       num_train_timesteps: int, **conditions):
    """``(loss, {"loss": float})``: ``mean || unet(x_t, sigma T) - (noise - x0) ||^2`` with
    ``x_t = (1 - sigma) x0 + sigma noise`` (Lipman et al. 2023, eq. 22-23; Liu et al. 2023).

    Args:
        x0, noise: ``(B, C, H, W)``; ``sigma``: ``(B,)`` in [0, 1];
        num_train_timesteps: the network's timestep scale ``T``.
    """
    s = sigma.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))                 # (B, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    target = noise - x0                                                       # the velocity dx/dsigma
    pred = unet(x_t, sigma * num_train_timesteps, **conditions).sample       # 3. the velocity MSE
    loss = F.mse_loss(pred.float(), target.float())
    return loss, {"loss": loss.item()}


class FlowMatchingObjective(FlowMatchingMixin, DiffusionObjective):
    """Class-conditional flow matching (``train.objective=flow-matching``): labels are replaced by
    the null class with probability ``diffusion.cond_drop_prob``, as for DDPM."""


class TextFlowMatchingObjective(FlowMatchingMixin, TextDiffusionObjective):
    """Text-conditional flow matching (``train.objective=text-flow-matching``): captions dropped
    to ``""`` with probability ``text.caption_drop_prob``, as for ``text-diffusion``."""

