"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Alg. 1; Luo et al. 2023,
"Latent Consistency Models", Alg. 3) for models distilled by ``train.objective=consistency``
(:mod:`training.objectives.consistency`).

A consistency model ``f(x_t, t)`` maps any point of a probability-flow ODE trajectory to its
start, the clean sample. Sampling in ``N`` steps: start from noise at the largest time ``tau_1``,
predict ``x0 = f(x, tau_1)``, re-noise it with *fresh* noise to ``tau_2 < tau_1``, predict again,
and so on; the last prediction is the image. One network call per step (``nfe = N``), and no
classifier-free guidance at sampling time: the guidance the teacher used was distilled into the
student (``guidance_scale`` must be 1, :data:`samplers.diffusion.SamplerSpec.distilled`).

The times ``tau_i`` are ``N`` evenly spaced indices of the distillation grid (the teacher's time
grid the student was trained on, ``original_inference_steps`` points): LCM's rule, diffusers'
``LCMScheduler.set_timesteps``, shared here by :func:`grid_indices`.

Which class samples which parameterisation:

* DDPM teachers (epsilon / v / x0 networks, discrete timesteps): diffusers' ``LCMScheduler``
  unchanged. It applies LCM's boundary scalings ``f = c_skip(t) x + c_out(t) x0_hat`` with
  ``c_skip(t) = 0.25 / ((10 t)^2 + 0.25)`` (``timestep_scaling = 10``), which the objective uses
  too (it calls the same method), so ``f(x, 0) = x``.
* flow matching: :class:`FlowLCMScheduler`, diffusers' ``FlowMatchLCMScheduler`` (``x0 = x - sigma
  v``, re-noise ``(1 - sigma') x0 + sigma' eps``) on the distillation grid. Here ``c_skip = 0`` and
  ``c_out = 1``: ``x0_hat(x, 0) = x - 0 v = x`` already meets the boundary condition exactly.
* EDM: :class:`EDMLCMScheduler`, diffusers' ``EDMEulerScheduler`` preconditioning (``c_in``,
  ``c_noise = ln(sigma) / 4``, ``D = c_skip x + c_out F``) with the consistency step ``f = c_skip'
  x + c_out' D`` (:func:`edm_boundary_scalings`, 1 and 0 at ``sigma_min``), re-noised to ``f +
  sigma' eps``. diffusers' ``CMStochasticIterativeScheduler`` does not fit the EDM networks
  trained here: it feeds the network ``1000 * 0.25 ln(sigma)`` where they were trained on
  ``0.25 ln(sigma)``, and applies its ``c_skip``/``c_out`` to the raw network output, not to ``D``.

Example::

    >>> s = FlowLCMScheduler(shift=1.0, original_inference_steps=50)
    >>> s.set_timesteps(4); [round(float(t), 1) for t in s.timesteps]
    [1000.0, 760.0, 500.0, 260.0]
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import EDMEulerScheduler, FlowMatchLCMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_edm_euler import EDMEulerSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor
# diffusers' from_pretrained looks a saved component's loading base class up in its own module.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401


def grid_indices(grid_size: int, num_inference_steps: int) -> np.ndarray:
    """Indices ``(N,)`` int64 into the distillation grid read from its *largest* time down
    (``0`` = the largest): ``floor(linspace(0, grid_size, N, endpoint=False))``, LCM's rule
    (diffusers ``LCMScheduler.set_timesteps``; Luo et al. 2023, Sec. 4.3).

    Raises:
        ValueError: ``num_inference_steps`` not in ``[1, grid_size]``.

    Example::

        >>> grid_indices(50, 4).tolist()
        [0, 12, 25, 37]
    """
    if not 1 <= num_inference_steps <= grid_size:
        raise ValueError(f"num_inference_steps must be in [1, {grid_size}] (the distillation grid "
                         f"has {grid_size} points, original_inference_steps); got "
                         f"{num_inference_steps}. Consistency models are trained for 1-4 steps.")
    return np.floor(np.linspace(0, grid_size, num_inference_steps, endpoint=False)).astype(np.int64)


def flow_grid_sigmas(grid_size: int, shift: float) -> torch.Tensor:
    """The flow-matching distillation grid: ``sigma_n = shift(n / grid_size)``, ``n = 0 ..
    grid_size`` (float64 ``(grid_size + 1,)``, ascending, ``sigma_0 = 0`` the boundary, ``sigma_N
    = 1`` pure noise), with ``shift(u) = s u / (1 + (s - 1) u)`` (Esser et al. 2024, eq. 23)."""
    u = torch.arange(grid_size + 1, dtype=torch.float64) / grid_size
    return shift * u / (1 + (shift - 1) * u)


