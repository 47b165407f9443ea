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
    >>> nfe_for_steps("heun", train, 10), steps_for_nfe("heun", train, 20)
    (19, 10)

Given a perfect denoiser, every sampler here ends on the clean sample (to 1e-4) for every step
count tested (1..50) and every prediction type it accepts (``tests/samplers/test_oracle.py``);
DEIS ends one training step short of it (``SamplerSpec.final_sigmas_type``).

Clipping and thresholding x0 are offered where the diffusers class takes them
(:func:`clipping_options`): ``clip_sample`` for ddim, ddpm and heun, ``thresholding`` (dynamic
thresholding, Saharia et al. 2022, Sec. 2.3) for ddim, ddpm, the dpmpp samplers, unipc and deis;
off unless asked for, but for ddpm's ``clip_sample``. Whichever is on, each update uses the
clipped x0 *and* the epsilon recomputed from it, ``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``
(diffusers' ``use_clipped_model_output``), so a step never mixes two different x0. The other
samplers refuse the options by name (``ValueError``).

A zero-terminal-SNR training schedule (``rescale_betas_zero_snr``, Lin et al. 2024) reaches the
samplers that can start at SNR 0 (:func:`zero_terminal_snr_samplers`); the others refuse it by
name, and so does every sampler for an epsilon model (``ValueError``).

Each sampler applies to one parameterisation (:data:`PARAMETERISATIONS`,
``SamplerSpec.parameterisation``): "ddpm" (the above) or "flow" - flow matching / rectified flow
(Lipman et al. 2023; Liu et al. 2023), whose training schedule is a diffusers
``FlowMatchEulerDiscreteScheduler`` carrying ``num_train_timesteps`` and ``shift``
(:func:`flow_training_schedule`; Esser et al. 2024) and whose network predicts the velocity
``eps - x0`` at ``t = sigma * num_train_timesteps``: ``flow-euler``, ``flow-heun``,
``flow-dpmpp-2m``, ``flow-unipc``; or "edm" - EDM preconditioning (Karras et al. 2022, Table 1),
whose training schedule is a diffusers ``EDMEulerScheduler`` carrying ``sigma_min``, ``sigma_max``,
``sigma_data`` and ``rho`` (:func:`edm_training_schedule`) and whose network ``F`` is called at
``(c_in x, c_noise = ln(sigma) / 4)`` with ``D(x; sigma) = c_skip x + c_out F``: ``edm-euler``,
``edm-heun`` (Alg. 2, with optional churn), ``edm-dpmpp-2m``. A sampler of another
parameterisation is refused by name, with the ones that do apply (:func:`check_parameterisation`,
:func:`samplers_for`).

The consistency samplers ``lcm``, ``flow-lcm`` and ``edm-lcm`` (:mod:`samplers.consistency`) sample
students distilled by ``train.objective=consistency``: 1-4 steps, guidance distilled in
(``SamplerSpec.distilled``; the pipeline refuses ``guidance_scale != 1`` with them). They are listed
apart: ``list_samplers(distilled=True)``, and by :func:`samplers_for` for a student's scheduler.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from diffusers import (
    DDPMScheduler,
    DEISMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    LCMScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from samplers.checks import check_int
from samplers.consistency import EDMLCMScheduler, FlowLCMScheduler
# Re-exported: the scheduler subclasses lived here before samplers/schedulers.py.
from samplers.schedulers import (PREDICTION_TYPES, EDMHeunScheduler,  # noqa: F401
                                 FlowDPMSolverMultistepScheduler, FlowUniPCMultistepScheduler, ScheduledDDIMScheduler,
                                 ScheduledPNDMScheduler, _next_timestep, _x0_and_epsilon)

#: Keys of a scheduler config that describe the *training* noise schedule.
#: ``rescale_betas_zero_snr`` is carried only when on (:func:`training_schedule`), so schedules
#: without it give the same sampler configs (and sample-cache keys) as before it existed.
TRAINING_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                          "trained_betas", "prediction_type", "rescale_betas_zero_snr")

#: Network outputs that can be converted to x0 at SNR = 0 (zero terminal SNR, Lin et al. 2024,
#: Sec. 3.2): there ``x_T = eps``, so an epsilon network carries no information about x0
#: (``x0 = (x_T - eps) / sqrt(abar_T)`` is 0/0); v (``v_T = -x0``) and x0 itself can.
ZERO_SNR_PREDICTION_TYPES = ("v_prediction", "sample")

DEFAULT_SAMPLER = "dpmpp-2m"

#: How a network's output relates to ``x_t`` (the ``parameterisation`` of a sampler or a training
#: schedule): "ddpm" - discrete DDPM timesteps, ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``, the
#: network predicts epsilon, v or x0 (:data:`PREDICTION_TYPES`); "flow" - flow matching / rectified
#: flow (Lipman et al. 2023; Liu et al. 2023), ``x_t = (1 - sigma) x0 + sigma eps`` with sigma in
#: [0, 1], the network predicts the velocity ``eps - x0`` at ``t = sigma * num_train_timesteps``;
#: "edm" - EDM preconditioning (Karras et al. 2022, Table 1), ``x = x0 + sigma eps`` with sigma in
#: [sigma_min, sigma_max], the network ``F`` is called at ``(c_in x, c_noise = ln(sigma) / 4)`` and
#: the denoiser is ``D(x; sigma) = c_skip x + c_out F``.
PARAMETERISATIONS = ("ddpm", "flow", "edm")

