"""The one training loop, for every model family, built on ``accelerate``.

Mixed precision, gradient accumulation, DDP via ``accelerate launch`` / ``torchrun``, EMA with
warm-up (diffusers ``EMAModel``), LR schedules (diffusers ``get_scheduler``), TensorBoard logging,
periodic evaluation / sample grids from the EMA weights, atomic ``save_state`` checkpoints and exact
resume (step, epoch, position in the data, optimizer, LR schedule, EMA, RNG), and a final export.
With ``train.posthoc_ema`` it also tracks power-function EMAs and writes their snapshots, from which
an EMA of any length is rebuilt after training (:mod:`training.posthoc_ema`, Karras et al. 2024).
Nothing fails silently: a non-finite loss or gradient skips the optimizer step (and stops the run
after ``train.max_nonfinite_steps`` in a row), and no checkpoint or export is written from NaN/inf
weights (:class:`NonFiniteError`).

What is family-specific lives in an :class:`training.objectives.base.Objective` (one module per
family in :mod:`training.objectives`, named by its registry).

Example::

    >>> from training import load_config, train
    >>> cfg = load_config("training/configs/fashion_mnist_quick.yaml",
    ...                   ["train.max_steps=20", "train.output_dir=/tmp/run"])  # doctest: +SKIP
    >>> final_dir = train(cfg)                                                  # doctest: +SKIP

An in-memory :class:`diffusion.data.datasets.TensorImageDataset` replaces ``cfg.data``'s training split::

    >>> from diffusion.data.datasets import TensorImageDataset
    >>> ds = TensorImageDataset(images, labels, class_names)                    # doctest: +SKIP
    >>> final_dir = train(cfg, dataset=ds)                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from training.checkpoints import (CHECKPOINT_PREFIX, check_manifest, list_checkpoints, resume_path,
                                  write_manifest)
from training.config import ExperimentConfig, compare_resume_settings, to_flat_dict, to_yaml
from training.posthoc_ema import PosthocEMA, remove_snapshots_after, write_snapshot
from training.state import EpochSampler, TrainState, batches
from diffusion.hardware import hardware_description
from diffusion.data import TensorImageDataset, load_dataset
from training.objectives import build_objective

logger = logging.getLogger(__name__)

FINAL_DIR = "final"


class NonFiniteError(FloatingPointError):
    """Training met NaN / inf: ``train.max_nonfinite_steps`` consecutive optimizer steps with a
    non-finite loss or gradient, or weights that cannot be saved. The message names the step, the
    loss or the tensors, and the last good checkpoint."""


def _all_finite(tensors) -> torch.Tensor:
    """A 0-dim bool tensor: no element of any of ``tensors`` is NaN or inf (True if none)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def build_ema(parameters, t) -> EMAModel:
    """The weight EMA of ``parameters`` (diffusers ``EMAModel``) for ``t = cfg.train``.

    At the k-th update (k = 1, 2, ...; one per optimizer step the module takes) the decay is

    * ``t.ema_warmup=True``: ``min(t.ema_max_decay, 1 - k^(-2/3))`` (diffusers' warm-up with
      ``inv_gamma=1, power=2/3``: ``1 - (1 + s)^(-2/3)``, s = k - 1 earlier updates);
    * ``t.ema_warmup=False``: ``t.ema_max_decay`` from k = 2 on. diffusers would still ramp it
      as ``(1 + s) / (10 + s)``, so ``min_decay`` is set to the maximum, which pins it.

    Both give 0 at k = 1: the average starts at the weights after the first step. The settings
    are in the EMA's state dict, so a resumed run keeps them.
    """
    decay = float(t.ema_max_decay)
    return EMAModel(parameters, decay=decay, min_decay=0.0 if t.ema_warmup else decay,
                    use_ema_warmup=t.ema_warmup, inv_gamma=1.0, power=2 / 3)


