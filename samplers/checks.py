"""Argument checks shared by every package (``samplers``, ``diffusion``, ``training``).

User errors raise ``ValueError`` naming the argument, what was given and what is allowed, at the
public entry point and before any heavy work. ``bool`` is refused where an int or a number is
asked for (``True`` is an ``int`` to Python, never a count to a user). The module sits at the
bottom of the package graph (``samplers``, which imports nothing of ours) so all three packages
can use it.

Example::

    >>> from samplers.checks import check_int, check_number
    >>> check_int("num_inference_steps", 20, low=1)
    20
    >>> check_number("guidance_scale", 2, low=0)
    2.0
    >>> check_int("batch_size", True)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an int >= 1, got True
    >>> check_number("top_p", 0.0, low=0, high=1, low_inclusive=False)
    Traceback (most recent call last):
    ...
    ValueError: top_p must be a finite number in (0, 1], got 0.0
    >>> check_int("max_length", 1, low=2, hint=" (room for [CLS] and [SEP])")
    Traceback (most recent call last):
    ...
    ValueError: max_length must be an int >= 2 (room for [CLS] and [SEP]), got 1
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional


def _range_text(kind: str, low, high, low_inclusive: bool = True) -> str:
    if low is None and high is None:
        return kind
    if high is None:
        return f"{kind} {'>=' if low_inclusive else '>'} {low}"
    if low is None:
        return f"{kind} <= {high}"
    return f"{kind} in {'[' if low_inclusive else '('}{low}, {high}]"


def check_int(name: str, value: Any, low: Optional[int] = 1, high: Optional[int] = None, *,
              allow_none: bool = False, hint: str = "") -> Optional[int]:
    """``int(value)`` if ``value`` is an integer (numpy integers too; not ``bool``) in
    ``[low, high]`` (either bound ``None``: open); ``None`` passes when ``allow_none``.
    ``hint`` (e.g. ``" (room for [CLS] and [SEP])"``) follows what is allowed in the message.

    Raises:
        ValueError: ``"{name} must be an int >= {low}{hint}, got {value!r}"`` (or
            ``in [low, high]``).
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) \
            or (low is not None and value < low) or (high is not None and value > high):
        allowed = _range_text("an int", low, high)
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}{allowed}{hint}, "
                         f"got {value!r}")
    return int(value)


def check_number(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                 *, low_inclusive: bool = True, allow_none: bool = False,
                 hint: str = "") -> Optional[float]:
    """``float(value)`` if ``value`` is a finite real number (not ``bool``, not NaN/inf) in the
    range (``low_inclusive=False``: strictly above ``low``); ``None`` passes when ``allow_none``.
    ``hint`` follows what is allowed in the message, as for :func:`check_int`.

    Raises:
        ValueError: ``"{name} must be a finite number >= {low}{hint}, got {value!r}"`` (or the
            range: ``> low``, ``<= high``, ``in [low, high]``, ``in (low, high]``).
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        allowed = _range_text("a finite number", low, high, low_inclusive)
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}{allowed}{hint}, "
                         f"got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False``; raises ``ValueError`` otherwise (``0``/``1`` too)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