#: What a flow-matching network predicts (diffusers' name for the velocity ``eps - x0``).
FLOW_PREDICTION_TYPES = ("flow_prediction",)

#: What an EDM network predicts: the paper's ``F`` of ``D = c_skip x + c_out F``, which diffusers'
#: EDM schedulers call ``"epsilon"`` (their ``"v_prediction"`` flips the sign of ``c_out``, a
#: convention of other checkpoints that is not trained here).
EDM_PREDICTION_TYPES = ("epsilon",)

#: Keys of an EDM scheduler config that describe the training schedule (what every EDM sampler
#: is built on; the sigma discretisation and churn are the sampler's own options).
EDM_SCHEDULE_KEYS = ("num_train_timesteps", "sigma_min", "sigma_max", "sigma_data", "rho",
                     "prediction_type")

#: Scheduler options that clip or threshold the x0 prediction -> the switch each needs (``None``:
#: it is the switch). Clipping: ``x0 -> clamp(x0, -clip_sample_range, clip_sample_range)``.
#: Dynamic thresholding (Saharia et al. 2022, Sec. 2.3): ``x0 -> clamp(x0, -s, s) / s``, ``s`` the
#: ``dynamic_thresholding_ratio`` quantile of ``|x0|`` per image, clamped to
#: ``[1, sample_max_value]``.
X0_CLIPPING_OPTIONS: Mapping[str, Optional[str]] = {
    "clip_sample": None, "clip_sample_range": "clip_sample",
    "thresholding": None, "dynamic_thresholding_ratio": "thresholding",
    "sample_max_value": "thresholding",
}


@dataclass(frozen=True)
class SamplerSpec:
    """One registry entry: the diffusers scheduler class and the options that make the sampler."""

    scheduler_class: type
    options: Mapping[str, Any] = field(default_factory=dict)
    stochastic: bool = False   # draws fresh noise at each step (needs a generator for seeding)
    source: str = ""            # paper the update rule comes from
    # Network outputs the update rule accepts; build_sampler raises ValueError for the others.
    prediction_types: tuple[str, ...] = PREDICTION_TYPES
    # Noise level the last step lands on: "zero" (the clean sample x0) or "sigma_min" (the t = 0
    # training noise level, sigma = sqrt(1 - abar_0) / sqrt(abar_0), ~0.01 on the linear schedule).
    final_sigmas_type: str = "zero"
    # The model parameterisation the update is for (PARAMETERISATIONS): build_sampler refuses a
    # training schedule of the other one, naming the samplers that apply.
    parameterisation: str = "ddpm"
    # A sampler for a distilled consistency model (samplers.consistency): classifier-free guidance
    # was distilled into the network, so the pipeline refuses guidance_scale != 1 with it; listed
    # apart (list_samplers(distilled=True)) since its steps are few and drawn from a fixed grid.
    distilled: bool = False