class FlowLCMScheduler(FlowMatchLCMScheduler):
    """Multistep consistency sampling of a flow-matching student: diffusers'
    ``FlowMatchLCMScheduler.step`` (``x0 = x - sigma v``, then ``x' = (1 - sigma') x0 + sigma'
    eps`` with fresh ``eps`` drawn from the per-image ``generator``s; the last step's
    ``sigma' = 0`` returns ``x0``) on the sigmas of the distillation grid.

    Why a subclass: the parent's ``set_timesteps(N)`` spaces ``N`` times evenly from ``T`` down to
    1 (``N = 2``: sigma 1 and 0.001, so the second step re-predicts a sample that is already clean),
    not on the grid the student was distilled on. Here the sigmas are ``N`` of the
    ``original_inference_steps`` grid points :func:`flow_grid_sigmas`, picked by
    :func:`grid_indices` (``N = 4`` of 50: sigma 1, 0.76, 0.5, 0.26 for ``shift = 1``), as
    ``LCMScheduler`` picks DDPM timesteps. The network sees ``t = sigma * T`` as float, as it was
    trained. Custom ``sigmas=`` / ``timesteps=`` go to the parent unchanged.

    Args:
        num_train_timesteps: ``T``, the network's time scale.
        shift: the teacher's flow shift (its training schedule's).
        original_inference_steps: the distillation grid's size (``distill.num_ddim_timesteps``).

    Raises:
        ValueError (``set_timesteps``): ``num_inference_steps`` outside ``[1,
            original_inference_steps]``.

    Example (the sigmas of 2 steps on a shifted grid; sigma 0 ends the last step)::

        >>> s = FlowLCMScheduler(shift=3.0, original_inference_steps=50)
        >>> s.set_timesteps(2); [round(float(x), 3) for x in s.sigmas]
        [1.0, 0.75, 0.0]
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0,
                 original_inference_steps: int = 50, use_dynamic_shifting: bool = False,
                 base_shift: float = 0.5, max_shift: float = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, invert_sigmas: bool = False,
                 shift_terminal=None, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 time_shift_type: str = "exponential", scale_factors=None,
                 upscale_mode: str = "bicubic"):
        # The parent's options are taken (and saved) only so that a saved config reloads without
        # warnings; the grid sigmas of set_timesteps use num_train_timesteps and shift alone.
        super().__init__(num_train_timesteps=num_train_timesteps, shift=shift,
                         use_dynamic_shifting=use_dynamic_shifting, base_shift=base_shift,
                         max_shift=max_shift, base_image_seq_len=base_image_seq_len,
                         max_image_seq_len=max_image_seq_len, invert_sigmas=invert_sigmas,
                         shift_terminal=shift_terminal, use_karras_sigmas=use_karras_sigmas,
                         use_exponential_sigmas=use_exponential_sigmas,
                         use_beta_sigmas=use_beta_sigmas, time_shift_type=time_shift_type,
                         scale_factors=scale_factors, upscale_mode=upscale_mode)

    def set_timesteps(self, num_inference_steps: int = None, device=None, sigmas=None, mu=None,
                      timesteps=None) -> None:
        if sigmas is not None or timesteps is not None:
            return super().set_timesteps(num_inference_steps, device, sigmas, mu, timesteps)
        c = self.config
        grid = flow_grid_sigmas(c.original_inference_steps, c.shift)           # ascending
        picked = grid.flip(0)[grid_indices(c.original_inference_steps, num_inference_steps)]
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.cat([picked, picked.new_zeros(1)]).float().to("cpu")   # (N + 1,)
        self.timesteps = (self.sigmas[:-1] * c.num_train_timesteps).to(device)    # (N,) float32
        self._step_index = None
        self._begin_index = None


#: LCM's ``timestep_scaling`` (diffusers ``LCMScheduler``), used for EDM's boundary scalings too
TIMESTEP_SCALING = 10.0


def edm_grid_sigmas(grid_size: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The EDM distillation grid, ascending float64 ``(grid_size + 1,)``: Karras et al. 2022, eq. 5
    on ``[sigma_min, sigma_max]`` (``sigma_0 = sigma_min``, the boundary; the consistency models'
    own discretisation, Song et al. 2023, Sec. 3)."""
    ramp = 1 - torch.arange(grid_size + 1, dtype=torch.float64) / grid_size       # 1 .. 0
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_min, sigma_max      # exact ends (c_out(sigma_0) = 0 exactly)
    return sigmas


