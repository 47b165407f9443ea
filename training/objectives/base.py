"""What every objective shares: the :class:`Objective` seam between the loop and a model family,
and the bodies each family used to write by hand.

An objective owns its trainable modules, says which optimizer trains which module (a GAN has two),
computes a loss for one optimizer on one micro-batch, and knows how to show progress (a sample
grid, an accuracy) and how to export its result. The loop (:mod:`training.loop`) owns everything
else: data, devices, mixed precision, accumulation, EMA, LR schedules, logging, checkpoints, resume.

Shared here, used by every family:

* :func:`draw_generators`: per-image generators whose seeds come from the loop's generator (one
  generator per image, :func:`diffusion.pipelines.base.generators_from_seeds`);
* :meth:`Objective.sample_grid`: the training-time sample grid (one row per class or prompt);
* :meth:`Objective.export`: ``save_pretrained`` of the family's pipeline, or of the module itself
  for a family without one (classifier, VQ-VAE);
* :func:`quiet`: a pipeline without progress bars (sampling inside the loop).

Modules are put in eval mode around sampling with :func:`diffusion.pipelines.base.eval_mode`.

The config ``cfg`` an objective takes is a :class:`training.config.ExperimentConfig`; this package
does not import :mod:`training.config` (which imports the registry to check ``train.objective``).

Example (a family in a dozen lines; register it to train it with ``train.objective=mine``)::

    >>> import torch
    >>> from training.objectives import Objective, register_objective
    >>> class MeanObjective(Objective):
    ...     def __init__(self, cfg, num_classes, class_names=()):
    ...         super().__init__(cfg, num_classes, class_names)
    ...         self.modules["model"] = torch.nn.Linear(1, 1)
    ...     def loss(self, optimizer, modules, batch, generator):
    ...         x, _ = batch
    ...         loss = modules["model"](x.mean((1, 2, 3))[:, None]).pow(2).mean()
    ...         return loss, {"loss": loss.item()}
    >>> register_objective("mean-example", MeanObjective)       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from diffusion.pipelines.base import generators_from_seeds

#: sample grids during training: at most this many rows (classes), this many images per row
GRID_ROWS = 10
GRID_COLUMNS = 10


def draw_generators(generator: torch.Generator, count: int) -> List[torch.Generator]:
    """``count`` CPU generators, one per image, seeded with ints in ``[0, 2**31)`` drawn from
    ``generator`` in one call (so the loop's generator advances the same way whatever the images)."""
    seeds = torch.randint(0, 2**31, (count,), generator=generator).tolist()
    return generators_from_seeds(seeds)


def quiet(pipe):
    """``pipe`` with its progress bars off (samples drawn inside the training loop); returns it."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Objective:
    """The seam between the loop and a model family. Subclasses set ``self.modules`` and
    implement :meth:`loss`; those that sample through a pipeline implement :meth:`pipeline`.

    Args:
        cfg: the :class:`training.config.ExperimentConfig` of the run.
        num_classes: real classes of the training set (the null class is ``num_classes``).
        class_names: one name per class (saved with the exported model), or empty.
    """

    #: the loop's training set (:class:`diffusion.data.datasets.TensorImageDataset`, images in
    #: [-1, 1]), set by :class:`training.loop.Trainer`; for evaluations that compare with real images
    train_data = None

    #: names in ``modules`` whose weights get an EMA copy (used for samples and export)
    ema_modules: tuple = ("model",)
    #: the name in ``modules`` that samples and is exported (the GAN's ``"generator"``)
    sample_module: str = "model"
    #: the optimizer step about to be taken (0-based); the loop sets it before each step's losses
    step: int = 0

    def __init__(self, cfg, num_classes: int, class_names: Sequence[str] = ()):
        self.cfg, self.num_classes, self.class_names = cfg, num_classes, list(class_names)
        self.modules: Dict[str, nn.Module] = {}

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ``ValueError`` for settings this objective cannot train with; called by
        :func:`training.config.load_config` before any heavy work (default: accept all)."""

    def prepare_dataset(self, dataset):
        """The dataset the loop trains on, made from the loaded one (default: unchanged; the AR
        prior tokenises it once)."""
        return dataset

    def optimizer_groups(self) -> Dict[str, str]:
        """optimizer name -> module name; optimizers step in this order on each batch."""
        return {"model": "model"}

    def optimizer_settings(self) -> Dict[str, dict]:
        """optimizer name -> AdamW keyword overrides (``lr``, ``betas``, ...) of ``cfg.train``'s."""
        return {}

    def loss(self, optimizer: str, modules: Dict[str, nn.Module], batch, generator: torch.Generator):
        """``(loss, logs)`` for ``optimizer`` on one micro-batch; ``logs`` maps name -> float."""
        raise NotImplementedError

    def pipeline(self, module: nn.Module):
        """The pipeline (a ``diffusers.DiffusionPipeline``, progress bars off) that samples from
        ``module`` (``modules[sample_module]``), or ``None`` for a family that exports the module
        alone (default)."""
        return None

    def evaluate(self, modules: Dict[str, nn.Module], generator: torch.Generator):
        """``(scalars, image_grid or None)`` to log; ``modules`` hold EMA weights if enabled."""
        return {}, None

    def grid_class_labels(self) -> Optional[List[int]]:
        """Rows of the class sample grid: ids ``0 .. min(num_classes, GRID_ROWS) - 1``, or ``None``
        (one unconditional row) when the model has no classes."""
        return list(range(min(self.num_classes, GRID_ROWS))) if self.num_classes else None

    def sample_grid(self, pipe, generator: torch.Generator, prompt: Optional[List[str]] = None,
                    **call_kwargs) -> torch.Tensor:
        """The training-time sample grid: ``GRID_COLUMNS`` images per row, one row per prompt of
        ``prompt`` if given, else per class of :meth:`grid_class_labels` (one unconditional row
        without classes). One generator per image (:func:`draw_generators`); ``call_kwargs`` go
        to ``pipe`` (steps, guidance, truncation, ...).

        Returns a float ``(3, H', W')`` grid in [0, 1] (torchvision ``make_grid``, padding 1).
        """
        from torchvision.utils import make_grid

        n = GRID_COLUMNS
        if prompt is not None:
            rows, num_rows = {"prompt": prompt}, len(prompt)
        else:
            labels = self.grid_class_labels()
            rows, num_rows = {"class_labels": labels}, len(labels) if labels else 1
        out = pipe(**rows, num_images_per_prompt=n, output_type="pt",
                   generator=draw_generators(generator, num_rows * n), **call_kwargs)
        return make_grid(out.images, nrow=n, padding=1)

    def export(self, modules: Dict[str, nn.Module], out_dir: Path) -> None:
        """Write the trained model to ``out_dir`` with safetensors: :meth:`pipeline` of
        ``modules[sample_module]`` (EMA weights if enabled), or that module when the family has
        no pipeline."""
        module = modules[self.sample_module]
        pipe = self.pipeline(module)
        (module if pipe is None else pipe).save_pretrained(out_dir, safe_serialization=True)
