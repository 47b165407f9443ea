"""Command line: ``python -m diffusion generate|synthesize|evaluate|sweep|compare|samplers|gallery ...``
(also the ``diffusion-centric`` script).

One module per command (``diffusion/cli/generate.py``, ...), each with ``add_parser(subparsers)``
(adds and returns its sub-parser) and ``run(args) -> int``; every flag that several commands take
is defined once in :mod:`diffusion.cli.options`, and evaluate/sweep/compare share their setup in
:mod:`diffusion.cli.scoring`.

Examples::

    python -m diffusion generate --out samples/grid.png             # shipped model, 10x10 grid
    python -m diffusion generate --classes Sneaker,Bag --per-class 8 --sampler euler-a \\
        --steps 30 --guidance-scale 3 --seed 7 --out grid.png --out-dir samples/
    python -m diffusion generate --model diffusion/weights/fashion-mnist-text \\
        --prompt "a pair of running shoes" --prompt "a summer dress" --negative-prompt "a bag"
    python -m diffusion samplers                                      # list sampler names
    python -m diffusion evaluate --num-samples 2000 --out runs/eval.json  # FID, KID, P/R, accuracy
    python -m diffusion evaluate --model diffusion/weights/fashion-mnist-text --prompts held-out
    python -m diffusion sweep --samplers ddim,dpmpp-2m,heun --nfe 5,10,20,50 --out runs/sweep
    python -m diffusion synthesize --per-class 100 --out runs/synthetic  # labelled image folder
    python -m diffusion gallery --out docs/images                     # the README/docs pictures
    accelerate launch --num_processes 2 -m diffusion evaluate ...     # generation split over 2

From Python, ``main(argv)`` runs one command and returns its exit status::

    >>> from diffusion.cli import main
    >>> main(["samplers"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys

from diffusion.cli import (compare, evaluate, gallery, generate, options, samplers, sweep,
                           synthesize)

#: The commands in the order ``--help`` lists them; each module's name is its command's name.
COMMANDS = (generate, synthesize, evaluate, sweep, compare, samplers, gallery)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion",
                                     description="Generate, evaluate and sweep image generators.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; user errors exit with
    ``SystemExit("error: ...")``."""
    args = build_parser().parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    # sweep's and compare's --steps are comma lists, checked where they are read.
    sizes = {name: (getattr(args, name), 1) for name in ("per_class", "steps", "batch_size")
             if isinstance(getattr(args, name, None), int)}
    options.check_at_least(**sizes)
    return args.func(args)
