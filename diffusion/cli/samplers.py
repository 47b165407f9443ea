"""``python -m diffusion samplers``: the registered sampler names, their diffusers scheduler,
whether they are stochastic, the parameterisation they apply to (``ddpm``: epsilon / v / x0
networks on discrete timesteps; ``flow``: flow-matching velocity networks; ``edm``:
EDM-preconditioned networks) and their source.
With ``--model DIR``, only the samplers that apply to that saved model
(:func:`samplers.samplers_for` on its ``scheduler/scheduler_config.json``; the weights are not
loaded).

Example::

    python -m diffusion samplers
    python -m diffusion samplers --model runs/fashion-mnist-flow
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion.cli import options
from diffusion.cli.options import exit_on


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("samplers", help="list the registered samplers (or those that "
                                               "apply to a model)")
    options.add_model(p, help="pipeline folder (save_pretrained): list only the samplers that "
                              "apply to its training schedule (default: every sampler)")
    return p


def saved_schedule(model: str) -> dict:
    """The saved scheduler config of the pipeline folder ``model``.

    Raises:
        FileNotFoundError: no such folder, or not a saved pipeline.
        ValueError: a saved pipeline without a scheduler (a family that takes no sampler).
    """
    folder = Path(model)
    config = folder / "scheduler" / "scheduler_config.json"
    if config.is_file():
        return json.loads(config.read_text())
    if (folder / "model_index.json").is_file():
        raise ValueError(f"{model!r} has no scheduler: its family takes no diffusion sampler")
    raise FileNotFoundError(f"{model!r} is not a saved pipeline folder (no model_index.json)")


def run(args) -> int:
    from samplers import list_samplers, sampler_spec, samplers_for

    names = list_samplers(distilled=None)  # with the consistency samplers (lcm, flow-lcm)
    if getattr(args, "model", None) is not None:
        with exit_on(FileNotFoundError, ValueError):
            names = samplers_for(saved_schedule(args.model))
    for name in names:
        spec = sampler_spec(name)
        kind = "stochastic" if spec.stochastic else "deterministic"
        print(f"{name:16s} {spec.scheduler_class.__name__:34s} {kind:13s} "
              f"{spec.parameterisation:5s} {spec.source}")
    return 0
