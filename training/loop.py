"""The one training loop, for every model family, built on ``accelerate``.

Mixed precision, gradient accumulation, DDP via ``accelerate launch`` / ``torchrun``, EMA with
warm-up (diffusers ``EMAModel``), LR schedules (diffusers ``get_scheduler``), TensorBoard logging,
periodic evaluation / sample grids from the EMA weights, atomic ``save_state`` checkpoints and exact
resume (step, epoch, position in the data, optimizer, LR schedule, EMA, RNG), and a final export.

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
from typing import Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from training.config import ExperimentConfig, to_flat_dict, to_yaml
from diffusion.hardware import hardware_description
from diffusion.data import TensorImageDataset, load_dataset
from training.objectives import build_objective

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
FINAL_DIR = "final"


class EpochSampler(Sampler):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)`` alone: the same on every process
    (accelerate shards it) and the same again after a resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class TrainState:
    """Counters and the training RNG, checkpointed with the model (``register_for_checkpointing``).

    ``step`` counts optimizer steps; ``batch_in_epoch`` counts micro-batches of this epoch already
    consumed; ``generator`` draws all training randomness of the objective.
    """

    def __init__(self, seed: int, process_index: int = 0):
        self.step = self.epoch = self.batch_in_epoch = 0
        self.train_seconds = 0.0
        self.process_index = process_index
        self.generator = torch.Generator().manual_seed(seed)
        # (num_processes, state bytes): every process's generator, gathered before a save because
        # accelerate writes custom state from the main process only.
        self.all_generator_states: torch.Tensor | None = None

    def state_dict(self) -> dict:
        states = self.all_generator_states
        if states is None:
            states = self.generator.get_state().unsqueeze(0)
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "train_seconds": self.train_seconds, "generator": states}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch, self.train_seconds = int(state["batch_in_epoch"]), float(state["train_seconds"])
        states = state["generator"]
        if states.ndim == 1:  # a single process's state
            states = states.unsqueeze(0)
        if self.process_index >= len(states):
            raise ValueError(f"checkpoint holds generator states of {len(states)} processes; this "
                             f"is process {self.process_index}: resume with as many processes")
        self.generator.set_state(states[self.process_index].clone())


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints in ``output_dir/checkpoints``, oldest first. Partly written ones live
    under a temporary name until renamed, so they are never listed."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _resume_path(cfg: ExperimentConfig) -> Optional[Path]:
    resume = cfg.train.resume
    if resume is None or resume in ("none", "None", ""):
        return None
    if resume in ("auto", "latest"):
        found = list_checkpoints(cfg.train.output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume={resume!r} is not a checkpoint folder")
    return path


def _cpu_only_multiprocess() -> bool:
    """True under ``torchrun`` / ``accelerate launch --multi_gpu`` with several processes and no
    GPU. accelerate (1.x) then sets up gloo only when told ``cpu=True``; otherwise every process
    trains alone as "rank 0 of 1" and they race on the same output folder."""
    if hasattr(torch, "accelerator"):
        has_accelerator = torch.accelerator.is_available()
    else:
        has_accelerator = torch.cuda.is_available()
    return not has_accelerator and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _batches(loader, sampler: EpochSampler, state: TrainState, accelerator) -> Iterator:
    """Endless micro-batches; ``state.epoch`` / ``state.batch_in_epoch`` track the position."""
    while True:
        sampler.set_epoch(state.epoch)
        if hasattr(loader, "set_epoch"):
            # accelerate's loader re-sets the sampler's epoch from its own pass counter on every
            # pass (and skip_first_batches copies that counter), which restarts at 0 in a resumed
            # process: give it the checkpointed epoch so it draws the same permutation.
            loader.set_epoch(state.epoch)
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):  # captioned datasets choose each epoch's captions
            dataset.set_epoch(state.epoch)
        it = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in it:
            state.batch_in_epoch += 1
            yield batch
        state.epoch += 1
        state.batch_in_epoch = 0


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
            data.image_size)``, or the dataset is smaller than one batch per process.
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
        optimizers = {
            name: torch.optim.AdamW(self.objective.modules[module].parameters(),
                                    **{"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2),
                                       "weight_decay": t.weight_decay, **settings.get(name, {})})
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
                ema = EMAModel(acc.unwrap_model(self.modules[n]).parameters(), decay=t.ema_max_decay,
                               use_ema_warmup=t.ema_warmup, inv_gamma=1.0, power=2 / 3)
                ema.to(acc.device)
                self.emas[n] = ema
        self.state = TrainState(t.seed * 1000 + acc.process_index, acc.process_index)
        for obj in (self.state, *self.lr_schedulers.values(), *self.emas.values()):
            acc.register_for_checkpointing(obj)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``save_state`` into a temporary folder, then an atomic rename to ``checkpoint-<step>``;
        keeps the newest ``checkpoints_total_limit``."""
        acc, root = self.accelerator, self.output_dir / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{self.state.step:07d}"
        tmp = root / f".tmp-{final.name}"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        self.state.all_generator_states = acc.gather(self.state.generator.get_state().unsqueeze(0))
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "training_config.yaml").write_text(to_yaml(self.full_cfg))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.output_dir)[: -self.cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path) -> None:
        self.accelerator.load_state(str(path))
        logger.info("resumed from %s at step %d", path, self.state.step)

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
        """One optimizer step per optimizer: ``gradient_accumulation_steps`` micro-batches each."""
        acc, k = self.accelerator, self.cfg.gradient_accumulation_steps
        micro = [next(data) for _ in range(k)]
        logs: dict = {}
        self.objective.step = self.state.step  # e.g. lazy regularisation every k steps
        for opt_name, module_name in self.groups.items():
            module = self.modules[module_name]
            # Start from zero: another group's backward may have reached these parameters.
            self.optimizers[opt_name].zero_grad(set_to_none=True)
            for j, batch in enumerate(micro):
                with acc.no_sync(module) if j < k - 1 else nullcontext(), acc.autocast():
                    loss, items = self.objective.loss(opt_name, self.modules, batch, self.state.generator)
                acc.backward(loss / k)
                for key, v in items.items():
                    name = key if len(self.groups) == 1 else f"{opt_name}/{key}"
                    logs[name] = logs.get(name, 0.0) + v / k
            if self.cfg.max_grad_norm:
                logs[f"{opt_name}/grad_norm"] = float(acc.clip_grad_norm_(module.parameters(),
                                                                          self.cfg.max_grad_norm))
            logs[f"{opt_name}/lr"] = self.lr_schedulers[opt_name].get_last_lr()[0]  # this step's
            self.optimizers[opt_name].step()
            self.lr_schedulers[opt_name].step()
            self.optimizers[opt_name].zero_grad(set_to_none=True)
        for n, ema in self.emas.items():
            ema.step(acc.unwrap_model(self.modules[n]).parameters())
        self.state.step += 1
        return logs

    def run(self) -> Path:
        """Train (resuming if a checkpoint is found), export, and return the export folder."""
        acc, t, state = self.accelerator, self.cfg, self.state
        resume = _resume_path(self.full_cfg)
        if resume is not None:
            self.load_checkpoint(resume)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "training_config.yaml").write_text(to_yaml(self.full_cfg))
        acc.init_trackers("train", config=to_flat_dict(self.full_cfg))
        for m in self.modules.values():
            m.train()
        data = _batches(self.loader, self.sampler, state, acc)
        bar = tqdm(total=t.max_steps, initial=state.step, disable=not acc.is_local_main_process,
                   desc=f"training {t.objective}")
        start, base_seconds, window = time.time(), state.train_seconds, {}
        last_logs: dict = {}
        while state.step < t.max_steps:
            logs = self.train_step(data)
            state.train_seconds = base_seconds + time.time() - start
            for key, v in logs.items():
                window.setdefault(key, []).append(v)
            bar.update(1)
            if state.step % t.log_every == 0 or state.step == t.max_steps:
                last_logs = {key: sum(v) / len(v) for key, v in window.items()}
                window = {}
                acc.log({f"train/{k}": v for k, v in last_logs.items()}, step=state.step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last_logs.items() if "/" not in k})
            if t.sample_every and state.step % t.sample_every == 0 and state.step < t.max_steps:
                self.evaluate()
            if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.step < t.max_steps:
                self.save_checkpoint()
        bar.close()
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
        """Write the objective's export (EMA weights) plus config and summary, atomically."""
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
            "parameters": sum(p.numel() for m in self.modules.values() for p in m.parameters()),
            "dataset": self.dataset_description,
            "command": _command_line(),
            "versions": {"torch": torch.__version__, "diffusers": _version("diffusers"),
                         "accelerate": _version("accelerate")},
            "figures": figures,
        }
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
