"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models") on the diffusion family's U-Net: ``train.objective=edm`` (class labels) and
``text-edm`` (captions).

Noising ``x = x0 + sigma n``, ``n ~ N(0, I)``, with ``ln(sigma) ~ N(P_mean, P_std^2)`` (Table 1,
"noise distribution"; :func:`sample_edm_sigmas`), and the U-Net ``F`` (``UNet2DModel``, the same
:func:`diffusion.models.unet.build_unet` as DDPM) wrapped as the denoiser (eq. 7, Table 1)::

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

    loss = lambda(sigma) || D(x; sigma) - x0 ||^2,   lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2

(eq. 2 and 8; ``lambda = 1 / c_out^2``, so the effective target of ``F`` has unit weight at every
sigma). The loss is the mean over pixels and batch (:func:`edm_loss`).

The coefficients are not written here: the loss calls diffusers' ``EDMEulerScheduler``
``precondition_inputs`` (``c_in x``), ``precondition_noise`` (``c_noise = 0.25 ln sigma``) and
``precondition_outputs`` (``c_skip x + c_out F``; diffusers calls this ``F`` ``"epsilon"``) on the
training schedule (:func:`edm_training_scheduler`), and that scheduler is what the export saves.
At sampling the same class applies ``c_in`` in ``scale_model_input``, gives the network
``c_noise`` as its timesteps and applies ``c_skip`` / ``c_out`` in ``step``, so
``DiffusionImagePipeline`` runs the saved model unchanged, and training and sampling agree by
construction (``tests/training/objectives/test_edm.py`` checks the coefficients against Table 1).

