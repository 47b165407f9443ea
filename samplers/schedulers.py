"""Our own scheduler subclasses: where a diffusers scheduler's update did not serve a registered
sampler, the subclass says why in its docstring (see :mod:`samplers.diffusion` for the registry).

* :class:`ScheduledDDIMScheduler`, :class:`ScheduledPNDMScheduler`: DDPM-parameterised updates
  that step to the next *scheduled* timestep (and, for PNDM, extrapolate epsilon);
* :class:`FlowDPMSolverMultistepScheduler`, :class:`FlowUniPCMultistepScheduler`: diffusers'
  flow-sigma solvers, giving the network the float timestep ``sigma * num_train_timesteps`` that
  flow matching trains on instead of diffusers' integer-truncated one;
* :class:`EDMHeunScheduler`: EDM's Heun sampler with churn (Karras et al. 2022, Alg. 2), which
  diffusers does not have, on ``EDMEulerScheduler``'s preconditioning.
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler,
                       PNDMScheduler, UniPCMultistepScheduler)
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_edm_euler import EDMEulerSchedulerOutput
# Not used here: diffusers' from_pretrained finds a saved component's loading base class by name in
# the component's own module, so a pipeline saved with one of these schedulers (recorded as
# ["samplers.schedulers", "<Class>"]) reloads only if this module holds SchedulerMixin.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401
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


class EDMHeunScheduler(EDMEulerScheduler):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): 2nd-order Heun steps on the
    probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` over the Karras sigmas
    (eq. 5: ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    ``sigma_N = 0``), with optional churn. With ``s_churn = 0`` (the default) it is Alg. 1, the
    deterministic Heun sampler. Per step ``i``::

        gamma_i = min(S_churn / N, sqrt(2) - 1)  if S_tmin <= sigma_i <= S_tmax  else 0
        sigma_hat = (1 + gamma_i) sigma_i
        x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) eps,   eps ~ N(0, S_noise^2 I)
        d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat
        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d                          (Euler)
        if sigma_{i+1} != 0:                                                  (2nd-order correction)
            d' = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1}
            x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2

    ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` is diffusers' ``precondition_outputs``
    (Table 1); ``scale_model_input`` gives the network ``c_in x`` and ``timesteps`` its
    ``c_noise = ln(sigma) / 4``, both inherited from ``EDMEulerScheduler``, so a model trained
    for that scheduler runs here unchanged. Network calls: ``2N - 1`` (the last step, to
    ``sigma_N = 0``, is Euler), at ``sigma_hat_0, sigma_1, sigma_hat_1, sigma_2, ...,
    sigma_hat_{N-1}`` (without churn each ``sigma_i`` but the first twice).

    Why our own class: diffusers (0.42) has no EDM Heun scheduler (``HeunDiscreteScheduler`` is
    built on DDPM betas and discrete timesteps, not on ``sigma_min``/``sigma_max``/``sigma_data``
    with ``c_noise``), and ``EDMEulerScheduler.step``'s churn adds the noise *after* the network
    was evaluated at the un-churned ``(x_i, sigma_i)``, then uses that output as if it were
    ``D(x_hat; sigma_hat)``. Here ``sigma_hat_i`` is known when the timesteps are set (``gamma_i``
    depends on ``N`` and ``sigma_i`` only), so the network is called at ``c_noise(sigma_hat_i)``,
    and the churn noise of step ``i + 1`` is added at the end of step ``i``: the sample ``step``
    returns is ``x_hat_{i+1}``, where the next call evaluates the network, as Alg. 2 does. For the
    first step that noise is the initial one: ``init_noise_sigma = sigma_hat_0`` (``x_0 ~ N(0,
    sigma_0^2 I)`` plus the churn of step 0 is ``N(0, sigma_hat_0^2 I)`` in law). The noise is drawn
    with the ``generator`` given to ``step`` (one per image: batch-invariant, as diffusers'
    ``randn_tensor``).

    Args (beside ``EDMEulerScheduler``'s): ``s_churn`` (>= 0; EDM uses 0 to 80), ``s_tmin``,
    ``s_tmax`` (the sigma range that gets churn), ``s_noise`` (noise inflation, EDM ~1.003-1.007).

    Example::

        >>> s = EDMHeunScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
        >>> s.set_timesteps(18); len(s.timesteps)
        35
    """

    order = 2

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 sigma_schedule: str = "karras", num_train_timesteps: int = 1000,
                 prediction_type: str = "epsilon", rho: float = 7.0,
                 final_sigmas_type: str = "zero", s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> None:
        if not s_churn >= 0 or not s_noise >= 0 or not s_tmin <= s_tmax:
            raise ValueError(f"EDMHeunScheduler needs s_churn >= 0, s_noise >= 0 and "
                             f"s_tmin <= s_tmax; got s_churn={s_churn}, s_noise={s_noise}, "
                             f"s_tmin={s_tmin}, s_tmax={s_tmax}")
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                         sigma_schedule=sigma_schedule, num_train_timesteps=num_train_timesteps,
                         prediction_type=prediction_type, rho=rho,
                         final_sigmas_type=final_sigmas_type)
        self.sigma_hats = self.call_sigmas = None
        self._heun_state = None

    @property
    def init_noise_sigma(self) -> float:
        """``sigma_hat_0`` after ``set_timesteps`` (``sigma_max`` without churn; diffusers' EDM
        Euler uses ``sqrt(sigma_max^2 + 1)``, 80.006 for 80); ``sigma_max`` before."""
        if self.sigma_hats is None:
            return float(self.config.sigma_max)
        return float(self.sigma_hats[0])

    def set_timesteps(self, num_inference_steps: int = None, device=None, sigmas=None):
        """The Karras sigmas ``sigma_0 > ... > sigma_{N-1}`` and ``sigma_N`` (0, or ``sigma_min``
        with ``final_sigmas_type="sigma_min"``; the parent's), the churned ``sigma_hat_i`` and the
        ``2N - 1`` network calls: ``call_sigmas`` and ``timesteps = c_noise(call_sigmas)``."""
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas)
        c = self.config
        n = len(self.sigmas) - 1                                       # steps N
        t = self.sigmas.double()                                       # (N + 1,), t_N last
        in_range = (t[:-1] >= c.s_tmin) & (t[:-1] <= c.s_tmax)
        gamma = torch.where(in_range, min(c.s_churn / n, 2 ** 0.5 - 1), 0.0)   # Alg. 2, line 4
        self.sigma_hats = (t[:-1] * (1 + gamma)).float()              # (N,)
        calls, steps, first = [], [], []
        for i in range(n):
            calls.append(self.sigma_hats[i]), steps.append(i), first.append(True)
            if float(self.sigmas[i + 1]) != 0:                         # 2nd-order correction
                calls.append(self.sigmas[i + 1]), steps.append(i), first.append(False)
        self.call_sigmas = torch.stack(calls).float()                  # (NFE,)
        self._call_step, self._call_first = steps, first
        timestep_device = device if device is not None else "cpu"
        self.timesteps = self.precondition_noise(self.call_sigmas).to(timestep_device)
        self._heun_state = None

    def _init_step_index(self, timestep) -> None:
        """The first call whose timestep is ``timestep`` (repeated timesteps: the first of them)."""
        if self.begin_index is not None:
            self._step_index = self.begin_index
            return
        timestep = torch.as_tensor(timestep).to(self.timesteps.device)
        self._step_index = int((self.timesteps == timestep).nonzero()[0])

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """``c_in(sigma) * sample`` at this call's sigma (``sigma_hat_i`` or ``sigma_{i+1}``)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return self.precondition_inputs(sample, self.call_sigmas[self.step_index])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator=None, return_dict: bool = True):
        """One network call's share of Alg. 2: an Euler step from ``x_hat_i`` (first call of step
        ``i``) or the Heun correction (second call); after the correction, the churn noise of
        step ``i + 1``. ``sample``: the sample the network was given (unscaled), ``(B, C, H, W)``;
        ``generator``: one, or one per image. Returns ``EDMEulerSchedulerOutput(prev_sample,
        pred_original_sample=D(x; sigma))``."""
        if self.call_sigmas is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        if self.step_index is None:
            self._init_step_index(timestep)
        k = self.step_index
        # In the sample's precision (float32 at least): a float32 sigma_next - sigma_hat (80 ->
        # 0.002 at N = 2) is off by ~4e-6, which the correction amplifies by sigma_hat / sigma_next.
        dtype = torch.promote_types(sample.dtype, torch.float32)
        i, sigma = self._call_step[k], self.call_sigmas[k].to(dtype)
        x = sample.to(dtype)
        denoised = self.precondition_outputs(x, model_output.to(dtype), sigma)   # D(x; sigma)
        sigma_next = self.sigmas[i + 1].to(dtype)
        if self._call_first[k]:                                       # Alg. 2, lines 7-8
            d = (x - denoised) / sigma
            prev_sample = x + (sigma_next - sigma) * d
            if float(sigma_next) != 0:
                self._heun_state = (x, d, sigma)                      # x_hat, d_i, sigma_hat
        else:                                                         # lines 9-11
            x_hat, d, sigma_hat = self._heun_state
            d_prime = (x - denoised) / sigma
            prev_sample = x_hat + (sigma - sigma_hat) * (d + d_prime) / 2
            self._heun_state = None
            if i + 1 < len(self.sigma_hats):                          # lines 4-6 of step i + 1
                churn = (self.sigma_hats[i + 1].double() ** 2 - sigma_next.double() ** 2)
                if float(churn) > 0:
                    eps = randn_tensor(prev_sample.shape, generator=generator,
                                       device=prev_sample.device, dtype=prev_sample.dtype)
                    prev_sample = prev_sample + float(churn.sqrt()) * self.config.s_noise * eps
        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        if not return_dict:
            return prev_sample, denoised
        return EDMEulerSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