def _cpu_only_multiprocess() -> bool:
    """True under ``torchrun`` / ``accelerate launch --multi_gpu`` with several processes and no
    GPU. accelerate (1.x) then sets up gloo only when told ``cpu=True``; otherwise every process
    trains alone as "rank 0 of 1" and they race on the same output folder."""
    if hasattr(torch, "accelerator"):
        has_accelerator = torch.accelerator.is_available()
    else:
        has_accelerator = torch.cuda.is_available()
    return not has_accelerator and int(os.environ.get("WORLD_SIZE", "1")) > 1


class Trainer:
    """Builds everything from a config; :meth:`run` trains to ``train.max_steps``.

    Args:
        cfg: the experiment config.
        accelerator: an ``Accelerator`` to use (default: one built from ``cfg.train``).
        dataset: optional in-memory :class:`diffusion.data.datasets.TensorImageDataset` (float
            ``(N, C, H, W)`` in [-1, 1], int64 labels, ``class_names``) trained on instead of the
            dataset named by ``cfg.data``. ``data.subset`` still applies to it (a random subset
            seeded by ``train.seed``); ``data.channels`` and ``data.image_size`` must describe
            its images, since the model is built from them. Objectives that evaluate still read
            ``cfg.data`` (the classifier's ``data.eval_split``).

    Raises:
        ValueError: ``dataset``'s images are not ``(N, data.channels, data.image_size,
            data.image_size)``, the dataset is smaller than one batch per process, or
            ``train.mixed_precision=fp16`` on a CPU device (before any other work).
    """

    def __init__(self, cfg: ExperimentConfig, accelerator: Optional[Accelerator] = None,
                 dataset: Optional[TensorImageDataset] = None):
        d = cfg.data
        image_shape = (d.channels, d.image_size, d.image_size)
        if dataset is not None and tuple(dataset.images.shape[1:]) != image_shape:
            raise ValueError(f"dataset images are {tuple(dataset.images.shape)}; data.channels="
                             f"{d.channels} and data.image_size={d.image_size} need "
                             f"(N, {d.channels}, {d.image_size}, {d.image_size})")
        self.cfg = t = cfg.train
        self.full_cfg = cfg
        self.output_dir = Path(t.output_dir)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=t.mixed_precision, log_with="tensorboard",
            project_dir=str(self.output_dir), rng_types=[], cpu=_cpu_only_multiprocess())
        acc = self.accelerator
        if acc.mixed_precision == "fp16" and acc.device.type == "cpu":
            # accelerate (1.x) gives fp16 on CPU neither autocast nor a GradScaler: it would
            # train in fp32 while the run records fp16.
            raise ValueError("train.mixed_precision='fp16' needs a GPU: on CPU accelerate applies "
                             "neither fp16 autocast nor a gradient scaler. Use "
                             "train.mixed_precision=bf16 (bfloat16 autocast, no scaler needed) "
                             "or no (fp32)")
        torch.set_num_threads(t.num_threads or max(1, (os.cpu_count() or 1) // acc.num_processes))
        set_seed(t.seed)  # identical initial weights on every process

        if dataset is None:
            self.dataset = load_dataset(d.name, split=d.split, root=d.root, image_size=d.image_size,
                                        channels=d.channels, subset=d.subset, seed=t.seed)
            self.dataset_description = f"{d.name}/{d.split} ({len(self.dataset)} images)"
        else:
            self.dataset = dataset.subset(d.subset, seed=t.seed) if d.subset else dataset
            self.dataset_description = f"in-memory ({len(self.dataset)} images)"
        self.objective = build_objective(cfg, self.dataset.num_classes, self.dataset.class_names)
        self.objective.train_data = self.dataset  # real images for evaluations (GAN collapse check)
        self.dataset = self.objective.prepare_dataset(self.dataset)  # e.g. tokens for the AR prior
        self.sampler = EpochSampler(len(self.dataset), t.seed)
        loader = DataLoader(self.dataset, batch_size=t.batch_size, sampler=self.sampler,
                            drop_last=True, num_workers=t.num_workers)
        if len(loader) // acc.num_processes < 1:
            raise ValueError(f"dataset of {len(self.dataset)} images is smaller than one batch of "
                             f"{t.batch_size} per process x {acc.num_processes} processes")

        groups = self.objective.optimizer_groups()
        settings = self.objective.optimizer_settings()  # per-group lr / betas (e.g. GAN TTUR)
        # kept to re-set them on the restored optimizers when a resume changes them
        self.optimizer_settings = {
            name: {"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2),
                   "weight_decay": t.weight_decay, **settings.get(name, {})} for name in groups}
        optimizers = {name: torch.optim.AdamW(self.objective.modules[module].parameters(),
                                              **self.optimizer_settings[name])
                      for name, module in groups.items()}
        # LR schedules step once per optimizer step, by us (not prepared: accelerate would step
        # them once per process).
        self.lr_schedulers = {
            name: get_scheduler(t.lr_scheduler, opt, num_warmup_steps=t.lr_warmup_steps,
                                num_training_steps=t.max_steps) for name, opt in optimizers.items()}
        names = list(self.objective.modules)
        prepared = acc.prepare(*[self.objective.modules[n] for n in names], *optimizers.values(), loader)
        self.modules = dict(zip(names, prepared[: len(names)]))
        self.optimizers = dict(zip(optimizers, prepared[len(names): -1]))
        self.loader = prepared[-1]
        self.groups = groups
        self.emas = {}
        if t.use_ema:
            for n in self.objective.ema_modules:
                ema = build_ema(acc.unwrap_model(self.modules[n]).parameters(), t)
                ema.to(acc.device)
                self.emas[n] = ema
        self.posthoc = None  # power-function EMAs for post-hoc EMA (training/posthoc_ema.py)
        if t.posthoc_ema:
            self.posthoc = PosthocEMA({n: acc.unwrap_model(self.modules[n])
                                       for n in self.objective.ema_modules},
                                      t.posthoc_ema_sigma_rels).to(acc.device)
        self.state = TrainState(t.seed * 1000 + acc.process_index, acc.process_index)
        self.skips_in_a_row = {name: 0 for name in optimizers}  # non-finite steps, per optimizer
        # registered last: a run without post-hoc EMA saves the same custom states as before
        for obj in (self.state, *self.lr_schedulers.values(), *self.emas.values(),
                    *([self.posthoc] if self.posthoc else [])):
            acc.register_for_checkpointing(obj)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``save_state`` into a temporary folder, then a manifest of every file's size and SHA-256
        (fsynced), then an atomic rename to ``checkpoint-<step>``; keeps the newest
        ``checkpoints_total_limit``. A save that fails or is killed leaves only the temporary
        folder, which is never listed or resumed from (the next save replaces it).

        Raises:
            NonFiniteError: a parameter or EMA weight is NaN / inf on any process (nothing written).
            OSError: writing failed (e.g. ENOSPC, disk full); the message names the checkpoint,
                the error and the last good checkpoint.
        """
        acc, root = self.accelerator, self.output_dir / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{self.state.step:07d}"
        self.check_finite_weights(f"checkpoint {final}")
        tmp = root / f".tmp-{final.name}"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        self.state.all_generator_states = acc.gather(self.state.generator.get_state().unsqueeze(0))
        try:
            acc.save_state(str(tmp), safe_serialization=True)
            acc.wait_for_everyone()
            if acc.is_main_process:
                (tmp / "training_config.yaml").write_text(to_yaml(self.full_cfg))
                write_manifest(tmp)
        except OSError as e:
            raise type(e)(*((e.errno,) if e.errno else ()),
                          f"writing checkpoint {final} failed: {e.strerror or e}; the partial "
                          f"{tmp.name} is never resumed from; {self.last_checkpoint_text()}") from e
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.output_dir)[: -self.cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def save_posthoc_snapshot(self) -> Path:
        """Write the tracked post-hoc EMAs as ``posthoc-ema/snapshot-<step>.safetensors``
        atomically (main process; :func:`training.posthoc_ema.write_snapshot`), keeping at most
        ``train.posthoc_ema_max_snapshots``. Snapshots live outside the checkpoints and survive
        their rotation; a resume removes those later than its checkpoint and writes them again.

        Raises:
            NonFiniteError: a tracked weight is NaN / inf (nothing written).
        """
        acc, t = self.accelerator, self.cfg
        path = self.output_dir / "posthoc-ema" / f"snapshot-{self.state.step:07d}.safetensors"
        self.check_finite_weights(f"post-hoc EMA snapshot {path}")
        if acc.is_main_process:
            path = write_snapshot(self.output_dir, self.state.step, self.posthoc,
                                  {"num_classes": self.objective.num_classes,
                                   "class_names": list(self.objective.class_names)},
                                  every=t.posthoc_ema_snapshot_every,
                                  max_snapshots=t.posthoc_ema_max_snapshots)
        acc.wait_for_everyone()
        return path

    def last_checkpoint_text(self) -> str:
        """"last good checkpoint: <path>" or that there is none (checkpoints are only written from
        finite weights, so the newest one is good)."""
        found = list_checkpoints(self.output_dir)
        if not found:
            return "no checkpoint has been written yet"
        return f"last good checkpoint: {found[-1]} (rerun with train.resume=auto to resume from it)"

    def nonfinite_weights(self) -> list:
        """Names of this process's parameters (``"<module>.<name>"``) and EMA weights (``"EMA
        <module>.<name>"``) that hold a NaN or inf; empty when all are finite."""
        bad = []
        for n, m in self.modules.items():
            named = list(self.accelerator.unwrap_model(m).named_parameters())
            bad += [f"{n}.{name}" for name, p in named if not torch.isfinite(p).all()]
            if n in self.emas:
                shadow = self.emas[n].shadow_params
                names = [name for name, _ in named] if len(named) == len(shadow) else range(len(shadow))
                bad += [f"EMA {n}.{name}" for name, s in zip(names, shadow) if not torch.isfinite(s).all()]
            if self.posthoc is not None and n in self.posthoc.emas:
                ema = self.posthoc.emas[n]
                bad += [f"post-hoc EMA (sigma_rel {sigma_rel}) {n}.{name}"
                        for sigma_rel, shadow in zip(ema.sigma_rels, ema.shadows)
                        for name, s in shadow.items() if not torch.isfinite(s).all()]
        return bad

    def check_finite_weights(self, what: str, collective: bool = True) -> None:
        """Raise :class:`NonFiniteError` if any parameter or EMA weight is NaN / inf, before
        ``what`` is written. ``collective``: every process calls it and all raise together."""
        bad = self.nonfinite_weights()
        count = len(bad)
        if collective:
            acc = self.accelerator
            count = int(acc.reduce(torch.tensor(float(count), device=acc.device), "sum").item())
        if count:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteError(f"refusing to write {what} at step {self.state.step}: non-finite "
                                 f"(NaN/inf) weights in {shown or 'another process'}; nothing was "
                                 f"written; {self.last_checkpoint_text()}")

    def load_checkpoint(self, path) -> None:
        """Load ``path`` after checking its files against its manifest.

        Raises:
            CorruptCheckpointError: a file is missing, truncated or altered (named, with how to
                resume from the previous checkpoint instead); nothing is loaded.
        """
        check_manifest(Path(path))
        self.accelerator.load_state(str(path))
        logger.info("resumed from %s at step %d", path, self.state.step)
        if self.posthoc is not None:
            if self.accelerator.is_main_process:
                # later snapshots came from the interrupted run: this run rewrites them from its own
                removed = remove_snapshots_after(self.output_dir, self.state.step)
                if removed:
                    logger.warning("removed %d post-hoc EMA snapshots after step %d (%s): the resumed "
                                   "run writes them again", len(removed), self.state.step,
                                   ", ".join(p.name for p in removed))
            self.accelerator.wait_for_everyone()

    def check_resume_settings(self, path: Path) -> list:
        """Compare this run's config with the one saved in checkpoint ``path``
        (:func:`training.config.compare_resume_settings`, table ``RESUME_POLICY``); return the
        changes to apply, ``(key, new, saved)``.

        Raises:
            ValueError: a changed setting the table refuses (each named with both values).
        """
        saved = path / "training_config.yaml"
        if not saved.is_file():
            logger.warning("checkpoint %s has no training_config.yaml: changed settings cannot be "
                           "checked", path)
            return []
        applied, refused = compare_resume_settings(self.full_cfg, saved.read_text())
        if refused:
            changes = "; ".join(f"{k} {new!r} (checkpoint: {old!r})" for k, new, old in refused)
            raise ValueError(f"cannot resume from {path} with changed settings: {changes}. The "
                             f"checkpoint's weights, optimizer state or data position were made for "
                             f"the old values: start a new train.output_dir (or train.resume=None) "
                             f"or restore the old values")
        return applied

    def apply_resume_settings(self, applied: list) -> None:
        """After :meth:`load_checkpoint`, put back what ``load_state`` restored from the
        checkpoint but this run changed: each optimizer's lr / betas / weight decay (and its LR
        schedule's base, then this step's LR), and each EMA's decay settings; log every change."""
        for key, new, old in applied:
            logger.warning("resumed with %s %r (checkpoint: %r)", key, new, old)
        keys = {k for k, _, _ in applied}
        if keys & {"train.learning_rate", "train.adam_beta1", "train.adam_beta2", "train.weight_decay",
                   "gan.generator_lr", "gan.discriminator_lr", "gan.adam_betas"}:
            for name, settings in self.optimizer_settings.items():
                sched = self.lr_schedulers[name]  # diffusers' schedules are LambdaLR
                sched.base_lrs = [settings["lr"]] * len(sched.base_lrs)
                for group, lr_lambda in zip(self.optimizers[name].param_groups, sched.lr_lambdas):
                    group.update(initial_lr=settings["lr"], betas=settings["betas"],
                                 weight_decay=settings["weight_decay"],
                                 lr=settings["lr"] * lr_lambda(sched.last_epoch))
                sched._last_lr = [g["lr"] for g in self.optimizers[name].param_groups]
        if keys & {"train.ema_max_decay", "train.ema_warmup"}:
            fresh = build_ema([torch.nn.Parameter(torch.zeros(1))], self.cfg)
            for ema in self.emas.values():
                ema.decay, ema.min_decay, ema.use_ema_warmup = fresh.decay, fresh.min_decay, fresh.use_ema_warmup

    # -- EMA ---------------------------------------------------------------------------------
    @contextmanager
    def ema_weights(self):
        """Swap the EMA weights into the live modules for the duration of the block."""
        swapped = []
        try:
            for n, ema in self.emas.items():
                params = list(self.accelerator.unwrap_model(self.modules[n]).parameters())
                ema.store(params)
                ema.copy_to(params)
                swapped.append((ema, params))
            yield {n: self.accelerator.unwrap_model(m) for n, m in self.modules.items()}
        finally:
            for ema, params in swapped:
                ema.restore(params)

    def evaluate(self) -> dict:
        """Run the objective's evaluation on the main process; log scalars and the sample grid."""
        acc, step = self.accelerator, self.state.step
        scalars = {}
        if acc.is_main_process:
            with self.ema_weights() as modules, torch.no_grad(), acc.autocast():
                scalars, grid = self.objective.evaluate(modules, torch.Generator().manual_seed(self.cfg.seed))
            if scalars:
                acc.log({f"eval/{k}": v for k, v in scalars.items()}, step=step)
                logger.info("step %d: %s", step, scalars)
            if grid is not None:
                from torchvision.utils import save_image

                out = self.output_dir / "samples" / f"step-{step:07d}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                save_image(grid.float(), out)
                tracker = acc.get_tracker("tensorboard", unwrap=True) if acc.trackers else None
                if tracker is not None:
                    tracker.add_image("samples", grid.float(), step)
        acc.wait_for_everyone()
        return scalars

    # -- training ----------------------------------------------------------------------------
    def train_step(self, data) -> dict:
        """One optimizer step per optimizer: ``gradient_accumulation_steps`` micro-batches each.

        Each optimizer's step is decided on its own (the GAN's discriminator, then its generator):
        a non-finite loss in any micro-batch or a non-finite gradient, on any process, skips it
        (:meth:`step_is_finite`): its parameters, optimizer state and LR schedule stay as they
        were, its gradients are zeroed, its logs are dropped and the EMA of its module does not
        step. ``state.step`` advances when at least one optimizer stepped, so a step that every
        optimizer skipped is taken again on the next micro-batches (the skipped ones are consumed).

        Raises:
            NonFiniteError: ``train.max_nonfinite_steps`` consecutive skips of one optimizer.
        """
        acc, k = self.accelerator, self.cfg.gradient_accumulation_steps
        micro = [next(data) for _ in range(k)]
        logs: dict = {}
        stepped = set()  # modules whose optimizer stepped
        self.objective.step = self.state.step  # e.g. lazy regularisation every k steps
        for opt_name, module_name in self.groups.items():
            module, optimizer = self.modules[module_name], self.optimizers[opt_name]
            # Start from zero: another group's backward may have reached these parameters.
            optimizer.zero_grad(set_to_none=True)
            step_logs: dict = {}
            mean_loss = torch.zeros((), device=acc.device)  # NaN / inf if any micro-batch's is
            for j, batch in enumerate(micro):
                with acc.no_sync(module) if j < k - 1 else nullcontext(), acc.autocast():
                    loss, items = self.objective.loss(opt_name, self.modules, batch, self.state.generator)
                acc.backward(loss / k)
                mean_loss += loss.detach().float() / k
                for key, v in items.items():
                    name = key if len(self.groups) == 1 else f"{opt_name}/{key}"
                    step_logs[name] = step_logs.get(name, 0.0) + v / k
            if self.cfg.max_grad_norm:
                step_logs[f"{opt_name}/grad_norm"] = float(acc.clip_grad_norm_(module.parameters(),
                                                                               self.cfg.max_grad_norm))
            if self.step_is_finite(opt_name, module, mean_loss):
                step_logs[f"{opt_name}/lr"] = self.lr_schedulers[opt_name].get_last_lr()[0]  # this step's
                optimizer.step()
                if not optimizer.step_was_skipped:  # fp16: the GradScaler skips inf-gradient steps
                    self.lr_schedulers[opt_name].step()
                    logs.update(step_logs)
                    stepped.add(module_name)
            optimizer.zero_grad(set_to_none=True)
        for n, ema in self.emas.items():
            if n in stepped:
                ema.step(acc.unwrap_model(self.modules[n]).parameters())
        if self.posthoc is not None:
            for n, ema in self.posthoc.emas.items():
                if n in stepped:
                    ema.step(acc.unwrap_model(self.modules[n]).named_parameters())
        if stepped:
            self.state.step += 1
        return logs

    def step_is_finite(self, opt_name: str, module, mean_loss: torch.Tensor) -> bool:
        """Whether ``opt_name``'s accumulated step may be applied: ``mean_loss`` (the mean over
        the micro-batches) and every gradient of ``module`` finite on every process. The flags are
        summed over processes (``accelerator.reduce``), so all processes skip together. Under fp16
        only the loss is checked: an inf gradient is the GradScaler's overflow signal, and the
        scaler skips that step and lowers its scale itself (not counted here).

        A skip is counted (``state.nonfinite_skips``, logged as ``train/nonfinite_skips``) and
        logged with the step and the loss; the ``train.max_nonfinite_steps``-th skip in a row of
        one optimizer raises :class:`NonFiniteError` naming the step, the loss and the last good
        checkpoint.
        """
        acc, state = self.accelerator, self.state
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        grads_finite = _all_finite(grads if acc.scaler is None else []).to(acc.device)
        flags = torch.stack([(~torch.isfinite(mean_loss)).float(), (~grads_finite).float(), mean_loss])
        bad_loss, bad_grad, loss_sum = acc.reduce(flags, reduction="sum").tolist()
        if not (bad_loss or bad_grad):
            self.skips_in_a_row[opt_name] = 0
            return True
        if acc.scaler is not None:  # fp16: end the scaler's step without stepping, for the next one
            if not self.cfg.max_grad_norm:  # clip_grad_norm_ unscaled (and inf-checked) already
                acc.scaler.unscale_(self.optimizers[opt_name].optimizer)
            acc.scaler.update()
        state.nonfinite_skips += 1
        self.skips_in_a_row[opt_name] = in_a_row = self.skips_in_a_row[opt_name] + 1
        what = "loss" if bad_loss else "gradient"
        loss = f"{loss_sum / acc.num_processes:.4g}"  # over processes: NaN / inf if any one's is
        where = f" on {int(bad_loss or bad_grad)} of {acc.num_processes} processes" \
            if acc.num_processes > 1 else ""
        if acc.is_main_process:
            logger.warning("step %d: non-finite %s%s (loss %s); skipped the %r optimizer step (%d "
                           "in a row, %d in all)", state.step, what, where, loss, opt_name, in_a_row,
                           state.nonfinite_skips)
        acc.log({"train/nonfinite_skips": state.nonfinite_skips}, step=state.step)
        limit = self.cfg.max_nonfinite_steps
        if in_a_row >= limit:
            raise NonFiniteError(
                f"training stopped at step {state.step}: {in_a_row} optimizer steps of {opt_name!r} "
                f"in a row were skipped for a non-finite loss or gradient (train.max_nonfinite_steps="
                f"{limit}); the last had a non-finite {what}{where} (loss {loss}). The weights, "
                f"optimizer state, LR schedule and EMA are those of the last good step; "
                f"{self.last_checkpoint_text()}. Lower train.learning_rate, set train.max_grad_norm "
                f"or check the data")
        return False

    def run(self) -> Path:
        """Train (resuming if a checkpoint is found), export, and return the export folder."""
        acc, t, state = self.accelerator, self.cfg, self.state
        resume = resume_path(self.full_cfg)
        if resume is not None:
            applied = self.check_resume_settings(resume)  # before anything is loaded or written
            self.load_checkpoint(resume)
            self.apply_resume_settings(applied)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "training_config.yaml").write_text(to_yaml(self.full_cfg))
        acc.init_trackers("train", config=to_flat_dict(self.full_cfg))
        for m in self.modules.values():
            m.train()
        data = batches(self.loader, self.sampler, state, acc)
        bar = tqdm(total=t.max_steps, initial=state.step, disable=not acc.is_local_main_process,
                   desc=f"training {t.objective}")
        start, base_seconds, window = time.time(), state.train_seconds, {}
        last_logs: dict = {}
        while state.step < t.max_steps:
            before = state.step
            try:
                logs = self.train_step(data)
            except NonFiniteError:
                bar.close()
                for tracker in acc.trackers:  # the logged skips reach the event files
                    tracker.finish()
                raise
            state.train_seconds = base_seconds + time.time() - start
            if state.step == before:  # every optimizer skipped a non-finite step: take it again
                continue
            for key, v in logs.items():
                window.setdefault(key, []).append(v)
            bar.update(1)
            if state.step % t.log_every == 0 or state.step == t.max_steps:
                last_logs = {key: sum(v) / len(v) for key, v in window.items()}
                last_logs["nonfinite_skips"] = state.nonfinite_skips  # so far, in all
                window = {}
                acc.log({f"train/{k}": v for k, v in last_logs.items()}, step=state.step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last_logs.items() if "/" not in k})
            if t.sample_every and state.step % t.sample_every == 0 and state.step < t.max_steps:
                self.evaluate()
            if self.posthoc is not None and state.step % t.posthoc_ema_snapshot_every == 0:
                self.save_posthoc_snapshot()
            if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.step < t.max_steps:
                self.save_checkpoint()
        bar.close()
        if self.posthoc is not None and state.step % t.posthoc_ema_snapshot_every != 0:
            self.save_posthoc_snapshot()  # the end of training is always a snapshot
        final_scalars = self.evaluate()
        saved = [p.name for p in list_checkpoints(self.output_dir)]
        if f"{CHECKPOINT_PREFIX}{state.step:07d}" not in saved[-1:]:
            self.save_checkpoint()
        out = self.output_dir / FINAL_DIR
        if t.export and acc.is_main_process:
            self.export(out, {**{f"final_{k}": v for k, v in last_logs.items()}, **final_scalars})
        acc.wait_for_everyone()
        acc.end_training()
        return out

    def export(self, out: Path, figures: dict) -> None:
        """Write the objective's export (EMA weights) plus config and summary, atomically.

        Raises:
            NonFiniteError: a parameter or EMA weight is NaN / inf (nothing written; in
                :meth:`run` the final checkpoint has checked the same weights on every process).
        """
        self.check_finite_weights(f"the export {out}", collective=False)  # main process only
        tmp = out.parent / f".tmp-{out.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        with self.ema_weights() as modules:
            self.objective.export(modules, tmp)
        (tmp / "training_config.yaml").write_text(to_yaml(self.full_cfg))
        summary = {
            "objective": self.cfg.objective,
            "steps": self.state.step,
            "epochs": round(self.state.step * self.cfg.batch_size * self.cfg.gradient_accumulation_steps
                            * self.accelerator.num_processes / len(self.dataset), 3),
            "train_seconds": round(self.state.train_seconds, 1),
            "hardware": hardware_description(self.accelerator.device),
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.cfg.mixed_precision,
            "nonfinite_skips": self.state.nonfinite_skips,
            "parameters": sum(p.numel() for m in self.modules.values() for p in m.parameters()),
            "dataset": self.dataset_description,
            "command": _command_line(),
            "versions": {"torch": torch.__version__, "diffusers": _version("diffusers"),
                         "accelerate": _version("accelerate")},
            "figures": figures,
        }
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        publish_export(tmp, out)


def publish_export(tmp: Path, out: Path) -> None:
    """Make the export written in ``tmp`` readable by all and rename it to ``out`` (replacing an
    older one): an interrupted export leaves only ``tmp``."""
    for f in tmp.rglob("*"):  # safetensors writes 0600; shipped weights must be readable
        f.chmod(0o755 if f.is_dir() else 0o644)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _command_line() -> str:
    """How this process was started, e.g. ``python -m training --config x.yaml a=b``."""
    argv0 = sys.argv[0]
    if argv0.endswith(os.path.join("training", "__main__.py")):
        argv0 = "-m training"
    launcher = "accelerate launch / torchrun: " if os.environ.get("WORLD_SIZE", "1") != "1" else ""
    return launcher + " ".join(["python", argv0, *sys.argv[1:]])


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def train(cfg: ExperimentConfig, accelerator: Optional[Accelerator] = None,
          dataset: Optional[TensorImageDataset] = None) -> Path:
    """Train from ``cfg`` and return the folder of the exported model (``<output_dir>/final``).

    ``dataset``: an in-memory dataset to train on instead of ``cfg.data``'s (see :class:`Trainer`).
    """
    return Trainer(cfg, accelerator, dataset).run()
