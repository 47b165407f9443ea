"""Where a figure was measured: one description of the hardware, recorded by training summaries,
evaluation results, sample shards and benchmarks alike."""

from __future__ import annotations

import os
import platform
from typing import Optional, Union

import torch


def hardware_description(device: Optional[Union[str, torch.device]] = None) -> str:
    """The device work runs on (default: CUDA if available, else CPU), e.g.
    ``"cpu: 2 cores (x86_64), torch threads 2"`` or ``"cuda: 1x NVIDIA H200"`` (the count is of
    visible GPUs).

    Example::

        >>> hardware_description("cpu").startswith("cpu: ")
        True
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.device_count()}x {torch.cuda.get_device_name(device)}"
    return (f"{device.type}: {os.cpu_count()} cores ({platform.machine()}), "
            f"torch threads {torch.get_num_threads()}")
