"""Diffusion samplers by name: each name builds a configured diffusers scheduler.

A sampler is always built from the *training* noise schedule: the number of training timesteps,
the betas (passed explicitly as ``trained_betas``, so every schedule - linear, cosine, sigmoid or
custom - reaches every sampler unchanged) and the ``prediction_type``. Only those keys are read from
the given config, so the sampler that happens to be registered in a pipeline never leaks its own
options (Karras sigmas, solver order, ...) into another. The given scheduler is never mutated.

Example::

    >>> from diffusers import DDPMScheduler
    >>> from samplers import build_sampler, list_samplers
    >>> train = DDPMScheduler(num_train_timesteps=1000)
    >>> "dpmpp-2m" in list_samplers()
    True
    >>> s = build_sampler("dpmpp-2m", train); s.set_timesteps(20); len(s.timesteps)
    20
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: Keys of a scheduler config that describe the *training* noise schedule.
TRAINING_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                          "trained_betas", "prediction_type")

DEFAULT_SAMPLER = "dpmpp-2m"


@dataclass(frozen=True)
class SamplerSpec:
    """One registry entry: the diffusers scheduler class and the options that make the sampler."""

    scheduler_class: type
    options: Mapping[str, Any] = field(default_factory=dict)
    stochastic: bool = False   # draws fresh noise at each step (needs a generator for seeding)
    source: str = ""            # paper the update rule comes from


_REGISTRY: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(DDPMScheduler, {"clip_sample": True}, True, "Ho et al. 2020, Alg. 2"),
    # No x0 clipping for DDIM: diffusers clips x0 but keeps the unclipped epsilon in eq. 12, and
    # the inconsistent pair drops the shipped model's conditional accuracy from 0.95 to 0.56.
    "ddim": SamplerSpec(DDIMScheduler, {"clip_sample": False}, False, "Song et al. 2021, eq. 12"),
    "dpmpp-2m": SamplerSpec(DPMSolverMultistepScheduler,
                            {"algorithm_type": "dpmsolver++", "solver_order": 2}, False,
                            "Lu et al. 2022 (DPM-Solver++), Alg. 2"),
    "dpmpp-2m-karras": SamplerSpec(DPMSolverMultistepScheduler,
                                   {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                    "use_karras_sigmas": True}, False,
                                   "Lu et al. 2022; Karras et al. 2022, eq. 5 sigmas"),
    "dpmpp-sde": SamplerSpec(DPMSolverMultistepScheduler,
                             {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, True,
                             "Lu et al. 2022 (SDE-DPM-Solver++(2M))"),
    "euler": SamplerSpec(EulerDiscreteScheduler, {}, False, "Karras et al. 2022, Alg. 1 (Euler)"),
    "euler-a": SamplerSpec(EulerAncestralDiscreteScheduler, {}, True,
                           "k-diffusion sample_euler_ancestral"),
    "heun": SamplerSpec(HeunDiscreteScheduler, {}, False, "Karras et al. 2022, Alg. 1"),
    "kdpm2": SamplerSpec(KDPM2DiscreteScheduler, {}, False, "k-diffusion sample_dpm_2"),
    "kdpm2-a": SamplerSpec(KDPM2AncestralDiscreteScheduler, {}, True,
                           "k-diffusion sample_dpm_2_ancestral"),
    "unipc": SamplerSpec(UniPCMultistepScheduler, {"solver_order": 2}, False,
                         "Zhao et al. 2023 (UniPC)"),
    "deis": SamplerSpec(DEISMultistepScheduler, {"solver_order": 2}, False,
                        "Zhang & Chen 2023 (DEIS)"),
    "lms": SamplerSpec(LMSDiscreteScheduler, {}, False, "k-diffusion sample_lms"),
    "pndm": SamplerSpec(PNDMScheduler, {"skip_prk_steps": True}, False,
                        "Liu et al. 2022 (PLMS)"),
}


def list_samplers() -> list[str]:
    """All registered sampler names, sorted."""
    return sorted(_REGISTRY)


def sampler_spec(name: str) -> SamplerSpec:
    """The registry entry for ``name``; raises ``ValueError`` listing the known names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; choose one of {list_samplers()}")
    return _REGISTRY[name]


def register_sampler(name: str, spec: SamplerSpec, overwrite: bool = False) -> None:
    """Add a sampler to the registry (any diffusers-compatible scheduler class)."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"sampler {name!r} is already registered; pass overwrite=True")
    _REGISTRY[name] = spec


def training_schedule(config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> dict:
    """The training-schedule part of a scheduler config, with the betas made explicit.

    The betas come from the scheduler object when one is given, or are recomputed by building a
    ``DDPMScheduler`` from the config (which knows every diffusers beta schedule).
    """
    if isinstance(config_or_scheduler, SchedulerMixin):
        config, betas = config_or_scheduler.config, getattr(config_or_scheduler, "betas", None)
    else:
        config, betas = config_or_scheduler, None
    schedule = {k: config[k] for k in TRAINING_SCHEDULE_KEYS if k in config}
    if betas is None:
        ddpm_keys = {k: v for k, v in schedule.items()}
        betas = DDPMScheduler(**ddpm_keys).betas
    schedule["trained_betas"] = [float(b) for b in torch.as_tensor(betas, dtype=torch.float64)]
    return schedule


def build_sampler(name: str, config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]],
                  **overrides: Any) -> SchedulerMixin:
    """A fresh scheduler for sampler ``name`` on the training schedule of ``config_or_scheduler``.

    Args:
        name: a name from :func:`list_samplers`.
        config_or_scheduler: the training scheduler (or its ``config``); it is not modified.
        overrides: extra scheduler options (e.g. ``timestep_spacing="leading"``).

    Returns:
        A new diffusers scheduler; call ``set_timesteps(num_inference_steps)`` before use.

    Raises:
        ValueError: unknown sampler name.
    """
    spec = sampler_spec(name)
    kwargs = training_schedule(config_or_scheduler)
    kwargs.update(timestep_spacing="trailing")  # start at t = T-1 (Lin et al. 2024, Sec. 3.3)
    kwargs.update(spec.options)
    kwargs.update(overrides)
    return spec.scheduler_class(**kwargs)