_REGISTRY: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(DDPMScheduler, {"clip_sample": True}, True, "Ho et al. 2020, Alg. 2"),
    # No x0 clipping for DDIM by default (DDIMScheduler's default is on); with clip_sample or
    # thresholding, ScheduledDDIMScheduler recomputes epsilon from the clipped x0 (see there).
    # ScheduledDDIMScheduler: diffusers' DDIM steps by T // n, which misses the trailing schedule.
    "ddim": SamplerSpec(ScheduledDDIMScheduler, {"clip_sample": False}, False,
                        "Song et al. 2021, eq. 12"),
    "dpmpp-2m": SamplerSpec(DPMSolverMultistepScheduler,
                            {"algorithm_type": "dpmsolver++", "solver_order": 2}, False,
                            "Lu et al. 2022 (DPM-Solver++), Alg. 2"),
    # Karras sigmas are rounded to training timesteps for the network: near sigma_min the ramp
    # is denser than that grid, so for many steps (n >= 79 on the linear schedule) consecutive
    # steps share a timestep; the sigmas the solver steps with stay strictly decreasing.
    "dpmpp-2m-karras": SamplerSpec(DPMSolverMultistepScheduler,
                                   {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                    "use_karras_sigmas": True}, False,
                                   "Lu et al. 2022; Karras et al. 2022, eq. 5 sigmas"),
    "dpmpp-sde": SamplerSpec(DPMSolverMultistepScheduler,
                             {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, True,
                             "Lu et al. 2022 (SDE-DPM-Solver++(2M))"),
    "euler": SamplerSpec(EulerDiscreteScheduler, {}, False, "Karras et al. 2022, Alg. 1 (Euler)"),
    # The k-diffusion ports raise NotImplementedError for x0-prediction ("sample") in step().
    "euler-a": SamplerSpec(EulerAncestralDiscreteScheduler, {}, True,
                           "k-diffusion sample_euler_ancestral", ("epsilon", "v_prediction")),
    "heun": SamplerSpec(HeunDiscreteScheduler, {}, False, "Karras et al. 2022, Alg. 1"),
    "kdpm2": SamplerSpec(KDPM2DiscreteScheduler, {}, False, "k-diffusion sample_dpm_2",
                         ("epsilon", "v_prediction")),
    "kdpm2-a": SamplerSpec(KDPM2AncestralDiscreteScheduler, {}, True,
                           "k-diffusion sample_dpm_2_ancestral", ("epsilon", "v_prediction")),
    "unipc": SamplerSpec(UniPCMultistepScheduler, {"solver_order": 2}, False,
                         "Zhao et al. 2023 (UniPC)"),
    # diffusers' DEIS (0.42) has no final_sigmas_type option: its last sigma is sigma(t = 0), and
    # its log-SNR update cannot reach sigma = 0 (h = inf), so it stops one training step short.
    "deis": SamplerSpec(DEISMultistepScheduler, {"solver_order": 2}, False,
                        "Zhang & Chen 2023 (DEIS)", final_sigmas_type="sigma_min"),
    "lms": SamplerSpec(LMSDiscreteScheduler, {}, False, "k-diffusion sample_lms"),
    # set_alpha_to_one: PNDMScheduler's default (False) makes the last step land on
    # alphas_cumprod[0], leaving noise of std sqrt(1 - abar_0) (~0.01); True ends on x0, as DDIM
    # does by default. ScheduledPNDMScheduler: see its docstring (stride and v/x0 outputs).
    "pndm": SamplerSpec(ScheduledPNDMScheduler, {"skip_prk_steps": True, "set_alpha_to_one": True},
                        False, "Liu et al. 2022 (PLMS)"),
    # Flow matching (velocity networks, FLOW_PREDICTION_TYPES), built on (num_train_timesteps,
    # shift) of the training schedule (flow_training_schedule).
    "flow-euler": SamplerSpec(FlowMatchEulerDiscreteScheduler, {}, False,
                              "Liu et al. 2023 (rectified flow), Euler; Esser et al. 2024",
                              FLOW_PREDICTION_TYPES, parameterisation="flow"),
    # Heun (Karras et al. 2022, Alg. 1 on sigma in [0, 1]): 2n - 1 calls, the last step Euler.
    "flow-heun": SamplerSpec(FlowMatchHeunDiscreteScheduler, {}, False,
                             "Karras et al. 2022, Alg. 1 (Heun) on the flow ODE",
                             FLOW_PREDICTION_TYPES, parameterisation="flow"),
    "flow-dpmpp-2m": SamplerSpec(FlowDPMSolverMultistepScheduler,
                                 {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                  "use_flow_sigmas": True, "prediction_type": "flow_prediction"},
                                 False, "Lu et al. 2022 (DPM-Solver++), Alg. 2; flow sigmas",
                                 FLOW_PREDICTION_TYPES, parameterisation="flow"),
    "flow-unipc": SamplerSpec(FlowUniPCMultistepScheduler,
                              {"solver_order": 2, "use_flow_sigmas": True,
                               "prediction_type": "flow_prediction"},
                              False, "Zhao et al. 2023 (UniPC); flow sigmas",
                              FLOW_PREDICTION_TYPES, parameterisation="flow"),
    # EDM (Karras et al. 2022): built on (sigma_min, sigma_max, sigma_data, rho) of the training
    # schedule (edm_training_schedule); Karras sigmas (eq. 5), c_in in scale_model_input,
    # c_noise = ln(sigma) / 4 as the timesteps, c_skip / c_out in step (precondition_outputs).
    "edm-euler": SamplerSpec(EDMEulerScheduler, {}, False,
                             "Karras et al. 2022, Alg. 1 (Euler steps)",
                             EDM_PREDICTION_TYPES, parameterisation="edm"),
    # Heun with optional churn (s_churn, s_tmin, s_tmax, s_noise; off by default): 2n - 1 calls.
    "edm-heun": SamplerSpec(EDMHeunScheduler, {}, False, "Karras et al. 2022, Alg. 2 (Heun)",
                            EDM_PREDICTION_TYPES, parameterisation="edm"),
    "edm-dpmpp-2m": SamplerSpec(EDMDPMSolverMultistepScheduler,
                                {"algorithm_type": "dpmsolver++", "solver_order": 2}, False,
                                "Lu et al. 2022 (DPM-Solver++), Alg. 2; EDM sigmas",
                                EDM_PREDICTION_TYPES, parameterisation="edm"),
    # Consistency models distilled by train.objective=consistency (samplers.consistency): predict
    # x0, re-noise to the next time of the distillation grid with fresh noise; one call per step.
    # LCMScheduler fits DDPM students as is (its c_skip / c_out are the objective's).
    "lcm": SamplerSpec(LCMScheduler, {}, True,
                       "Luo et al. 2023 (LCM), Alg. 3; Song et al. 2023, Alg. 1",
                       distilled=True),
    "flow-lcm": SamplerSpec(FlowLCMScheduler, {}, True,
                            "Song et al. 2023, Alg. 1 on the flow path (diffusers FlowMatchLCM)",
                            FLOW_PREDICTION_TYPES, parameterisation="flow", distilled=True),
    "edm-lcm": SamplerSpec(EDMLCMScheduler, {}, True,
                           "Song et al. 2023, Alg. 1 on EDM's preconditioning",
                           EDM_PREDICTION_TYPES, parameterisation="edm", distilled=True),
}


