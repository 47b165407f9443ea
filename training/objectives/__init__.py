"""Per-family training objectives, and the registry that names them: what the one loop in
:mod:`training.loop` optimises.

An objective (:class:`~training.objectives.base.Objective`) owns its trainable modules, says which
optimizer trains which module (a GAN has two), computes a loss for one optimizer on one
micro-batch, and knows how to show progress (a sample grid, an accuracy) and how to export its
result. The loop owns everything else: data, devices, mixed precision, accumulation, EMA, LR
schedules, logging, checkpoints and resume.

One module per family:

* :mod:`~training.objectives.base`: :class:`Objective` and what objectives share;
* :mod:`~training.objectives.diffusion`: ``diffusion`` (class labels) and ``text-diffusion``;
* :mod:`~training.objectives.flow`: ``flow-matching`` and ``text-flow-matching`` (rectified flow
  on the same U-Net);
* :mod:`~training.objectives.edm`: ``edm`` and ``text-edm`` (EDM preconditioning of the same
  U-Net, Karras et al. 2022);
* :mod:`~training.objectives.consistency`: ``consistency`` (consistency distillation of a saved
  DDPM, flow or EDM teacher into a 1-4 step student);
* :mod:`~training.objectives.classifier`: ``classifier``;
* :mod:`~training.objectives.gan`: ``gan``;
* :mod:`~training.objectives.vq_ar`: ``vqvae`` and ``prior`` (the autoregressive baseline).

:data:`OBJECTIVES` is the one list of objective names (``train.objective``):
:func:`training.config.load_config` checks names against it, :func:`build_objective` builds from
it, and :func:`register_objective` adds a family to it.

Randomness (noise, timesteps, condition dropout, augmentation) comes from the ``generator`` the
loop passes in, whose state is checkpointed, so a resumed run draws exactly what a straight run
would have.

Example::

    >>> from training.config import load_config
    >>> from training.objectives import build_objective
    >>> cfg = load_config(None, ["train.objective=classifier", "classifier.channels=[8,16]"])
    >>> type(build_objective(cfg, num_classes=10)).__name__
    'ClassifierObjective'
"""

from __future__ import annotations

from typing import Dict, Sequence, Type

from training.objectives.base import (GRID_COLUMNS, GRID_ROWS, Objective, draw_generators,
                                      quiet)
from training.objectives.classifier import ClassifierObjective
from training.objectives.consistency import (ConsistencyObjective, TeacherODE,
                                             consistency_distance)
from training.objectives.diffusion import (BETA_SCHEDULES, DiffusionObjective,
                                           TextDiffusionObjective, min_snr_weights,
                                           training_scheduler)
from training.objectives.edm import (EDMObjective, TextEDMObjective, edm_loss,
                                     edm_training_scheduler, sample_edm_sigmas)
from training.objectives.flow import (FlowMatchingObjective, TextFlowMatchingObjective,
                                      flow_matching_loss, flow_training_scheduler,
                                      sample_flow_timesteps, shift_sigmas)
from training.objectives.gan import (DIVERSITY_PER_CLASS, DIVERSITY_REAL_PER_CLASS, GAN_LOSSES,
                                     GANObjective, hinge_d_loss, hinge_g_loss, ns_d_loss,
                                     ns_g_loss, r1_penalty)
from training.objectives.vq_ar import PriorObjective, VQVAEObjective, resolve_vqvae_path

__all__ = [
    "OBJECTIVES", "build_objective", "objective_class", "register_objective",
    # base
    "Objective", "GRID_ROWS", "GRID_COLUMNS", "draw_generators", "quiet",
    # diffusion
    "DiffusionObjective", "TextDiffusionObjective", "BETA_SCHEDULES", "training_scheduler",
    "min_snr_weights",
    # flow
    "FlowMatchingObjective", "TextFlowMatchingObjective", "flow_matching_loss",
    "flow_training_scheduler", "sample_flow_timesteps", "shift_sigmas",
    # edm
    "EDMObjective", "TextEDMObjective", "edm_loss", "edm_training_scheduler", "sample_edm_sigmas",
    # consistency distillation
    "ConsistencyObjective", "TeacherODE", "consistency_distance",
    # classifier
    "ClassifierObjective",
    # gan
    "GANObjective", "GAN_LOSSES", "hinge_d_loss", "hinge_g_loss", "ns_d_loss", "ns_g_loss",
    "r1_penalty", "DIVERSITY_PER_CLASS", "DIVERSITY_REAL_PER_CLASS",
    # vq_ar
    "VQVAEObjective", "PriorObjective", "resolve_vqvae_path",
]

#: ``train.objective`` name -> objective class; the one list of names
OBJECTIVES: Dict[str, Type[Objective]] = {
    "diffusion": DiffusionObjective,
    "classifier": ClassifierObjective,
    "gan": GANObjective,
    "vqvae": VQVAEObjective,
    "prior": PriorObjective,
    "text-diffusion": TextDiffusionObjective,
    "flow-matching": FlowMatchingObjective,
    "text-flow-matching": TextFlowMatchingObjective,
    "edm": EDMObjective,
    "text-edm": TextEDMObjective,
    "consistency": ConsistencyObjective,
}


def register_objective(name: str, cls: Type[Objective]) -> Type[Objective]:
    """Make ``cls`` trainable as ``train.objective=name``; returns ``cls``.

    Raises:
        ValueError: ``name`` is not a non-empty str, ``cls`` is not a subclass of
            :class:`Objective`, or ``name`` already names another class.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an objective name must be a non-empty str, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ValueError(f"objective {name!r} must be a subclass of "
                         f"training.objectives.Objective, got {cls!r}")
    if OBJECTIVES.get(name, cls) is not cls:
        raise ValueError(f"objective {name!r} is already registered as "
                         f"{OBJECTIVES[name].__qualname__}; pick another name")
    OBJECTIVES[name] = cls
    return cls


def objective_class(name: str) -> Type[Objective]:
    """The class registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"train.objective must be one of {tuple(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def build_objective(cfg, num_classes: int, class_names: Sequence[str] = ()) -> Objective:
    """The objective named by ``cfg.train.objective``, built for ``num_classes`` classes.

    Raises:
        ValueError: an unregistered name (see :func:`objective_class`).
    """
    return objective_class(cfg.train.objective)(cfg, num_classes, class_names)
