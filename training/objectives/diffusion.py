"""The diffusion family: the DDPM denoising objective, class-conditional
(``train.objective=diffusion``) or text-conditional (``train.objective=text-diffusion``).

Both noise a clean image with the training schedule and regress the U-Net's prediction on the
target of ``diffusion.prediction_type`` (:meth:`DiffusionObjective.denoising_loss`, Ho et al.
2020, eq. 14); they differ only in the condition and in what the sample grid's rows are:

* :class:`DiffusionObjective`: a class label, replaced by the null class with probability
  ``diffusion.cond_drop_prob``; one grid row per class.
* :class:`TextDiffusionObjective`: a frozen text encoder's per-token hidden states as
  cross-attention context (Rombach et al. 2022, sec. 3.3; frozen encoder as in Saharia et al.
  2022). Data: a captioned dataset (``data.name`` = ``fashion-mnist-captions``, ``emoji`` or
  ``image-folder-captions``; :mod:`diffusion.data.captions`) whose batches are
  ``(images, captions)``. Each caption is replaced by the empty prompt (the null condition) with
  probability ``text.caption_drop_prob``, so guidance works. Captions are encoded through one
  :class:`diffusion.conditioning.PromptEmbeddingCache` per run: each distinct caption passes the
  encoder once. One grid row per ``text.sample_prompts`` entry.

Samples and export use a :class:`~diffusion.pipelines.diffusion.DiffusionImagePipeline` with the
run's sampler (``diffusion.sampler``) built from the training schedule.

Example::

    >>> from training.config import load_config
    >>> from training.objectives.diffusion import training_scheduler
    >>> training_scheduler(load_config(None, ["diffusion.beta_schedule=cosine"])).config.beta_schedule
    'squaredcos_cap_v2'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from diffusion.conditioning import PromptEmbeddingCache, load_text_encoder, text_encoder_hidden_size
from diffusion.models.unet import build_unet
from diffusion.pipelines.base import eval_mode
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from samplers.diffusion import build_sampler, list_samplers
from training.objectives.base import Objective, quiet

#: config name -> diffusers ``beta_schedule``
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


def training_scheduler(cfg) -> DDPMScheduler:
    """The training noise schedule of ``cfg.diffusion`` (forward process q(x_t | x_0), Ho et al.
    2020, eq. 4); with ``diffusion.rescale_betas_zero_snr`` its betas are rescaled to zero
    terminal SNR (Lin et al. 2024, Alg. 1: ``alphas_cumprod[-1] = 0``, so ``x_{T-1}`` is pure
    noise), which every sampler built from it carries
    (:func:`samplers.diffusion.training_schedule`)."""
    d = cfg.diffusion
    # Passed only when on: an explicit False would change the config's _use_default_values.
    zero_snr = {"rescale_betas_zero_snr": True} if d.rescale_betas_zero_snr else {}
    return DDPMScheduler(num_train_timesteps=d.num_train_timesteps, beta_start=d.beta_start,
                         beta_end=d.beta_end, beta_schedule=BETA_SCHEDULES[d.beta_schedule],
                         prediction_type=d.prediction_type, **zero_snr)


#: ``diffusion.*`` settings of the DDPM objective that flow matching and EDM do not read; set to
#: anything but their defaults they are refused (a silent no-op would train another model than
#: the one asked): :func:`check_no_ddpm_settings`.
DDPM_ONLY_SETTINGS = ("beta_schedule", "beta_start", "beta_end", "prediction_type",
                      "rescale_betas_zero_snr", "snr_gamma", "sampler")


def check_no_ddpm_settings(cfg, section: str, recipe: str) -> None:
    """Raise ``ValueError`` naming the :data:`DDPM_ONLY_SETTINGS` of ``cfg.diffusion`` changed
    from their defaults, for an objective (``recipe``, e.g. "flow matching") set in
    ``cfg.<section>``."""
    default = type(cfg.diffusion)()  # the section's defaults (training.config.DiffusionConfig)
    changed = [k for k in DDPM_ONLY_SETTINGS if getattr(cfg.diffusion, k) != getattr(default, k)]
    if changed:
        raise ValueError(f"train.objective={cfg.train.objective} does not read "
                         f"{', '.join('diffusion.' + k for k in changed)} (DDPM settings); "
                         f"{recipe} is set in {section}.* (the sampler: {section}.sampler)")


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 10-11) for each parameterisation.

    The x0-loss weight is ``min(SNR, gamma)``; an epsilon-MSE equals the x0-MSE times ``1/SNR``
    and a v-MSE equals it times ``1/(SNR + 1)``, so those are divided out:

    * ``"epsilon"``: ``min(SNR, gamma) / SNR``, computed as ``min(1, gamma / SNR)`` so that it is
      1 at SNR = 0 (its limit; the last timestep of a zero-terminal-SNR schedule, or one whose
      ``alphas_cumprod`` underflows to 0 in float32) instead of 0/0 = NaN;
    * ``"v_prediction"``: ``min(SNR, gamma) / (SNR + 1)``;
    * ``"sample"`` (x0): ``min(SNR, gamma)``.

    Args:
        snr: ``alphas_cumprod / (1 - alphas_cumprod)`` per sample, any shape, values in [0, inf].
        gamma: the clip, > 0 (Hang et al. use 5).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

    Returns:
        Finite weights of ``snr``'s shape: in [0, 1] for epsilon and v, in [0, gamma] for x0.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return torch.clamp(gamma / snr, max=1.0)  # gamma / 0 = inf -> 1, gamma / inf = 0
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


class DiffusionObjective(Objective):
    """Denoising loss ``|| f(x_t, t, c) - target ||^2`` (Ho et al. 2020, eq. 14), target by
    ``prediction_type``: noise (epsilon), v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022), or x0.
    Labels are replaced by the null class with probability ``cond_drop_prob``."""

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        self.modules["model"] = self.build_unet()
        self.noise_scheduler = self.build_training_scheduler()

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse a ``diffusion.sampler`` that is not a DDPM sampler (a flow-matching one is for
        ``train.objective=flow-matching``), before training rather than at the first grid."""
        name, ddpm = cfg.diffusion.sampler, list_samplers("ddpm")
        if name not in ddpm:
            hint = {"flow": " (a flow-matching sampler: see train.objective=flow-matching)",
                    "edm": " (an EDM sampler: see train.objective=edm)"}
            hint = next((h for p, h in hint.items() if name in list_samplers(p)), "")
            raise ValueError(f"diffusion.sampler must be a sampler for DDPM models, one of {ddpm}; "
                             f"got {name!r}{hint}")

    def build_training_scheduler(self):
        """The training schedule, saved with the export and the one samplers are built on:
        :func:`training_scheduler` (flow matching: :func:`training.objectives.flow.flow_training_scheduler`)."""
        return training_scheduler(self.cfg)

    @property
    def sampler_name(self) -> str:
        """The run's sampler (sample grids, evaluation, the exported scheduler):
        ``diffusion.sampler``."""
        return self.cfg.diffusion.sampler

    @property
    def sample_steps(self) -> int:
        """Steps of the sample grids and periodic metrics: ``diffusion.sample_steps``."""
        return self.cfg.diffusion.sample_steps

    @property
    def sample_guidance_scale(self) -> float:
        """Guidance of the sample grids and periodic metrics: ``diffusion.guidance_scale``."""
        return self.cfg.diffusion.guidance_scale

    def build_unet(self):
        """The U-Net of ``cfg.model``'s size on ``cfg.data``'s images (:func:`build_unet`),
        conditioned as :meth:`unet_conditioning` says."""
        m, d = self.cfg.model, self.cfg.data
        return build_unet(sample_size=d.image_size, in_channels=d.channels,
                          block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
                          attention_levels=m.attention_levels, attention_head_dim=m.attention_head_dim,
                          norm_num_groups=m.norm_num_groups, dropout=m.dropout,
                          **self.unet_conditioning())

    def unet_conditioning(self) -> dict:
        """:func:`build_unet` keywords of the condition: a class table of ``num_classes + 1`` rows
        (the last one the null class)."""
        return {"num_classes": self.num_classes}

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

    def pipeline_components(self, unet) -> dict:
        """The pipeline's components beside the U-Net and sampler: the class names."""
        return {"class_names": self.class_names or None}

    def pipeline(self, unet) -> DiffusionImagePipeline:
        scheduler = build_sampler(self.sampler_name, self.noise_scheduler)
        return quiet(DiffusionImagePipeline(unet=unet, scheduler=scheduler,
                                            **self.pipeline_components(unet)))

    def grid_prompts(self):
        """Rows of the sample grid as prompts, or ``None`` for one row per class."""
        return None

    def evaluate(self, modules, generator):
        """A grid (one row per class, up to 10 classes, 10 images each; or per prompt), the U-Net
        (EMA weights) in eval mode, and :meth:`evaluate_metrics` if ``diffusion.eval_num_samples``."""
        d, unet = self.cfg.diffusion, modules["model"]
        with eval_mode(unet):
            grid = self.sample_grid(self.pipeline(unet), generator, prompt=self.grid_prompts(),
                                    num_inference_steps=self.sample_steps,
                                    guidance_scale=self.sample_guidance_scale)
            scalars = self.evaluate_metrics(unet) if d.eval_num_samples > 0 else {}
        return scalars, grid

    def evaluate_metrics(self, unet) -> dict:
        """Cheap periodic evaluation: ``eval_metrics`` on ``eval_num_samples`` images (seed 0,
        the training sampler / steps / guidance) against ``data.eval_split``. Keys carry n, e.g.
        ``fid_n500``: FID at small n is biased upward, so only compare values at equal n."""
        from diffusion.evaluation import evaluate  # the evaluation stack, only when asked for

        d, data = self.cfg.diffusion, self.cfg.data
        n = d.eval_num_samples
        result = evaluate(self.pipeline(unet), dataset=data.name, dataset_root=data.root,
                          metrics=d.eval_metrics, num_samples=n, batch_size=min(n, 250),
                          sampler=self.sampler_name, num_inference_steps=self.sample_steps,
                          guidance_scale=self.sample_guidance_scale, seed=0,
                          feature_network=d.eval_feature_network, reference_split=data.eval_split,
                          cache_samples=False, progress=False)
        return {f"{m}_n{n}": result[m] for m in ("fid", "kid", "precision", "recall",
                                                  "inception_score", "accuracy") if m in result}


