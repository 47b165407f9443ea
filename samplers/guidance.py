"""Guidance methods by name: how the conditional and the null (or weak) predictions are combined.

At each denoising step a pipeline asks its guidance method two things:

1. :meth:`GuidanceMethod.needs_null`: whether this step needs the null-condition prediction (or,
   for autoguidance, the weaker network's); if not, it runs the conditional forward alone (one
   forward of B rows instead of 2B, or one network instead of two);
2. :meth:`GuidanceMethod.guide`: the model output (and the sample) to hand to
   ``scheduler.step``, from the conditional prediction, the null prediction (or ``None``) and the
   step's :class:`GuidanceStep` (index, timestep, noise level ``sigma`` / ``alpha_bar``, ``x_t``,
   ``prediction_type``).

Plain classifier-free guidance (``"cfg"``, Ho & Salimans 2022, eq. 6) is the default and computes
exactly ``uncond + s * (cond - uncond)``, as the pipelines did before methods existed
(bit-identical images). The registry works like the samplers': :func:`build_guidance` makes a
configured method from a name and options, :func:`list_guidance_methods` lists the names,
:func:`register_guidance` adds one.

================  ====================================================  ==============================
name              what it does                                          source
================  ====================================================  ==============================
cfg               ``u + s (c - u)``; option ``guidance_rescale`` (phi)  Ho & Salimans 2022, eq. 6;
                                                                        Lin et al. 2024, eq. 15-16
interval          CFG for ``sigma_lo <= sigma <= sigma_hi``, else ``c``  Kynkaanniemi et al. 2024, eq. 2
apg               CFG update split parallel / orthogonal to ``c`` in    Sadat et al. 2024, Alg. 1
                  x0 space; ``eta``, norm threshold, momentum
cfg-zero-star     ``s* u + s (c - s* u)``, ``s* = <c,u>/||u||^2``; zero Fan et al. 2025, eq. 8 and 4.2
                  output for the first ``zero_init_steps`` steps
cfg++             x0 from ``u + lam (c - u)``, renoised with ``u``'s    Chung et al. 2024, Alg. 1-2
                  epsilon (DDIM, DDPM, Euler, Euler-a only)
autoguidance      ``w + s (c - w)``, ``w`` a weaker network's           Karras et al. 2024, eq. 1
                  conditional prediction (a saved pipeline folder)
================  ====================================================  ==============================

Why not diffusers' guiders (``diffusers.guiders``) as objects: they are built for modular
pipelines - each guider prepares and splits its own batches (``prepare_inputs`` over a
``BlockState``), counts its own steps from ``set_state`` and is a ``ConfigMixin`` with hub
loading - while our pipeline owns the batching (null and conditional rows in one forward), the
step index and NFE. Their *math* is reused where it is public: APG calls
:func:`diffusers.guiders.adaptive_projected_guidance.normalized_guidance` (and its
``MomentumBuffer``), CFG-Zero* :func:`~diffusers.guiders.classifier_free_zero_star_guidance.cfg_zero_star_scale`,
guidance rescale :func:`~diffusers.guiders.guider_utils.rescale_noise_cfg`. diffusers'
``AutoGuidance`` guides with the *same* network with layers skipped, not with a separately trained
weaker one (Karras et al.), so autoguidance is written here; CFG++ and interval guidance have no
diffusers guider (interval ``start``/``stop`` are fractions of steps, not noise levels).

Example::

    >>> import torch
    >>> cfg = build_guidance("cfg")
    >>> u, c = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    >>> out, _ = cfg.guide(c, u, None, guidance_scale=3.0)
    >>> out.flatten().tolist()
    [3.0, 3.0, 3.0, 3.0]
    >>> sorted(list_guidance_methods())
    ['apg', 'autoguidance', 'cfg', 'cfg++', 'cfg-zero-star', 'interval']
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar, Mapping, Optional, Union

import torch

from samplers.checks import check_int, check_number
from samplers.diffusion import _x0_and_epsilon

#: The guidance method a pipeline uses when none is named (and none is saved in its config).
DEFAULT_GUIDANCE = "cfg"


# --- the step a method sees -----------------------------------------------------------------------

def noise_level(alphas_cumprod: torch.Tensor, t) -> float:
    """``alpha_bar`` (``alphas_cumprod``) of a network call at timestep ``t`` of the training
    schedule: exact at an integer ``t``; between two integers interpolated in log-sigma
    (``sigma = sqrt((1 - abar) / abar)``), the inverse of the diffusers Euler / Karras samplers'
    ``_sigma_to_t``, so a Karras-spaced step gets back its own sigma.

    Raises:
        ValueError: ``t`` outside ``[0, len(alphas_cumprod) - 1]``.
    """
    t = float(t.item() if isinstance(t, torch.Tensor) else t)
    last = len(alphas_cumprod) - 1
    if not 0 <= t <= last:
        raise ValueError(f"timestep {t} is outside the training schedule [0, {last}]")
    lo = int(math.floor(t))
    if t == lo:
        return float(alphas_cumprod[lo])
    a0, a1 = float(alphas_cumprod[lo]), float(alphas_cumprod[lo + 1])
    if a1 <= 0:  # zero terminal SNR: sigma is infinite at the end
        return a0 if t - lo < 1 else 0.0
    w = t - lo
    log_sigma = (1 - w) * 0.5 * math.log((1 - a0) / a0) + w * 0.5 * math.log((1 - a1) / a1)
    return 1.0 / (1.0 + math.exp(2 * log_sigma))


class GuidanceStep:
    """What a guidance method may read at one denoising step.

    Attributes:
        index: the step's index in ``scheduler.timesteps`` (0 = the first, noisiest call).
        num_steps: ``len(scheduler.timesteps)`` (network calls of one network per image).
        t: the timestep given to the network.
        x_t: the network's input ``(B, C, H, W)`` (after ``scale_model_input``): ``sqrt(abar) x0 +
            sqrt(1 - abar) eps`` in the training parameterisation.
        sample: the scheduler's latents ``(B, C, H, W)`` (``x_t / input_scale``), passed on to
            ``scheduler.step`` unless a method changes it (CFG++).
        scheduler: the running scheduler (read only; never stepped here).

    Properties computed on first use (so plain CFG costs nothing extra): ``alpha_bar``
    (:func:`noise_level`), ``sigma = sqrt((1 - abar) / abar)`` (EDM / Karras noise level; inf at
    zero SNR), ``prediction_type`` (the scheduler config's; ``"epsilon"`` if it has none) and
    ``input_scale`` (``x_t = input_scale * sample``: 1 for DDPM / DDIM-type samplers,
    ``1 / sqrt(sigma^2 + 1)`` for Euler-type ones).
    """

    def __init__(self, index: int, num_steps: int, t, x_t: torch.Tensor, sample: torch.Tensor,
                 scheduler):
        self.index, self.num_steps, self.t = index, num_steps, t
        self.x_t, self.sample, self.scheduler = x_t, sample, scheduler
        self._alpha_bar: Optional[float] = None

    @property
    def alpha_bar(self) -> float:
        if self._alpha_bar is None:
            alphas_cumprod = getattr(self.scheduler, "alphas_cumprod", None)
            if alphas_cumprod is None:
                raise ValueError(f"this guidance method needs the step's noise level, and the "
                                 f"scheduler {type(self.scheduler).__name__} has no "
                                 f"alphas_cumprod")
            self._alpha_bar = noise_level(alphas_cumprod, self.t)
        return self._alpha_bar

    @property
    def sigma(self) -> float:
        a = self.alpha_bar
        return math.inf if a <= 0 else math.sqrt((1 - a) / a)

    @property
    def prediction_type(self) -> str:
        return getattr(getattr(self.scheduler, "config", None), "prediction_type", "epsilon")

    @property
    def input_scale(self) -> float:
        ones = torch.ones((), device=self.sample.device, dtype=torch.float32)
        return float(self.scheduler.scale_model_input(ones, self.t))

    def to_x0_eps(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` of a network output at this step (Ho et al. 2020, eq. 4; v: Salimans &
        Ho 2022)."""
        return _x0_and_epsilon(prediction, self.x_t, self.alpha_bar, self.prediction_type)

    def from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The network output of ``prediction_type`` that means ``(x0, eps)``."""
        a = self.alpha_bar
        kind = self.prediction_type
        if kind == "epsilon":
            return eps
        if kind == "sample":
            return x0
        if kind == "v_prediction":
            return a ** 0.5 * eps - (1 - a) ** 0.5 * x0
        raise ValueError(f"guidance in x0 space needs prediction_type epsilon, v_prediction or "
                         f"sample, got {kind!r}")

    def from_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """The network output that means ``x0`` at this ``x_t`` (its eps follows from ``x_t``)."""
        a = self.alpha_bar
        eps = (self.x_t - a ** 0.5 * x0) / (1 - a) ** 0.5
        return self.from_x0_eps(x0, eps)


# --- the interface and the registry --------------------------------------------------------------

class GuidanceMethod:
    """Base class: plain classifier-free guidance (Ho & Salimans 2022, eq. 6).

    A subclass sets ``name`` and ``source``, takes its options as keyword arguments (checked in
    ``__init__``: ``ValueError`` naming the option, the value and the allowed range) and
    overrides what differs: :meth:`needs_null`, :meth:`guide`, :meth:`reset` (per-call state),
    :meth:`check_sampler`, :meth:`check_scale`. ``uses_guide_network`` says the null prediction
    comes from a second network (``guide_model`` option) with the *same* condition instead of the
    null condition. ``default_guidance_scale`` is the command line's default scale.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    uses_guide_network: ClassVar[bool] = False
    #: reads the step's noise level from a DDPM schedule (``alphas_cumprod``): sigma, x0 / eps
    #: conversions; refused up front for flow-matching and EDM models (:meth:`check_scheduler`)
    needs_ddpm_noise_level: ClassVar[bool] = False
    default_guidance_scale: ClassVar[float] = 2.0

    def __init__(self, **options: Any):
        self.options: dict = dict(options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{type(self).__name__}({opts})"

    def spec(self) -> dict:
        """``{"name": ..., "options": {...}}``: JSON-able when the options are (what a saved
        pipeline's config and a sample-cache key hold)."""
        return {"name": self.name, "options": dict(sorted(self.options.items()))}

    def reset(self) -> None:
        """Forget per-call state (APG's momentum); pipelines call it at the start of each call."""

    def uses_null(self, guidance_scale: float) -> bool:
        """Whether any step of a call at ``guidance_scale`` may need the null prediction (then the
        pipeline prepares the null condition)."""
        return guidance_scale != 1.0

    def needs_null(self, step: GuidanceStep, guidance_scale: float) -> bool:
        """Whether ``step`` needs the null (or weak) prediction; ``False`` runs one forward."""
        return guidance_scale != 1.0

    def guide(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], step: GuidanceStep,
              guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(model_output, sample)`` for ``scheduler.step``. ``cond``, ``uncond``: network outputs
        ``(B, C, H, W)`` (``uncond`` is ``None`` where :meth:`needs_null` said no)."""
        sample = None if step is None else step.sample
        if uncond is None:
            return cond, sample
        return uncond + guidance_scale * (cond - uncond), sample

    def check_sampler(self, name: Optional[str]) -> None:
        """Raise ``ValueError`` if this method is not defined for sampler ``name`` (``None``: a
        scheduler of no registry)."""

    def check_scale(self, guidance_scale: float) -> None:
        """Raise ``ValueError`` for a ``guidance_scale`` this method does not take."""

    def check_scheduler(self, scheduler) -> None:
        """Raise ``ValueError`` if this method reads a DDPM noise level (``alphas_cumprod``) and
        ``scheduler`` has none (flow-matching and EDM samplers): naming the method, the scheduler
        and the methods that do work there."""
        if self.needs_ddpm_noise_level and getattr(scheduler, "alphas_cumprod", None) is None:
            usable = [n for n, c in sorted(_REGISTRY.items()) if not c.needs_ddpm_noise_level]
            raise ValueError(f"guidance {self.name!r} reads the step's noise level from a DDPM "
                             f"schedule (alphas_cumprod), which {type(scheduler).__name__} (a "
                             f"flow-matching or EDM sampler) does not have; use one of {usable}")


_REGISTRY: dict[str, type] = {}


def register_guidance(cls: type) -> type:
    """Add a :class:`GuidanceMethod` subclass to the registry under ``cls.name`` (a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, GuidanceMethod) and cls.name):
        raise ValueError(f"register_guidance takes a GuidanceMethod subclass with a name, got {cls!r}")
    _REGISTRY[cls.name] = cls
    return cls


def list_guidance_methods() -> list[str]:
    """Registered guidance method names, sorted."""
    return sorted(_REGISTRY)


def guidance_options(name: str) -> dict[str, Any]:
    """The options of method ``name`` -> their defaults.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    cls = _guidance_class(name)
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.kind == p.KEYWORD_ONLY}


def _guidance_class(name: str) -> type:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown guidance method {name!r}; choose one of "
                         f"{list_guidance_methods()}")
    return _REGISTRY[name]


def build_guidance(name: str, **options: Any) -> GuidanceMethod:
    """A configured guidance method.

    Raises:
        ValueError: unknown name, an option the method does not take (the message lists those it
            takes) or an option value out of range.

    Example::

        >>> build_guidance("interval", sigma_lo=0.3, sigma_hi=3.0).options
        {'sigma_lo': 0.3, 'sigma_hi': 3.0, 'guidance_rescale': 0.0}
        >>> build_guidance("apg", beta=1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: guidance method 'apg' has no option 'beta'; it takes ['eta', ...]
    """
    cls = _guidance_class(name)
    allowed = guidance_options(name)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"guidance method {name!r} has no option {unknown[0]!r}; it takes "
                         f"{list(allowed)}")
    return cls(**options)


def as_guidance(guidance: Union[str, Mapping, GuidanceMethod, None]) -> GuidanceMethod:
    """A method from a name, a spec ``{"name": ..., "options": {...}}`` (as :meth:`~GuidanceMethod.spec`
    writes it), a method itself, or ``None`` (the default, plain CFG).

    Raises:
        ValueError: unknown name or options; TypeError: anything else.
    """
    if guidance is None:
        return build_guidance(DEFAULT_GUIDANCE)
    if isinstance(guidance, GuidanceMethod):
        return guidance
    if isinstance(guidance, str):
        return build_guidance(guidance)
    if isinstance(guidance, Mapping) and "name" in guidance:
        return build_guidance(guidance["name"], **dict(guidance.get("options") or {}))
    raise TypeError(f"guidance must be a name from {list_guidance_methods()}, a method from "
                    f"build_guidance(...) or a spec {{'name': ..., 'options': {{...}}}}, got "
                    f"{type(guidance).__name__} ({guidance!r})")


def is_default_guidance(guidance: Union[str, Mapping, GuidanceMethod, None]) -> bool:
    """Whether ``guidance`` is plain CFG with default options (the images of no ``guidance``)."""
    method = as_guidance(guidance)
    return method.spec() == build_guidance(DEFAULT_GUIDANCE).spec()


def _rescale(pred: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, eq. 15-16): the guided output's per-image std matched to
    the conditional one's, mixed by ``phi``; diffusers' ``rescale_noise_cfg``."""
    if phi == 0:
        return pred
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    return rescale_noise_cfg(pred, cond, phi)


# --- the methods ----------------------------------------------------------------------------------

@register_guidance
class ClassifierFreeGuidance(GuidanceMethod):
    """Plain CFG (Ho & Salimans 2022, eq. 6): ``uncond + s (cond - uncond)``, with the optional
    guidance rescale of Lin et al. 2024, eq. 15-16 (``guidance_rescale`` = phi in [0, 1]:
    ``phi * x_cfg * std(cond) / std(x_cfg) + (1 - phi) * x_cfg``, std per image).

    NFE: one batched forward (2B rows) per step; ``guidance_scale == 1`` runs B rows and is the
    conditional prediction unchanged. With ``guidance_rescale=0`` (the default) the output is
    bit-identical to the pipelines' CFG before guidance methods existed.
    """

    name = "cfg"
    source = "Ho & Salimans 2022, eq. 6; rescale: Lin et al. 2024, eq. 15-16"

    def __init__(self, *, guidance_rescale: float = 0.0):
        super().__init__(guidance_rescale=check_number("guidance_rescale", guidance_rescale, 0, 1))

    def guide(self, cond, uncond, step, guidance_scale):
        pred, sample = super().guide(cond, uncond, step, guidance_scale)
        if uncond is None:
            return pred, sample
        return _rescale(pred, cond, self.options["guidance_rescale"]), sample


@register_guidance
class IntervalGuidance(ClassifierFreeGuidance):
    """Guidance in a limited interval (Kynkaanniemi et al. 2024, eq. 2): CFG where the step's noise
    level ``sigma = sqrt((1 - abar) / abar)`` lies in ``[sigma_lo, sigma_hi]``, the conditional
    prediction alone elsewhere (one forward of B rows there).

    Options: ``sigma_lo``, ``sigma_hi`` (EDM noise levels, ``0 <= sigma_lo <= sigma_hi``;
    defaults 0.28 and 5.42, an interval of middle noise levels of the paper's order for EDM2 at
    512 px, not tuned for other models), ``guidance_rescale`` as for ``cfg``.
    """

    needs_ddpm_noise_level = True
    name = "interval"
    source = "Kynkaanniemi et al. 2024, eq. 2"

    def __init__(self, *, sigma_lo: float = 0.28, sigma_hi: float = 5.42,
                 guidance_rescale: float = 0.0):
        super().__init__(guidance_rescale=guidance_rescale)
        lo = check_number("sigma_lo", sigma_lo, 0)
        hi = check_number("sigma_hi", sigma_hi, lo, hint=" (at least sigma_lo)")
        self.options = {"sigma_lo": lo, "sigma_hi": hi, "guidance_rescale": self.options["guidance_rescale"]}

    def needs_null(self, step, guidance_scale):
        return guidance_scale != 1.0 and \
            self.options["sigma_lo"] <= step.sigma <= self.options["sigma_hi"]


@register_guidance
class AdaptiveProjectedGuidance(GuidanceMethod):
    """APG (Sadat et al. 2024, Alg. 1 / eq. 7-9), in x0 space as the paper applies it: the CFG
    update ``D = x0_cond - x0_uncond`` (after momentum ``D <- D + beta * D_prev``, and scaling to a
    norm at most ``norm_threshold`` per image) is split into its part parallel to ``x0_cond`` and
    the orthogonal rest; the guided ``x0 = x0_cond + (s - 1) (D_orth + eta * D_par)``, turned back
    into the network's parameterisation at the step's ``x_t``.

    Options: ``eta`` (weight of the parallel part; 0 = the paper's choice, 1 with no threshold and
    no momentum = CFG), ``norm_threshold`` (r; 0 = off), ``momentum`` (beta; 0 = off; the paper's
    reverse momentum is negative). The momentum is state kept across the steps of one call and
    reset at the start of each call. Math: diffusers' ``normalized_guidance`` and
    ``MomentumBuffer`` (``use_original_formulation=True`` with scale ``s - 1`` is the paper's
    form). NFE as CFG.
    """

    needs_ddpm_noise_level = True
    name = "apg"
    source = "Sadat et al. 2024, Alg. 1"

    def __init__(self, *, eta: float = 0.0, norm_threshold: float = 0.0, momentum: float = 0.0):
        super().__init__(eta=check_number("eta", eta),
                         norm_threshold=check_number("norm_threshold", norm_threshold, 0),
                         momentum=check_number("momentum", momentum, -1, 1))
        self._buffer = None

    def reset(self):
        self._buffer = None

    def guide(self, cond, uncond, step, guidance_scale):
        if uncond is None:
            return cond, step.sample
        from diffusers.guiders.adaptive_projected_guidance import (MomentumBuffer,
                                                                   normalized_guidance)

        if self._buffer is None and self.options["momentum"] != 0:
            self._buffer = MomentumBuffer(self.options["momentum"])
        x0_cond, _ = step.to_x0_eps(cond)
        x0_uncond, _ = step.to_x0_eps(uncond)
        x0 = normalized_guidance(x0_cond, x0_uncond, guidance_scale - 1, self._buffer,
                                 eta=self.options["eta"],
                                 norm_threshold=self.options["norm_threshold"],
                                 use_original_formulation=True)
        return step.from_x0(x0), step.sample


@register_guidance
class CFGZeroStar(ClassifierFreeGuidance):
    """CFG-Zero* (Fan et al. 2025, eq. 8 and Sec. 4.2): the null prediction scaled by the optimised
    ``s* = <cond, uncond> / ||uncond||^2`` (per image, over all pixels), ``pred = s* uncond +
    s (cond - s* uncond)``; and zero-init: the model output is 0 for the first
    ``zero_init_steps`` steps (no null forward is made there; the conditional forward still
    runs and counts, so NFE is that of CFG with those steps unguided).

    The paper derives it for flow-matching velocities, where a zero velocity leaves the sample
    still. Applied to an epsilon network's output (as diffusers applies it), eps = 0 leaves the
    sample still under Euler-type samplers (their ODE slope is eps) but rescales it under
    DDIM-type ones; set ``zero_init_steps=0`` there. ``s*`` is diffusers' ``cfg_zero_star_scale``.
    Options: ``zero_init_steps`` (int >= 0, default 1, as the paper and diffusers),
    ``guidance_rescale`` as for ``cfg``.
    """

    name = "cfg-zero-star"
    source = "Fan et al. 2025, eq. 8 and Sec. 4.2"

    def __init__(self, *, zero_init_steps: int = 1, guidance_rescale: float = 0.0):
        super().__init__(guidance_rescale=guidance_rescale)
        self.options = {"zero_init_steps": check_int("zero_init_steps", zero_init_steps, 0),
                        "guidance_rescale": self.options["guidance_rescale"]}

    def zeroed(self, step) -> bool:
        return step.index < self.options["zero_init_steps"]

    def needs_null(self, step, guidance_scale):
        return guidance_scale != 1.0 and not self.zeroed(step)

    def guide(self, cond, uncond, step, guidance_scale):
        if self.zeroed(step):
            return torch.zeros_like(cond), step.sample
        if uncond is None:
            return cond, step.sample
        from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale

        alpha = cfg_zero_star_scale(cond.flatten(1), uncond.flatten(1))        # (B, 1)
        uncond = uncond * alpha.view(-1, *(1,) * (cond.ndim - 1))              # s* uncond
        pred = uncond + guidance_scale * (cond - uncond)
        return _rescale(pred, cond, self.options["guidance_rescale"]), step.sample


#: Samplers CFG++ is defined for: first-order single-step updates that are a function of (x0,
#: eps) alone - DDIM (Chung et al. 2024, Alg. 1), DDPM (DDIM with eta = 1), Euler and Euler
#: ancestral (Alg. 2 and its k-diffusion form ``sample_euler_ancestral_cfg_pp``).
CFGPP_SAMPLERS = ("ddim", "ddpm", "euler", "euler-a")


@register_guidance
class CFGPlusPlus(GuidanceMethod):
    """CFG++ (Chung et al. 2024, Alg. 1-2): ``x0`` from the guided ``u + lam (c - u)`` with
    ``lam = guidance_scale`` in [0, 1], renoised with the *unconditional* epsilon:
    ``x_prev = sqrt(abar_prev) x0_lam + sqrt(1 - abar_prev) eps_u`` (DDIM; Euler:
    ``x0_lam + sigma_next eps_u``).

    Done through the scheduler: the step gets the state ``(x_t', out')`` with
    ``x_t' = sqrt(abar) x0_lam + sqrt(1 - abar) eps_u`` and ``out'`` the network output meaning
    ``(x0_lam, eps_u)``, whose DDIM / DDPM / Euler / Euler-a update is exactly the CFG++ one.
    Multistep and higher-order samplers would mix states of two different ``x_t``: refused
    (``ValueError`` naming :data:`CFGPP_SAMPLERS`). NFE as CFG (the null is needed at every step,
    even at ``lam = 1``).
    """

    needs_ddpm_noise_level = True
    name = "cfg++"
    source = "Chung et al. 2024, Alg. 1-2"
    default_guidance_scale = 0.6

    def __init__(self):
        super().__init__()

    def uses_null(self, guidance_scale):
        return True

    def needs_null(self, step, guidance_scale):
        return True

    def check_sampler(self, name):
        if name not in CFGPP_SAMPLERS:
            given = "a scheduler of no registry" if name is None else f"sampler {name!r}"
            raise ValueError(f"guidance 'cfg++' is defined for the samplers {list(CFGPP_SAMPLERS)} "
                             f"(Chung et al. 2024), not for {given}; pass sampler= one of them")

    def check_scale(self, guidance_scale):
        check_number("guidance_scale", guidance_scale, 0, 1,
                     hint=" for guidance 'cfg++' (lambda of Chung et al. 2024)")

    def guide(self, cond, uncond, step, guidance_scale):
        x0_cond, _ = step.to_x0_eps(cond)
        x0_uncond, eps_uncond = step.to_x0_eps(uncond)
        x0 = x0_uncond + guidance_scale * (x0_cond - x0_uncond)   # x0 of u + lam (c - u)
        a = step.alpha_bar
        x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps_uncond           # renoised with eps_u
        sample = step.sample + (x_t - step.x_t) / step.input_scale
        return step.from_x0_eps(x0, eps_uncond), sample


@register_guidance
class AutoGuidance(ClassifierFreeGuidance):
    """Autoguidance (Karras et al. 2024, eq. 1): ``w + s (c - w)``, where ``w`` is a weaker
    network's prediction with the *same* condition (an earlier checkpoint or a smaller U-Net of
    the same family, class table and noise schedule), in place of the null-condition prediction.

    Options: ``guide_model``: the weaker network, a saved pipeline folder (str; the pipeline loads
    its U-Net and checks it fits) or a loaded pipeline / U-Net; ``guidance_rescale`` as for
    ``cfg``. NFE counts both networks: 2 forwards of B rows per step (1 at ``guidance_scale == 1``).
    Works for unconditional models too (nothing needs a null condition).
    """

    name = "autoguidance"
    source = "Karras et al. 2024, eq. 1"
    uses_guide_network = True

    def __init__(self, *, guide_model: Any = None, guidance_rescale: float = 0.0):
        super().__init__(guidance_rescale=guidance_rescale)
        if guide_model is not None and not isinstance(guide_model, (str, torch.nn.Module)) \
                and not hasattr(guide_model, "unet"):
            raise ValueError(f"guide_model must be a saved pipeline folder (str) or a loaded "
                             f"pipeline / U-Net, got {type(guide_model).__name__}")
        self.options = {"guide_model": guide_model,
                        "guidance_rescale": self.options["guidance_rescale"]}
