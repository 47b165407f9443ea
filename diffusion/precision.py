"""Which float precision a pipeline runs its network in: ``"auto"``, ``"bf16"`` or ``"fp32"``.

Every family's call takes ``precision=`` (default: the pipeline's saved default, else
``"auto"``). Only the network forward (U-Net, text encoder, GAN generator, AR prior and VQ-VAE
decoder) runs under ``torch.autocast(dtype=torch.bfloat16)``; its outputs are cast back to
float32, so latents, guidance, the schedulers' step math and the returned images stay float32.

The ``"auto"`` rule (:func:`resolve_precision`): bf16 where the device computes bf16 natively
(:func:`native_bf16`: CUDA with ``torch.cuda.is_bf16_supported()``; a CPU with the AVX-512 BF16
or AMX-BF16 instructions), float32 elsewhere. On the project's 2-core AVX-512 BF16 CPU (no AMX)
bf16 autocast made the shipped 1.6M-parameter U-Net's forward 1.07x faster at batch 1 and 1.7x
at batch 128 (one thread; ``benchmarks/speed.py``, ``docs/speed.md``); a CPU without BF16
instructions emulates bf16 and is slower, so it gets float32. The environment variable
``DIFFUSION_PRECISION`` (``bf16`` / ``fp32``) replaces the rule for ``"auto"`` process-wide
(the test suite pins it to ``fp32`` so reference images do not depend on the CPU running it);
an explicit ``precision="bf16"`` / ``"fp32"`` always wins.

Example::

    >>> import torch
    >>> from diffusion.precision import network_autocast, resolve_precision
    >>> resolve_precision("fp32", "cpu") is None, resolve_precision("bf16", "cpu")
    (True, torch.bfloat16)
    >>> with network_autocast(torch.bfloat16, "cpu"):
    ...     y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    >>> y.dtype
    torch.bfloat16
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import lru_cache
from typing import Optional, Union

import torch

#: the values ``precision=`` accepts
PRECISIONS = ("auto", "bf16", "fp32")

#: environment variable that, when set to ``bf16`` or ``fp32``, decides what ``"auto"`` means
PRECISION_ENV = "DIFFUSION_PRECISION"

#: ``/proc/cpuinfo`` flags that mean native bf16 arithmetic on an x86 CPU
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

Device = Union[str, torch.device, None]


def check_precision(precision, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: anything else, naming the value and the choices.

    Example::

        >>> check_precision("bf16")
        'bf16'
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {PRECISIONS}, got {precision!r}")
    return precision


@lru_cache(maxsize=1)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
    """The CPU feature flags of the first processor in ``path`` (Linux ``/proc/cpuinfo``; an empty
    set where there is no such file, e.g. macOS or Windows)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86: flags; ARM: Features
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: Device = None) -> bool:
    """Whether ``device`` (default CPU) computes bfloat16 in hardware.

    How it decides: CUDA: ``torch.cuda.is_bf16_supported()`` without emulation (compute
    capability 8.0+); CPU: one of :data:`CPU_BF16_FLAGS` (AVX-512 BF16, AMX-BF16) in
    :func:`cpu_flags` (``torch.backends.cpu.get_cpu_capability()`` says only ``"AVX512"``, not
    whether BF16 is in it); any other device (MPS, ...): ``False``. Tests monkeypatch
    :func:`cpu_flags`.

    Example::

        >>> native_bf16("cpu") in (True, False), native_bf16("meta")
        (True, False)
    """
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch: no including_emulation argument
            return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def resolve_precision(precision: str, device: Device = None) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device``: ``torch.bfloat16``, or ``None`` for
    float32 (no autocast).

    ``"bf16"`` -> ``torch.bfloat16`` (on any device; emulated, hence slow, where not native);
    ``"fp32"`` -> ``None``; ``"auto"`` -> ``$DIFFUSION_PRECISION`` if set, else bf16 where
    :func:`native_bf16` is true and ``None`` elsewhere.

    Raises:
        ValueError: ``precision`` (or ``$DIFFUSION_PRECISION``) not one of the choices.

    Example::

        >>> resolve_precision("bf16", "cpu")
        torch.bfloat16
        >>> resolve_precision("half", "cpu")
        Traceback (most recent call last):
        ...
        ValueError: precision must be one of ('auto', 'bf16', 'fp32'), got 'half'
    """
    precision = check_precision(precision)
    if precision == "auto":
        forced = os.environ.get(PRECISION_ENV, "").strip()
        if forced:
            precision = check_precision(forced, f"${PRECISION_ENV}")
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``"bf16"`` for ``torch.bfloat16``, ``"fp32"`` for ``None`` / ``torch.float32`` (the inverse
    of :func:`resolve_precision` for explicit choices; e.g. evaluation's ``autocast_dtype``).

    Raises:
        ValueError: any other dtype (float16 autocast is not offered).

    Example::

        >>> precision_name(torch.bfloat16), precision_name(None)
        ('bf16', 'fp32')
    """
    if dtype is None or dtype == torch.float32:
        return "fp32"
    if dtype == torch.bfloat16:
        return "bf16"
    raise ValueError(f"autocast dtype must be torch.bfloat16 or None (float32), got {dtype}")


def network_autocast(dtype: Optional[torch.dtype], device: Device = None):
    """Context manager for a network forward: ``torch.autocast(device.type, dtype)`` when
    ``dtype`` is given, else a no-op (float32). Cast what the network returns back with
    ``.float()``; keep everything else (schedulers, guidance) outside it."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device or "cpu").type, dtype=dtype)