def list_samplers(parameterisation: Optional[str] = None,
                  distilled: Optional[bool] = False) -> list[str]:
    """Registered sampler names, sorted: all of them, or those for ``parameterisation`` ("ddpm",
    "flow" or "edm", see :data:`PARAMETERISATIONS`). For the ones a given model can run, see
    :func:`samplers_for`.

    ``distilled``: ``False`` (default) the ODE / SDE samplers of denoising networks; ``True`` the
    multistep consistency samplers of distilled students (``SamplerSpec.distilled``,
    :mod:`samplers.consistency`); ``None`` both.

    Raises:
        ValueError: an unknown ``parameterisation``.

    Example::

        >>> list_samplers(distilled=True)
        ['edm-lcm', 'flow-lcm', 'lcm']
    """
    if parameterisation is not None and parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got "
                         f"{parameterisation!r}")
    return sorted(n for n, spec in _REGISTRY.items()
                  if parameterisation in (None, spec.parameterisation)
                  and distilled in (None, spec.distilled))


#: Default steps of a consistency sampler (command line, compare): distillation trains for 1-4.
DISTILLED_DEFAULT_STEPS = 4


def is_distilled_sampler(scheduler_or_name: Any) -> bool:
    """Whether a sampler name, a scheduler (or its saved config), or a pipeline's scheduler is a
    consistency sampler
    (``SamplerSpec.distilled``): one for a student whose guidance was distilled in, so it is
    sampled with ``guidance_scale = 1`` and few steps.

    Example::

        >>> is_distilled_sampler("lcm"), is_distilled_sampler(DDPMScheduler())
        (True, False)
    """
    if isinstance(scheduler_or_name, Mapping):  # a saved scheduler config: by its class name
        return any(spec.distilled and spec.scheduler_class.__name__ ==
                   scheduler_or_name.get("_class_name") for spec in _REGISTRY.values())
    name = scheduler_or_name if isinstance(scheduler_or_name, str) else \
        sampler_name(scheduler_or_name)
    return name in _REGISTRY and _REGISTRY[name].distilled


def sampler_spec(name: str) -> SamplerSpec:
    """The registry entry for ``name``; raises ``ValueError`` listing the known names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; choose one of "
                         f"{list_samplers(distilled=None)}")
    return _REGISTRY[name]


def sampler_name_of(scheduler: SchedulerMixin) -> Optional[str]:
    """The registered name of the sampler ``scheduler`` is (as :func:`build_sampler` makes it), or
    ``None``: the name whose scheduler class is the scheduler's and whose options its config
    holds; of several (``dpmpp-2m`` and ``dpmpp-2m-karras``), the one with the most options.

    Example::

        >>> from diffusers import DDPMScheduler
        >>> sampler_name_of(build_sampler("euler-a", DDPMScheduler()))
        'euler-a'
    """
    config = dict(getattr(scheduler, "config", {}))
    found = [(len(spec.options), name) for name, spec in _REGISTRY.items()
             if type(scheduler) is spec.scheduler_class
             and all(config.get(k) == v for k, v in spec.options.items())]
    return max(found)[1] if found else None


def sampler_name(scheduler_or_pipeline: Any) -> Optional[str]:
    """The name to report for a scheduler, or for a pipeline's ``scheduler``: its registered name
    (:func:`sampler_name_of`), else its class name; ``None`` for ``None`` or a pipeline without a
    scheduler (the GAN and autoregressive families).

    Example::

        >>> from diffusers import DDIMScheduler, DDPMScheduler
        >>> sampler_name(build_sampler("heun", DDPMScheduler())), sampler_name(DDIMScheduler())
        ('heun', 'DDIMScheduler')
    """
    scheduler = scheduler_or_pipeline
    if scheduler is not None and not isinstance(scheduler, SchedulerMixin):
        scheduler = getattr(scheduler, "scheduler", None)
    if scheduler is None:
        return None
    return sampler_name_of(scheduler) or type(scheduler).__name__


def register_sampler(name: str, spec: SamplerSpec, overwrite: bool = False) -> None:
    """Add a sampler to the registry (any diffusers-compatible scheduler class)."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"sampler {name!r} is already registered; pass overwrite=True")
    _REGISTRY[name] = spec


