"""``python -m diffusion samplers``: the registered sampler names, their diffusers scheduler,
whether they are stochastic, and their source.

Example::

    python -m diffusion samplers
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser("samplers", help="list the registered samplers")


def run(args) -> int:
    from samplers import list_samplers, sampler_spec

    for name in list_samplers():
        spec = sampler_spec(name)
        kind = "stochastic" if spec.stochastic else "deterministic"
        print(f"{name:16s} {spec.scheduler_class.__name__:34s} {kind:13s} {spec.source}")
    return 0