def edm_boundary_scalings(sigma, sigma_min: float, sigma_data: float):
    """``(c_skip, c_out)`` of the consistency function ``f = c_skip x + c_out D(x; sigma)`` of an
    EDM model: LCM's scalings (diffusers ``LCMScheduler.get_scalings_for_boundary_condition_discrete``,
    ``timestep_scaling`` 10) on ``u = (sigma - sigma_min) / sigma_min``, i.e. sigma counted in units
    of ``sigma_min`` as LCM counts DDPM timesteps: ``c_skip = sd^2 / ((10 u)^2 + sd^2)``, ``c_out =
    10 u / sqrt((10 u)^2 + sd^2)``; exactly 1 and 0 at ``sigma_min`` (Song et al. 2023, eq. 3-4),
    below 3e-7 from sigma = 0.19 up (the lowest sigma 4 steps of a 50-point grid visit; 0.007 at the
    grid's first sigma above sigma_min), so ``f`` is the denoiser ``D`` wherever the sampler steps.

    Example::

        >>> [round(float(c), 6) for c in edm_boundary_scalings(torch.tensor(0.002), 0.002, 0.5)]
        [1.0, 0.0]
    """
    u = (sigma - sigma_min) / sigma_min * TIMESTEP_SCALING
    return sigma_data ** 2 / (u ** 2 + sigma_data ** 2), u / (u ** 2 + sigma_data ** 2) ** 0.5


class EDMLCMScheduler(EDMEulerScheduler):
    """Multistep consistency sampling of an EDM student: ``N`` sigmas of the Karras distillation
    grid (:func:`edm_grid_sigmas`, picked by :func:`grid_indices`), and per step ``D = c_skip x +
    c_out F`` (the parent's ``precondition_outputs``), ``f = c_skip' x + c_out' D``
    (:func:`edm_boundary_scalings`), then ``x' = f + sigma' eps`` with fresh ``eps`` from the
    per-image ``generator``s; the last step returns ``f``. The network sees ``c_in x`` and
    ``c_noise = ln(sigma) / 4`` (inherited), as it was trained.

    Why our own class: see the module docstring (``CMStochasticIterativeScheduler``); the parent's
    ``step`` is an Euler step and its ``init_noise_sigma`` is ``sqrt(sigma_max^2 + 1)``, here
    ``sigma_max``, the grid's first sigma.

    Example::

        >>> s = EDMLCMScheduler(original_inference_steps=50)
        >>> s.set_timesteps(2); [round(float(x), 2) for x in s.sigmas]
        [80.0, 2.52, 0.0]
    """

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 sigma_schedule: str = "karras", num_train_timesteps: int = 1000,
                 prediction_type: str = "epsilon", rho: float = 7.0,
                 final_sigmas_type: str = "zero", original_inference_steps: int = 50):
        if sigma_schedule != "karras" or final_sigmas_type != "zero":
            raise ValueError(f"EDMLCMScheduler steps on the Karras grid to sigma 0: "
                             f"sigma_schedule='karras', final_sigmas_type='zero'; got "
                             f"{sigma_schedule!r}, {final_sigmas_type!r}")
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                         sigma_schedule=sigma_schedule, num_train_timesteps=num_train_timesteps,
                         prediction_type=prediction_type, rho=rho,
                         final_sigmas_type=final_sigmas_type)

    @property
    def init_noise_sigma(self) -> float:
        return float(self.config.sigma_max)

    def set_timesteps(self, num_inference_steps: int = None, device=None, sigmas=None):
        """``N`` grid sigmas (then 0); custom ``sigmas`` (the parent's Karras ramp in [0, 1]) go
        to the parent. Raises ``ValueError`` for ``N`` outside ``[1, original_inference_steps]``."""
        if sigmas is None:
            grid = self.config.original_inference_steps
            sigmas = torch.from_numpy(grid_indices(grid, num_inference_steps) / grid)  # ramp
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator=None, return_dict: bool = True):
        """``x'`` from the network output ``F`` at ``(c_in x, c_noise)``; see the class docstring."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        denoised = self.precondition_outputs(sample, model_output.float(), sigma)     # D
        c_skip, c_out = edm_boundary_scalings(sigma, self.config.sigma_min, self.config.sigma_data)
        f = c_skip * sample + c_out * denoised
        if self.step_index < len(self.timesteps) - 1:
            noise = randn_tensor(f.shape, generator=generator, device=f.device, dtype=f.dtype)
            prev_sample = f + sigma_next * noise
        else:
            prev_sample = f
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample, f)
        return EDMEulerSchedulerOutput(prev_sample=prev_sample, pred_original_sample=f)