def training_schedule(config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> dict:
    """The training-schedule part of a scheduler config, with the betas made explicit.

    The betas come from the scheduler object when one is given, or are recomputed by building a
    ``DDPMScheduler`` from the config (which knows every diffusers beta schedule).

    ``rescale_betas_zero_snr`` (zero terminal SNR, Lin et al. 2024, Alg. 1) is kept only when on:
    the betas are then already the rescaled ones (``betas[-1] = 1``, ``alphas_cumprod[-1] = 0``;
    rescaling them again is the identity up to float32 rounding) and the flag tells the sampler to
    treat ``t = T - 1`` as SNR 0 (:func:`zero_terminal_snr_samplers`). When off it is dropped, so a
    schedule without it builds the same sampler config as before the option existed.

    A flow-matching schedule gives :func:`flow_training_schedule` instead, an EDM one
    :func:`edm_training_schedule`.
    """
    if parameterisation_of(config_or_scheduler) == "flow":
        return flow_training_schedule(config_or_scheduler)
    if parameterisation_of(config_or_scheduler) == "edm":
        return edm_training_schedule(config_or_scheduler)
    if isinstance(config_or_scheduler, SchedulerMixin):
        config, betas = config_or_scheduler.config, getattr(config_or_scheduler, "betas", None)
    else:
        config, betas = config_or_scheduler, None
    schedule = {k: config[k] for k in TRAINING_SCHEDULE_KEYS if k in config}
    if not schedule.get("rescale_betas_zero_snr", False):
        schedule.pop("rescale_betas_zero_snr", None)
    if betas is None:
        ddpm_keys = {k: v for k, v in schedule.items()}
        betas = DDPMScheduler(**ddpm_keys).betas
    schedule["trained_betas"] = [float(b) for b in torch.as_tensor(betas, dtype=torch.float64)]
    return schedule


def _config_of(config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The config mapping of a scheduler (a diffusers one, or any object with a ``config``
    attribute: a mapping or a namespace) or the mapping itself."""
    if isinstance(config_or_scheduler, Mapping):
        return config_or_scheduler
    config = getattr(config_or_scheduler, "config", config_or_scheduler)
    if isinstance(config, Mapping):
        return config
    return dict(vars(config)) if hasattr(config, "__dict__") else {}


def parameterisation_of(config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> str:
    """The parameterisation (:data:`PARAMETERISATIONS`) of a training schedule or of a sampler built
    on one: "edm" for an EDM schedule (a ``sigma_data``: diffusers' ``EDM*`` schedulers and
    :class:`~samplers.schedulers.EDMHeunScheduler`), "flow" for a flow-matching schedule -
    diffusers' ``FlowMatch*`` scheduler configs (a ``shift`` and no betas) and solvers run with
    ``use_flow_sigmas`` or ``prediction_type="flow_prediction"`` - else "ddpm". Read from the
    config's keys, not from the class name.

    Example::

        >>> from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler
        >>> parameterisation_of(DDPMScheduler()), parameterisation_of(FlowMatchEulerDiscreteScheduler())
        ('ddpm', 'flow')
        >>> parameterisation_of(EDMEulerScheduler())
        'edm'
    """
    config = _config_of(config_or_scheduler)
    if "sigma_data" in config:
        return "edm"
    betas = any(k in config for k in ("beta_schedule", "trained_betas", "beta_start"))
    flow = (config.get("use_flow_sigmas", False) or config.get("prediction_type") in
            FLOW_PREDICTION_TYPES or ("shift" in config and not betas))
    return "flow" if flow else "ddpm"


def flow_training_schedule(config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> dict:
    """``{"num_train_timesteps": T, "shift": s}`` of a flow-matching schedule (or of a flow sampler
    built on one, whose solver keeps the shift as ``flow_shift``): the network is trained at
    ``t = sigma * T`` with ``sigma = s u / (1 + (s - 1) u)`` for the drawn ``u`` in [0, 1]
    (Esser et al. 2024, Sec. 5.3.2; diffusers' ``FlowMatchEulerDiscreteScheduler``).

    Raises:
        ValueError: ``use_dynamic_shifting`` is on (a shift per image resolution, ``mu``, which
            the samplers here do not take).
    """
    config = _config_of(config_or_scheduler)
    if config.get("use_dynamic_shifting", False):
        raise ValueError("use_dynamic_shifting=True (a resolution-dependent shift mu) is not "
                         "supported: give a fixed shift")
    shift = config["shift"] if "shift" in config else config.get("flow_shift", 1.0)
    return {"num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
            "shift": float(shift)}


def edm_training_schedule(config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> dict:
    """The EDM training schedule (:data:`EDM_SCHEDULE_KEYS`) of an EDM scheduler or its config:
    ``sigma_min``, ``sigma_max`` (the sampling range; EDM: 0.002, 80), ``sigma_data`` (the data
    std in Table 1's ``c_skip``, ``c_out``, ``c_in``; 0.5), ``rho`` (Karras et al. 2022, eq. 5; 7),
    ``num_train_timesteps`` (only the cap on sampling steps) and ``prediction_type`` (which of
    diffusers' ``c_out`` signs; :data:`EDM_PREDICTION_TYPES`). Missing keys take diffusers'
    ``EDMEulerScheduler`` defaults."""
    config = _config_of(config_or_scheduler)
    defaults = _constructor_defaults(EDMEulerScheduler)
    schedule = {k: config.get(k, defaults[k]) for k in EDM_SCHEDULE_KEYS}
    for key in ("sigma_min", "sigma_max", "sigma_data", "rho"):
        schedule[key] = float(schedule[key])
    schedule["num_train_timesteps"] = int(schedule["num_train_timesteps"])
    return schedule


#: How refusals name each parameterisation.
_DESCRIBED = {"ddpm": "DDPM models (discrete timesteps; epsilon, v or x0 prediction)",
              "flow": "flow-matching models (velocity prediction)",
              "edm": "EDM-preconditioned models (Karras et al. 2022; continuous sigma)"}


def check_parameterisation(name: str,
                           config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` unless sampler ``name`` applies to the parameterisation of the training
    schedule ``config_or_scheduler``; the message names the samplers that do
    (:func:`samplers_for`).

    Example::

        >>> check_parameterisation("flow-euler", DDPMScheduler())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sampler 'flow-euler' is for flow-matching models (...); this model is one of the DDPM models (...): use one of [...]
    """
    spec, model = sampler_spec(name), parameterisation_of(config_or_scheduler)
    if spec.parameterisation != model:
        raise ValueError(f"sampler {name!r} is for {_DESCRIBED[spec.parameterisation]}; this "
                         f"model is one of the {_DESCRIBED[model]}: use one of "
                         f"{samplers_for(config_or_scheduler)}")


def samplers_for(config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> list[str]:
    """The registered samplers that run on this training schedule (or a sampler built on it),
    sorted: those of its parameterisation that :func:`build_sampler` accepts with their default
    options (e.g. a zero-terminal-SNR schedule leaves out the samplers that cannot start at SNR 0,
    an x0 model those without an x0 update). ``python -m diffusion samplers --model DIR`` lists
    these.

    Example::

        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> samplers_for(FlowMatchEulerDiscreteScheduler(shift=3.0))
        ['flow-dpmpp-2m', 'flow-euler', 'flow-heun', 'flow-unipc']
    """
    names = []
    # A distilled student (its scheduler a consistency sampler) also lists the consistency samplers.
    distilled = None if is_distilled_sampler(config_or_scheduler) else False
    for name in list_samplers(parameterisation_of(config_or_scheduler), distilled=distilled):
        try:
            build_sampler(name, config_or_scheduler)
        except ValueError:
            continue
        names.append(name)
    return names


def _flow_sampler_kwargs(spec: SamplerSpec,
                         config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]]) -> dict:
    """The constructor arguments of a flow sampler on the flow training schedule: diffusers'
    ``FlowMatch*`` classes call the shift ``shift``, its multistep solvers ``flow_shift``."""
    schedule = flow_training_schedule(config_or_scheduler)
    takes = _constructor_defaults(spec.scheduler_class)
    shift_key = "shift" if "shift" in takes else "flow_shift"
    return {"num_train_timesteps": schedule["num_train_timesteps"], shift_key: schedule["shift"]}


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
        ValueError: unknown sampler name, a sampler for another parameterisation than the
            schedule's (DDPM, flow matching or EDM, see :func:`check_parameterisation`), a
            ``prediction_type`` the sampler does not accept (see :func:`check_prediction_type`), an x0 clipping/thresholding option the
            sampler does not offer or that would have no effect (see :func:`clipping_options`),
            or a zero-terminal-SNR schedule (``rescale_betas_zero_snr``) that the sampler cannot
            run (see :func:`zero_terminal_snr_samplers`) or with ``prediction_type="epsilon"``.

    Example::

        >>> build_sampler("ddim", DDPMScheduler(), clip_sample=True).config.clip_sample
        True
        >>> build_sampler("euler", DDPMScheduler(), clip_sample=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sampler 'euler' does not offer clip_sample (...); clip_sample is offered by ...
    """
    spec = sampler_spec(name)
    check_parameterisation(name, config_or_scheduler)
    if spec.parameterisation == "flow":  # sigma from 1 to 0, no betas (flow_training_schedule)
        kwargs = {**_flow_sampler_kwargs(spec, config_or_scheduler), **spec.options, **overrides}
        check_prediction_type(name, kwargs.get("prediction_type", FLOW_PREDICTION_TYPES[0]))
        _check_x0_clipping(name, overrides, kwargs)
        return spec.scheduler_class(**kwargs)
    if spec.parameterisation == "edm":  # Karras sigmas on the schedule's range, c_* of sigma_data
        kwargs = {**edm_training_schedule(config_or_scheduler), **spec.options, **overrides}
        check_prediction_type(name, kwargs["prediction_type"])
        _check_x0_clipping(name, overrides, kwargs)
        return spec.scheduler_class(**kwargs)
    kwargs = training_schedule(config_or_scheduler)
    kwargs.update(timestep_spacing="trailing")  # start at t = T-1 (Lin et al. 2024, Sec. 3.3)
    kwargs.update(spec.options)
    kwargs.update(overrides)
    check_prediction_type(name, kwargs.get("prediction_type", "epsilon"))  # diffusers' default
    _check_x0_clipping(name, overrides, kwargs)
    _check_zero_terminal_snr(name, kwargs)
    return spec.scheduler_class(**kwargs)


def zero_terminal_snr_samplers() -> list[str]:
    """The samplers that run a zero-terminal-SNR schedule (``rescale_betas_zero_snr``, Lin et al.
    2024): those whose scheduler class takes the option, sorted.

    DDIM and DDPM step on ``alphas_cumprod`` directly and are exact at ``abar_T = 0``; the
    DPM-Solver family, UniPC, Euler and Euler-a replace ``abar_T = 0`` by ``2**-24`` (diffusers:
    "so first sigma is not inf"), i.e. they start at sigma ~ 4096, not at infinity. The others'
    diffusers classes have no zero-SNR form: on the rescaled betas heun, kdpm2, kdpm2-a and lms
    start from ``init_noise_sigma = sigma_T = inf``, DEIS steps in log-SNR (``lambda_T = -inf``) and
    PNDM's transfer divides by ``sqrt(abar_T) = 0``; each returns NaN. dpmpp-2m-karras is refused
    too, as is any sampler built with Karras, exponential or beta sigmas
    (:data:`RESPACED_SIGMAS_OPTIONS`): their ramp starts at the stand-in sigma 4096, which (the
    stand-in breaks the monotone sigma table: sigma_{T-2} ~ 15406) is looked up as t = 995, so the
    first network call is not at t = T - 1, where zero-SNR sampling must start (Lin et al. 2024,
    Sec. 3.3).

    Example::

        >>> "euler" in zero_terminal_snr_samplers(), "heun" in zero_terminal_snr_samplers()
        (True, False)
    """
    return [n for n in list_samplers("ddpm")
            if _zero_snr_refusal(n, sampler_spec(n).options) is None]


#: Options that re-space the sampling sigmas from ``sigma_max`` (Karras et al. 2022, eq. 5 and
#: its exponential / beta variants) instead of taking them from the trailing timesteps.
RESPACED_SIGMAS_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _zero_snr_refusal(name: str, kwargs: Mapping[str, Any]) -> Optional[str]:
    """Why sampler ``name`` built with ``kwargs`` cannot run a zero-terminal-SNR schedule, or
    ``None`` if it can."""
    scheduler_class = sampler_spec(name).scheduler_class
    if "rescale_betas_zero_snr" not in _constructor_defaults(scheduler_class):
        return (f"its scheduler {scheduler_class.__name__} has no zero-SNR form (at SNR 0 its "
                f"first sigma is infinite, or its update divides by sqrt(alphas_cumprod[-1]) = 0, and "
                f"the samples are NaN)")
    respaced = [k for k in RESPACED_SIGMAS_OPTIONS if kwargs.get(k)]
    if respaced:
        return (f"{respaced[0]} re-spaces the sigmas from diffusers' stand-in sigma_max = 4096, "
                f"which maps to t = 995, so the first network call is not at t = T - 1 "
                f"(Lin et al. 2024, Sec. 3.3)")
    return None


def _check_zero_terminal_snr(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``kwargs`` (the scheduler's arguments) ask for zero terminal SNR and
    sampler ``name`` cannot run it, or the network predicts epsilon (undefined x0 at SNR 0)."""
    if not kwargs.get("rescale_betas_zero_snr", False):
        return
    refusal = _zero_snr_refusal(name, kwargs)
    if refusal is not None:
        raise ValueError(f"sampler {name!r} cannot sample a zero-terminal-SNR schedule "
                         f"(rescale_betas_zero_snr=True): {refusal}; use one of "
                         f"{zero_terminal_snr_samplers()}")
    prediction_type = kwargs.get("prediction_type", "epsilon")
    if prediction_type not in ZERO_SNR_PREDICTION_TYPES:
        raise ValueError(f"rescale_betas_zero_snr=True needs prediction_type in "
                         f"{ZERO_SNR_PREDICTION_TYPES}, got {prediction_type!r}: at SNR 0 an "
                         f"epsilon network sees x_T = eps and cannot give x0 (Lin et al. 2024, "
                         f"Sec. 3.2)")


def _constructor_defaults(scheduler_class: type) -> dict[str, Any]:
    """The keyword arguments ``scheduler_class(...)`` takes -> their defaults."""
    return {k: p.default for k, p in inspect.signature(scheduler_class.__init__).parameters.items()
            if k != "self"}


def clipping_options(name: str) -> tuple[str, ...]:
    """Which of ``"clip_sample"`` and ``"thresholding"`` sampler ``name`` offers: those its
    scheduler class takes. Either one, when on, clips x0 and makes the update use the epsilon
    recomputed from the clipped x0 (checked by ``tests/samplers/test_oracle.py``): ddim by
    :class:`ScheduledDDIMScheduler`; ddpm because its posterior mean (Ho et al. 2020, eq. 7) is a
    function of x_t and the clipped x0 only; heun because its slope is ``(x - x0) / sigma``; the
    dpmpp samplers and unipc because their data-prediction updates take x0 alone; deis because it
    converts the clipped x0 back to epsilon.

    The flow and EDM samplers offer neither (diffusers' flow Euler and Heun and its EDM Euler
    have no x0 clipping; the solvers of those parameterisations are kept alike).

    Raises:
        ValueError: unknown name.

    Example::

        >>> clipping_options("ddim"), clipping_options("heun"), clipping_options("euler")
        (('clip_sample', 'thresholding'), ('clip_sample',), ())
    """
    if sampler_spec(name).parameterisation != "ddpm":
        return ()
    taken = _constructor_defaults(sampler_spec(name).scheduler_class)
    return tuple(switch for switch in ("clip_sample", "thresholding") if switch in taken)


def _check_x0_clipping(name: str, overrides: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a clipping/thresholding option (:data:`X0_CLIPPING_OPTIONS`) in
    ``overrides`` that sampler ``name`` does not take, that its switch leaves without effect, or
    that the rest of ``kwargs`` (the scheduler's arguments) would silently ignore."""
    scheduler_class = sampler_spec(name).scheduler_class
    defaults = _constructor_defaults(scheduler_class)

    def on(switch: str) -> bool:
        return bool(kwargs.get(switch, defaults.get(switch)))

    for key in (k for k in overrides if k in X0_CLIPPING_OPTIONS):
        switch = X0_CLIPPING_OPTIONS[key] or key
        if key not in defaults or switch not in clipping_options(name):
            offered = [n for n in list_samplers() if switch in clipping_options(n)]
            raise ValueError(f"sampler {name!r} does not offer {key} (its scheduler "
                             f"{scheduler_class.__name__} does not take it); {switch} is offered "
                             f"by {offered}")
        if key != switch and not on(switch):
            raise ValueError(f"{key}={overrides[key]!r} has no effect unless {switch}=True "
                             f"(sampler {name!r})")
    if on("thresholding") and any(overrides.get(k) for k in ("clip_sample", "clip_sample_range")):
        raise ValueError(f"sampler {name!r}: thresholding replaces clipping (with the default "
                         f"sample_max_value=1.0 it clips to [-1, 1]); pass one of clip_sample and "
                         f"thresholding")
    if on("thresholding") and kwargs.get("predict_x0", True) is False:
        raise ValueError(f"sampler {name!r} thresholds x0 only with predict_x0=True (its noise "
                         f"prediction update has no x0 to threshold); got predict_x0=False")


def check_prediction_type(name: str, prediction_type: str) -> None:
    """Raise ``ValueError`` unless sampler ``name`` accepts networks predicting ``prediction_type``.

    Args:
        name: a name from :func:`list_samplers`.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (x0).

    Raises:
        ValueError: unknown name, or a prediction type outside
            ``sampler_spec(name).prediction_types`` (the k-diffusion ports kdpm2, kdpm2-a and
            euler-a have no x0-prediction update).

    Example::

        >>> check_prediction_type("euler", "sample")
        >>> check_prediction_type("kdpm2", "sample")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sampler 'kdpm2' does not accept prediction_type='sample'; it accepts (...)
    """
    allowed = sampler_spec(name).prediction_types
    if prediction_type not in allowed:
        raise ValueError(f"sampler {name!r} does not accept prediction_type={prediction_type!r}; "
                         f"it accepts {allowed}")


def nfe_for_steps(name: str, config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]],
                  num_inference_steps: int) -> int:
    """Network calls per image that ``num_inference_steps`` steps of sampler ``name`` make.

    That is ``len(scheduler.timesteps)`` after ``set_timesteps``: ``DiffusionImagePipeline`` makes
    one U-Net forward per entry and reports it as ``nfe`` (with guidance the conditional and null
    rows share that forward). Most samplers take ``n``; Heun and the DPM-2 pair take ``2n - 1``
    (two evaluations per step, one for the last Euler step to sigma = 0); PNDM takes ``n + 1``
    for ``n >= 2`` (its first step is evaluated twice).

    Args:
        name: a name from :func:`list_samplers`.
        config_or_scheduler: the training scheduler or its config (as for :func:`build_sampler`).
        num_inference_steps: int in ``[1, num_train_timesteps]``.

    Returns:
        The number of network evaluations, an int >= ``num_inference_steps``.

    Raises:
        ValueError: unknown name, or ``num_inference_steps`` not an int in the allowed range.

    Example::

        >>> train = DDPMScheduler(num_train_timesteps=1000)
        >>> nfe_for_steps("ddim", train, 10), nfe_for_steps("heun", train, 10)
        (10, 19)
    """
    sampler = build_sampler(name, config_or_scheduler)
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, 1,
                                    sampler.config.num_train_timesteps)
    sampler.set_timesteps(num_inference_steps)
    return len(sampler.timesteps)


def steps_for_nfe(name: str, config_or_scheduler: Union[SchedulerMixin, Mapping[str, Any]],
                  nfe: int) -> int:
    """The most steps of sampler ``name`` that make at most ``nfe`` network calls per image.

    Use it to compare samplers at equal cost: the inverse of :func:`nfe_for_steps`, which is
    non-decreasing in the step count (bisection over ``[1, num_train_timesteps]``).

    Args:
        name: a name from :func:`list_samplers`.
        config_or_scheduler: the training scheduler or its config (as for :func:`build_sampler`).
        nfe: the budget of network evaluations per image, an int >= the cost of one step.

    Returns:
        ``num_inference_steps`` in ``[1, num_train_timesteps]`` with
        ``nfe_for_steps(name, ., n) <= nfe < nfe_for_steps(name, ., n + 1)`` (or ``n`` the maximum).

    Raises:
        ValueError: unknown name, ``nfe`` not an int, or below what one step costs.

    Example::

        >>> train = DDPMScheduler(num_train_timesteps=1000)
        >>> steps_for_nfe("heun", train, 20), steps_for_nfe("ddim", train, 20)
        (10, 20)
    """
    nfe = check_int("nfe", nfe)
    sampler = build_sampler(name, config_or_scheduler)

    def cost(n: int) -> int:
        sampler.set_timesteps(n)
        return len(sampler.timesteps)

    one_step = cost(1)
    if nfe < one_step:
        raise ValueError(f"sampler {name!r} makes {one_step} network calls for one step; "
                         f"got nfe={nfe}")
    # consistency samplers step on their distillation grid of original_inference_steps points
    high = getattr(sampler.config, "original_inference_steps", None) or \
        sampler.config.num_train_timesteps
    low = 1  # invariant: cost(low) <= nfe
    while low < high:
        mid = (low + high + 1) // 2
        if cost(mid) <= nfe:
            low = mid
        else:
            high = mid - 1
    return low
