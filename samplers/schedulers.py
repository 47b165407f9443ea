"""Our own scheduler subclasses: where a diffusers scheduler's update did not serve a registered
sampler, the subclass says why in its docstring (see :mod:`samplers.diffusion` for the registry).

* :class:`ScheduledDDIMScheduler`, :class:`ScheduledPNDMScheduler`: DDPM-parameterised updates
  that step to the next *scheduled* timestep (and, for PNDM, extrapolate epsilon);
* :class:`FlowDPMSolverMultistepScheduler`, :class:`FlowUniPCMultistepScheduler`: diffusers'
  flow-sigma solvers, giving the network the float timestep ``sigma * num_train_timesteps`` that
  flow matching trains on instead of diffusers' integer-truncated one.
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

#: What a DDPM-parameterised network may predict (``prediction_type`` of the training schedule).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

def _next_timestep(timesteps: torch.Tensor, timestep) -> int:
    """The entry after ``timestep`` in the descending schedule ``timesteps`` (repeats count once);
    -1 after the last, where DDIM and PNDM use ``final_alpha_cumprod``."""
    later = timesteps[timesteps < timestep]
    return int(later[0]) if len(later) else -1


def _x0_and_epsilon(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t,
                    prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0_pred, eps_pred)`` from a network output at ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``
    (Ho et al. 2020, eq. 4; v = sqrt(abar) eps - sqrt(1 - abar) x0, Salimans & Ho 2022);
    the same expressions as diffusers' ``DDIMScheduler.step``."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t ** 0.5 * model_output) / beta_prod_t ** 0.5
    if prediction_type == "v_prediction":
        return (alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output,
                alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class ScheduledDDIMScheduler(DDIMScheduler):
    """DDIM (Song et al. 2021, eq. 12; eq. 16 for ``eta``) stepping to the next scheduled timestep.

    Why not diffusers' ``DDIMScheduler`` as is: its ``step`` (0.42) goes from ``t`` to
    ``t - T // n``, the stride of "leading" spacing. On the "trailing" schedule used here that is
    one timestep off whenever ``n`` does not divide ``T``, and where ``T / n`` rounds up (18 of
    n = 1..50, e.g. 6, 7, 13) the last step lands on ``t = 0`` instead of the clean sample, leaving
    noise of std ``sqrt(1 - abar_0)`` (0.01 on the linear schedule) in every image (diffusers
    issues #9261, #12633). Here ``prev_t`` is the next entry of ``self.timesteps``, as in diffusers'
    ``DDPMScheduler.previous_timestep`` since PR #9384; where the stride is exact (``T % n == 0``,
    or "leading" spacing) the result is bit-identical to the parent's.

    And with ``clip_sample`` or ``thresholding`` on, eq. 12 takes the epsilon recomputed from the
    clipped x0 - always, as the parent does only when called with ``use_clipped_model_output=True``.
    The parent's default keeps the network's epsilon beside the clipped x0: a step that mixes two
    different x0 (with an exact denoiser for data in [-1.5, 1.5], one step is up to 0.39 off the
    consistent one, 10 steps drift 0.55; the shipped model's conditional accuracy was 0.57 with
    it, 0.94 unclipped). The rest of ``step`` (``eta``, ``variance_noise``) mirrors the parent
    line by line.
    """

    # It lived in samplers.diffusion (re-exported there): sample-cache keys name the class by
    # module (tests/compat/test_cache_keys.py), so they stay those recorded before the move.
    __module__ = "samplers.diffusion"

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: Optional[bool] = None,
             generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        """``x_{t_prev}`` from the network output at ``(x_t, t)``; arguments as the parent's.

        ``use_clipped_model_output``: ``None`` (the default) or ``True``; the epsilon is recomputed
        from x0 whenever x0 is clipped or thresholded. Raises ``ValueError`` for ``False`` with
        clipping or thresholding on (the inconsistent update the parent would make).
        """
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        clips = bool(self.config.thresholding or self.config.clip_sample)
        if clips and use_clipped_model_output is False:
            raise ValueError("use_clipped_model_output=False with clip_sample or thresholding on "
                             "would pair the clipped x0 with the unclipped epsilon in DDIM eq. 12; "
                             "this sampler always recomputes epsilon from the clipped x0: "
                             "pass None")
        prev_t = _next_timestep(self.timesteps, timestep)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0_pred, eps_pred = _x0_and_epsilon(model_output, sample, alpha_prod_t,
                                            self.config.prediction_type)
        if self.config.thresholding:
            x0_pred = self._threshold_sample(x0_pred)
        elif self.config.clip_sample:
            x0_pred = x0_pred.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        std_dev_t = eta * self._get_variance(timestep, prev_t) ** 0.5   # sigma_t(eta), eq. 16
        if clips or use_clipped_model_output:  # the epsilon of the clipped x0 (eq. 12 needs one x0)
            eps_pred = (sample - alpha_prod_t ** 0.5 * x0_pred) / (1 - alpha_prod_t) ** 0.5
        # eq. 12: sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma_t^2) eps + sigma_t z
        prev_sample = (alpha_prod_t_prev ** 0.5 * x0_pred
                       + (1 - alpha_prod_t_prev - std_dev_t ** 2) ** 0.5 * eps_pred)
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator,
                                              device=model_output.device, dtype=model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise
        if not return_dict:
            return prev_sample, x0_pred
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0_pred)


class ScheduledPNDMScheduler(PNDMScheduler):
    """PLMS (Liu et al. 2022, pseudo linear multi-step on epsilon) along its own timestep schedule.

    Why not diffusers' ``PNDMScheduler`` as is (0.42, ``skip_prk_steps=True``):

    1. like DDIM, ``step_plms`` steps from ``t`` to ``t - T // n``: on the "trailing" schedule it
       is exact only when ``n`` divides ``T``; otherwise the sample lands one timestep away from
       where the next network call is made, and the last step can end on ``t = 0``;
    2. it extrapolates the *raw* network outputs and converts the result to epsilon only at the
       current ``(x_t, t)``. For v- or x0-prediction that is not PLMS (whose multistep formula is
       for epsilon, constant along an exact probability-flow path) and degrades it to first order;
       for ``"sample"`` diffusers raises.

    Here every output is converted to epsilon where it was evaluated, and ``t_prev`` is the next
    entry of the schedule; for epsilon-prediction with ``T % n == 0`` the result is bit-identical
    to the parent's.
    The PRK warm-up (``skip_prk_steps=False``) is left to the parent.
    """

    # It lived in samplers.diffusion (re-exported there): sample-cache keys name the class by
    # module (tests/compat/test_cache_keys.py), so they stay those recorded before the move.
    __module__ = "samplers.diffusion"

    def step_plms(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                  return_dict: bool = True):
        """One PLMS step; the first step's second call re-does it with the mean of two slopes."""
        if not self.config.skip_prk_steps:
            return super().step_plms(model_output, timestep, sample, return_dict)
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        _, eps = _x0_and_epsilon(model_output, sample, self.alphas_cumprod[timestep],
                                 self.config.prediction_type)
        prev_t = _next_timestep(self.timesteps, timestep)
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(eps)
        else:  # x_{t1} was predicted from t0 with one slope: redo t0 -> t1 with the mean slope
            prev_t, timestep = int(timestep), int(self.timesteps[self.timesteps > timestep][-1])

        if len(self.ets) == 1 and self.counter == 0:
            eps_prime = eps
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            eps_prime = (eps + self.ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(self.ets) == 2:
            eps_prime = (3 * self.ets[-1] - self.ets[-2]) / 2
        elif len(self.ets) == 3:
            eps_prime = (23 * self.ets[-1] - 16 * self.ets[-2] + 5 * self.ets[-3]) / 12
        else:
            eps_prime = (1 / 24) * (55 * self.ets[-1] - 59 * self.ets[-2] + 37 * self.ets[-3]
                                    - 9 * self.ets[-4])
        prev_sample = self._transfer(sample, timestep, prev_t, eps_prime)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _transfer(self, sample: torch.Tensor, timestep, prev_timestep: int,
                  eps: torch.Tensor) -> torch.Tensor:
        """The transfer part phi of Liu et al. 2022 (a DDIM step written as in diffusers'
        ``PNDMScheduler._get_prev_sample``), with ``eps`` already epsilon."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (self.alphas_cumprod[prev_timestep] if prev_timestep >= 0
                             else self.final_alpha_cumprod)
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
        eps_denom = (alpha_prod_t * beta_prod_t_prev ** 0.5
                     + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5)
        return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * eps / eps_denom


class _FloatFlowTimesteps:
    """Mixin for diffusers' multistep solvers run with ``use_flow_sigmas=True``: after
    ``set_timesteps``, the network's timesteps are ``sigmas * num_train_timesteps`` in float32.

    Why: diffusers (0.42) computes them as that product and then casts to int64, i.e. truncates
    (sigma = 0.0199 -> t = 19, not 19.9), while the solver steps with the exact sigma. A
    flow-matching network trained on continuous ``t = sigma * T`` is then evaluated at a noise
    level up to ``1 / T`` below the one the update assumes; at the small sigmas of the last steps
    that is a relative error of 5% or more (an exact velocity field misses x0 by ~1e-3 at 50
    steps). ``FlowMatchEulerDiscreteScheduler`` keeps float timesteps; this makes the solvers
    agree with it. The sigmas and the update are the parent's, untouched.
    """

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        device = self.timesteps.device
        # (n,) float32: the network input t = sigma * T for each step's sigma (sigmas[-1] = 0)
        self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).to(device)


class FlowDPMSolverMultistepScheduler(_FloatFlowTimesteps, DPMSolverMultistepScheduler):
    """DPM-Solver++ (Lu et al. 2022, Alg. 2) on flow sigmas (``use_flow_sigmas=True``,
    ``prediction_type="flow_prediction"``: ``x0 = x_t - sigma v``), with float network timesteps
    (see :class:`_FloatFlowTimesteps`)."""


class FlowUniPCMultistepScheduler(_FloatFlowTimesteps, UniPCMultistepScheduler):
    """UniPC (Zhao et al. 2023) on flow sigmas (``use_flow_sigmas=True``,
    ``prediction_type="flow_prediction"``), with float network timesteps (see
    :class:`_FloatFlowTimesteps`)."""