How ``c_noise`` reaches the U-Net: as its float timestep, unscaled. ``UNet2DModel``'s sinusoidal
``Timesteps`` embedding takes float timesteps (frequencies ``10000^(-k / (d/2))``, ``k < d/2``).
On the EDM range ``c_noise`` in [-1.55, 1.10] (sigma 0.002 .. 80) the embedding is smooth and
one-to-one (its 1-rad channel, ``sin(c_noise)``, is monotone there), but coarser than for DDPM's
integer 0..999: with the shipped 32 channels, 9 of 32 vary by more than 0.1 over the whole range
(DDPM: 30 of 32), and neighbouring sigmas of an 18-step Karras schedule are 0.10 - 0.40 apart in
embedding L2 (DDPM's 20 steps: ~4); the time MLP after it learns the scale. This is the paper's
own choice - EDM's DDPM++ and ADM networks feed ``ln(sigma) / 4`` to the same positional
embedding (max period 10^4) - and it keeps diffusers' EDM schedulers usable as saved. A scaled
``c_noise`` would need a scheduler of our own in every saved model, so it is not done; the
coarseness is measured by ``test_c_noise_embedding_is_one_to_one_but_coarse``.

Everything else is the DDPM objective's (:class:`~training.objectives.diffusion.DiffusionObjective`):
class or caption dropout to the null condition (guidance is linear in ``F``, so in ``D``), the
sample grids, periodic metrics, the export as a
:class:`~diffusion.pipelines.diffusion.DiffusionImagePipeline` whose scheduler is ``edm.sampler``
built on the training schedule (by default ``EDMEulerScheduler(sigma_min, sigma_max, sigma_data,
rho)``), from which ``from_pretrained`` and every EDM sampler (:func:`samplers.list_samplers`
``("edm")``) rebuild it.

Example::

    >>> from training.config import load_config
    >>> cfg = load_config(None, ["train.objective=edm", "edm.sigma_max=40"])
    >>> edm_training_scheduler(cfg).config.sigma_max
    40.0
"""

from __future__ import annotations

import torch
from diffusers import EDMEulerScheduler

from samplers.diffusion import list_samplers
from training.objectives.diffusion import (DiffusionObjective, TextDiffusionObjective,
                                           check_no_ddpm_settings)


def edm_training_scheduler(cfg) -> EDMEulerScheduler:
    """The EDM training schedule of ``cfg``: ``sigma_min``, ``sigma_max``, ``sigma_data`` and
    ``rho`` from ``edm``, ``num_train_timesteps`` (the cap on sampling steps) from ``diffusion``
    (what :func:`samplers.diffusion.edm_training_schedule` reads)."""
    e = cfg.edm
    return EDMEulerScheduler(sigma_min=e.sigma_min, sigma_max=e.sigma_max, sigma_data=e.sigma_data,
                             rho=e.rho, num_train_timesteps=cfg.diffusion.num_train_timesteps)


def sample_edm_sigmas(batch_size: int, generator: torch.Generator = None, p_mean: float = -1.2,
                      p_std: float = 1.2) -> torch.Tensor:
    """``batch_size`` training sigmas, CPU float32 ``(B,)`` > 0: ``ln(sigma) ~ N(p_mean, p_std^2)``
    (Karras et al. 2022, Table 1; EDM's -1.2, 1.2 put the median at sigma = 0.30)."""
    return torch.exp(torch.randn(batch_size, generator=generator) * p_std + p_mean)


def edm_loss(unet, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
             scheduler: EDMEulerScheduler, **conditions):
    """``(loss, {"loss": float})``: ``mean lambda(sigma) || D(x0 + sigma n; sigma) - x0 ||^2``
    (Karras et al. 2022, eq. 2 and Table 1), ``D`` the U-Net preconditioned by ``scheduler``'s
    ``precondition_*`` (its ``sigma_data``), the U-Net called with ``conditions``.

    Args:
        x0, noise: ``(B, C, H, W)``; ``sigma``: ``(B,)`` > 0;
        scheduler: the training schedule (:func:`edm_training_scheduler`).
    """
    sigma_data = scheduler.config.sigma_data
    s = sigma.float().view(-1, *([1] * (x0.dim() - 1)))                       # (B, 1, 1, 1)
    x = x0 + s.to(x0.dtype) * noise                                           # x = x0 + sigma n
    # 3. D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)       (Table 1)
    model_input = scheduler.precondition_inputs(x, s.to(x.dtype))
    c_noise = scheduler.precondition_noise(sigma.float())                     # (B,) ln(sigma) / 4
    f = unet(model_input, c_noise, **conditions).sample
    denoised = scheduler.precondition_outputs(x.float(), f.float(), s)
    weight = (s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2               # lambda(sigma)
    loss = (weight * (denoised - x0.float()) ** 2).mean()
    return loss, {"loss": loss.item()}


class EDMMixin:
    """What EDM changes in a diffusion objective: the training schedule, the loss of one noising,
    the sampler, and its config checks. Mixed into the class and text objectives."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse a non-EDM ``edm.sampler``, non-positive ``sigma_data``, ``p_std``, ``rho``,
        ``sigma_min >= sigma_max``, and DDPM-only ``diffusion.*`` settings changed from their
        defaults (:func:`~training.objectives.diffusion.check_no_ddpm_settings`)."""
        e = cfg.edm
        if e.sampler not in list_samplers("edm"):
            raise ValueError(f"edm.sampler must be an EDM sampler, one of {list_samplers('edm')}; "
                             f"got {e.sampler!r}")
        if not (e.sigma_data > 0 and e.p_std > 0 and e.rho > 0):
            raise ValueError(f"edm.sigma_data, edm.p_std and edm.rho must be > 0, got "
                             f"{e.sigma_data}, {e.p_std}, {e.rho}")
        if not 0 < e.sigma_min < e.sigma_max:
            raise ValueError(f"edm.sigma_min and edm.sigma_max must satisfy 0 < sigma_min < "
                             f"sigma_max, got {e.sigma_min}, {e.sigma_max}")
        check_no_ddpm_settings(cfg, "edm", "EDM")

    def build_training_scheduler(self) -> EDMEulerScheduler:
        return edm_training_scheduler(self.cfg)

    @property
    def sampler_name(self) -> str:
        """``edm.sampler``."""
        return self.cfg.edm.sampler

    def denoising_loss(self, unet, x0, generator, **conditions):
        """``(loss, logs)``: :func:`edm_loss` of one noising of ``x0`` ``(B, C, H, W)`` in
        [-1, 1], the U-Net called with ``conditions``; logs ``loss``."""
        e = self.cfg.edm
        # 2. ln(sigma) ~ N(P_mean, P_std^2), n ~ N(0, I) - both on the loop's CPU generator.
        sigma = sample_edm_sigmas(x0.shape[0], generator, e.p_mean, e.p_std).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return edm_loss(unet, x0, noise, sigma, self.noise_scheduler, **conditions)


class EDMObjective(EDMMixin, DiffusionObjective):
    """Class-conditional EDM (``train.objective=edm``): labels are replaced by the null class with
    probability ``diffusion.cond_drop_prob``, as for DDPM."""


class TextEDMObjective(EDMMixin, TextDiffusionObjective):
    """Text-conditional EDM (``train.objective=text-edm``): captions dropped to ``""`` with
    probability ``text.caption_drop_prob``, as for ``text-diffusion``."""
