"""What a resume restores besides the modules: the step counters and the training RNG
(:class:`TrainState`, checkpointed with the model) and the data order (:class:`EpochSampler`, a
permutation drawn from ``(seed, epoch)`` alone), and the micro-batch stream that skips what a
resumed epoch already consumed (:func:`batches`).

Example::

    >>> from training.state import EpochSampler
    >>> s = EpochSampler(5, seed=0); s.set_epoch(1)
    >>> sorted(s) == list(range(5))
    True
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


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
    consumed; ``generator`` draws all training randomness of the objective; ``nonfinite_skips``
    counts optimizer steps skipped for a non-finite loss or gradient.
    """

    def __init__(self, seed: int, process_index: int = 0):
        self.step = self.epoch = self.batch_in_epoch = self.nonfinite_skips = 0
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
                "train_seconds": self.train_seconds, "generator": states,
                "nonfinite_skips": self.nonfinite_skips}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch, self.train_seconds = int(state["batch_in_epoch"]), float(state["train_seconds"])
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))  # absent before 0.2.0
        states = state["generator"]
        if states.ndim == 1:  # a single process's state
            states = states.unsqueeze(0)
        if self.process_index >= len(states):
            raise ValueError(f"checkpoint holds generator states of {len(states)} processes; this "
                             f"is process {self.process_index}: resume with as many processes")
        self.generator.set_state(states[self.process_index].clone())


def batches(loader, sampler: EpochSampler, state: TrainState, accelerator) -> Iterator:
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
