"""``python -m diffusion sweep``: quality against NFE and seconds for several samplers
(:func:`diffusion.evaluation.sweep.sweep`), written as CSV, JSON and plots.

Example::

    python -m diffusion sweep --samplers ddim,dpmpp-2m,heun --nfe 5,10,20,50 --out runs/sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion.cli import options
from diffusion.cli.options import exit_on
from diffusion.cli.scoring import eval_setup


def add_parser(subparsers) -> argparse.ArgumentParser:
    w = subparsers.add_parser(
        "sweep", help="quality vs NFE / seconds of several samplers: CSV + plots",
        description="Evaluate every sampler at every step count (--steps) or NFE budget (--nfe); "
                    "writes sweep.csv, sweep.json and FID-vs-NFE and FID-vs-seconds plots to --out.")
    options.add_eval(w)
    options.add_samplers(w, default="ddim,dpmpp-2m,unipc,euler,heun",
                         help="comma-separated sampler names, or 'all'")
    group = w.add_mutually_exclusive_group(required=True)
    options.add_steps_list(group, help="comma-separated num_inference_steps")
    group.add_argument("--nfe", type=options.int_list, default=None, help="comma-separated NFE budgets")
    w.add_argument("--reference", type=options.sampler_steps, default=None,
                   help="a reference row SAMPLER:STEPS drawn as a dashed line, e.g. ddpm:250")
    w.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    return w


def run(args) -> int:
    from diffusion.evaluation.sweep import plot_sweep, sweep, write_csv
    from samplers import samplers_for

    pipe, accelerator, kwargs = eval_setup(args)
    samplers = samplers_for(pipe.scheduler) if args.samplers == "all" else args.samplers.split(",")
    with exit_on(ValueError, FileNotFoundError):
        rows = sweep(pipe, samplers, steps=args.steps, nfe=args.nfe, reference=args.reference,
                     **kwargs)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    out = Path(args.out)
    write_csv(rows, out / "sweep.csv")
    (out / "sweep.json").write_text(json.dumps(rows, indent=2, default=str))
    metric = "fid" if "fid" in args.metrics.split(",") else args.metrics.split(",")[0]
    metric = {"is": "inception_score"}.get(metric, metric)
    paths = plot_sweep(rows, out, metric=metric)
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.json'}, " + ", ".join(map(str, paths)))
    return 0