class TextDiffusionObjective(DiffusionObjective):
    """Train a ``UNet2DConditionModel`` (``build_unet(cross_attention_dim=hidden size)``, no
    class table) on captioned images; samples and export use a
    :class:`~diffusion.pipelines.diffusion.DiffusionImagePipeline` holding the text encoder and
    tokenizer."""

    def __init__(self, cfg, num_classes, class_names=()):
        # The encoder first: the U-Net's cross-attention width is its hidden size.
        self.tokenizer, self.text_encoder = load_text_encoder(cfg.text.encoder_path)
        super().__init__(cfg, num_classes, class_names)
        self.prompt_cache = PromptEmbeddingCache(self.tokenizer, self.text_encoder)

    def unet_conditioning(self) -> dict:
        """No class table; cross-attention over the encoder's hidden states."""
        return {"num_classes": None, "cross_attention_dim": text_encoder_hidden_size(self.text_encoder)}

    def loss(self, optimizer, modules, batch, generator):
        x0, captions = batch
        # 1. Caption dropout -> the empty prompt, the null condition (Ho & Salimans 2022, Alg. 1).
        drop = (torch.rand(len(captions), generator=generator) < self.cfg.text.caption_drop_prob).tolist()
        captions = ["" if d else c for c, d in zip(captions, drop)]
        hidden, mask = self.prompt_cache(captions)                     # (B, L, D), (B, L)
        return self.denoising_loss(modules["model"], x0, generator,
                                   encoder_hidden_states=hidden.to(x0.device, x0.dtype),
                                   encoder_attention_mask=mask.to(x0.device))

    def pipeline_components(self, unet) -> dict:
        """The text encoder (moved to the U-Net's device) and its tokenizer."""
        return {"text_encoder": self.text_encoder.to(unet.device), "tokenizer": self.tokenizer}

    def grid_prompts(self):
        """One grid row per ``text.sample_prompts`` entry."""
        return list(self.cfg.text.sample_prompts)

    def evaluate_metrics(self, unet) -> dict:
        """None yet (``diffusion.eval_num_samples`` is ignored): the periodic metrics score
        class-conditional samples."""
        return {}
