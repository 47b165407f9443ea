"""Helpers shared by the tests in ``tests/training/`` (``from training_helpers import ...``: pytest
puts this folder on ``sys.path``; not ``tests.training...``, because torch-fidelity installs a
top-level ``tests`` package that would shadow ours). Not a test module."""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]

#: A ~42k-parameter U-Net on 28x28 grayscale, fp32, one thread, no mid-run samples or checkpoints.
TINY = (
    "model.block_out_channels=[8,16]",
    "model.norm_num_groups=4",
    "model.layers_per_block=1",
    "model.attention_levels=[]",
    "model.attention_head_dim=8",
    "model.dropout=0.0",
    "data.image_size=28",
    "train.batch_size=16",
    "train.mixed_precision=no",
    "train.num_threads=1",
    "train.log_every=1",
    "train.sample_every=0",
    "train.checkpoint_every=0",
    "diffusion.sample_steps=1",
    "diffusion.guidance_scale=1.0",
)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (LeCun's MNIST format); gzip if ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def synthetic_images(n: int, seed: int = 0, size: int = 28):
    """``n`` uint8 images ``(n, size, size)`` and labels in [0, 10): a bright square whose
    position depends on the class, on a noisy background (learnable, not constant)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = 2 + 2 * (y // 5) * 5, 2 + 5 * (y % 5)
        images[i, r : r + 6, c : c + 4] = 255
    return images, labels


def make_fashion_root(root: Path, n_train: int = 256, n_test: int = 64, gz: bool = True) -> Path:
    """A folder laid out like Debian's ``dataset-fashion-mnist`` with synthetic images."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, seed)
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    """Environment for subprocesses: one thread each, the repo importable, no network."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               CUDA_VISIBLE_DEVICES="")
    env.pop("FASHION_MNIST_DIR", None)
    return env


def run_python(args: Sequence[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """``python <args>`` with this interpreter, from the repo root; fails with the output shown."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
    return proc
