"""Quality vs cost of samplers: one :func:`~diffusion.evaluation.evaluate` per (sampler, NFE),
written as CSV and plotted as FID vs NFE and FID vs seconds per image, a line per sampler.

NFE is the number of network calls per image: a guided step batches the conditional and the
unconditional input into one call, so guidance does not double it; second-order samplers (heun,
kdpm2) make about two calls per step. A sweep given ``nfe`` picks, per sampler, the largest
``num_inference_steps`` whose NFE does not exceed it (:func:`samplers.steps_for_nfe`) and reports
the NFE actually used.

Example::

    >>> from diffusion import DiffusionImagePipeline, default_model_path
    >>> from diffusion.evaluation.sweep import sweep, write_csv, plot_sweep
    >>> pipe = DiffusionImagePipeline.from_pretrained(default_model_path())     # doctest: +SKIP
    >>> rows = sweep(pipe, ["ddim", "dpmpp-2m"], nfe=[5, 10, 20], num_samples=500)  # doctest: +SKIP
    >>> write_csv(rows, "runs/sweep/sweep.csv"); plot_sweep(rows, "runs/sweep")      # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence, Union

#: Columns written first in the CSV (the rest follow in sorted order).
CSV_COLUMNS = ("sampler", "num_inference_steps", "nfe", "n", "fid", "kid", "kid_std", "precision",
               "recall", "inception_score", "accuracy", "speckle_rate", "seconds_per_image",
               "guidance_scale",
               "feature_network", "reference_split", "reference_n", "autocast_dtype", "hardware")


def sweep_plan(pipeline, samplers: Sequence[str], steps: Optional[Sequence[int]] = None,
               nfe: Optional[Sequence[int]] = None) -> list[tuple[str, int]]:
    """``(sampler, num_inference_steps)`` pairs: every sampler at every step count, or at the step
    count that fits every NFE budget (duplicates dropped, order kept).

    Raises:
        ValueError: both or neither of ``steps`` and ``nfe``; unknown sampler; an NFE budget below
            one step of a sampler.
    """
    from samplers import sampler_spec, steps_for_nfe

    if (steps is None) == (nfe is None):
        raise ValueError("give exactly one of steps and nfe")
    plan = []
    for name in samplers:
        sampler_spec(name)
        for value in (steps if steps is not None else nfe):
            if int(value) < 1:
                raise ValueError(f"steps / nfe must be >= 1, got {value}")
            n = int(value) if steps is not None else steps_for_nfe(name, pipeline.scheduler, int(value))
            if (name, n) not in plan:
                plan.append((name, n))
    return plan


def sweep(pipeline, samplers: Sequence[str], steps: Optional[Sequence[int]] = None,
          nfe: Optional[Sequence[int]] = None, reference: Optional[tuple[str, int]] = None,
          progress: bool = True, **evaluate_kwargs) -> list[dict]:
    """Evaluate ``pipeline`` for each (sampler, steps) of :func:`sweep_plan` (an NFE budget maps
    to the largest step count whose NFE fits it: heun at budget 4 runs 2 steps = NFE 3), plus an
    optional
    ``reference`` ``(sampler, steps)`` row (e.g. ``("ddpm", 250)``) flagged ``reference=True``.

    ``evaluate_kwargs`` go to :func:`~diffusion.evaluation.evaluate` (``num_samples``,
    ``guidance_scale``, ``metrics``, ``cache_dir``, ``autocast_dtype``, ...); with the sample
    cache on, an interrupted sweep resumes where it stopped.

    Returns:
        One result dict of ``evaluate`` per configuration, in plan order.
    """
    from diffusion.evaluation.evaluator import evaluate

    plan = sweep_plan(pipeline, samplers, steps, nfe)
    if reference is not None:
        plan.append(tuple(reference))
    rows = []
    for i, (name, n) in enumerate(plan):
        row = evaluate(pipeline, sampler=name, num_inference_steps=n, progress=progress,
                       **evaluate_kwargs)
        row["reference"] = reference is not None and i == len(plan) - 1
        rows.append(row)
        if progress:
            print(f"{name:16s} steps={n:4d} NFE={row['nfe']:4d} n={row['n']} " +
                  " ".join(f"{m}={row[m]:.4g}" for m in ("fid", "kid", "precision", "recall",
                                                          "accuracy", "speckle_rate") if m in row) +
                  f" s/img={row['seconds_per_image']:.4f}", flush=True)
    return rows


def write_csv(rows: Sequence[dict], path: Union[str, Path]) -> Path:
    """Rows as CSV (lists, dicts and booleans JSON-encoded); the columns of :data:`CSV_COLUMNS`
    first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    columns = [c for c in CSV_COLUMNS if c in keys] + [k for k in keys if k not in CSV_COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict, bool)) else v
                        for k, v in r.items()})
    return path


def read_csv(path: Union[str, Path]) -> list[dict]:
    """Rows written by :func:`write_csv`, numbers parsed back."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out = {}
            for k, v in r.items():
                if v == "":
                    out[k] = None
                    continue
                try:
                    out[k] = json.loads(v)
                except (json.JSONDecodeError, ValueError):
                    out[k] = v
            rows.append(out)
    return rows


def plot_sweep(rows: Sequence[dict], out_dir: Union[str, Path], metric: str = "fid",
               title: Optional[str] = None) -> list[Path]:
    """Write ``<metric>_vs_nfe.png`` and ``<metric>_vs_seconds.png`` (a line per sampler, log x;
    reference rows as a dashed horizontal line). The title states n and the feature network.

    Raises:
        ValueError: no row has ``metric``.
    """
    # A bare Figure (no pyplot): no backend switch, so notebooks keep their inline plots.
    from matplotlib.figure import Figure

    rows = [r for r in rows if r.get(metric) is not None]
    if not rows:
        raise ValueError(f"no row has {metric!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ns = sorted({r["n"] for r in rows})
    nets = sorted({str(r.get("feature_network")) for r in rows})
    subtitle = (title or "") + f"n = {', '.join(map(str, ns))} per point; features: {', '.join(nets)}"
    paths = []
    for x_key, x_label, name in (("nfe", "NFE (network calls per image)", "nfe"),
                                 ("seconds_per_image", "seconds per image", "seconds")):
        fig = Figure(figsize=(7, 4.5))
        ax = fig.subplots()
        for sampler in dict.fromkeys(r["sampler"] for r in rows if not r.get("reference")):
            pts = sorted((r[x_key], r[metric]) for r in rows
                         if r["sampler"] == sampler and not r.get("reference"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=sampler)
        for r in rows:
            if r.get("reference"):
                ax.axhline(r[metric], color="gray", linestyle="--",
                           label=f"{r['sampler']} {r['num_inference_steps']} steps (reference)")
        ax.set_xscale("log")
        values = [r[metric] for r in rows if r[metric] > 0]
        if values and max(values) / min(values) > 20:  # one bad point would flatten the rest
            ax.set_yscale("log")
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.xaxis.set_major_formatter(ScalarFormatter())  # 5, 10, 20 rather than 5x10^0
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric.upper() if metric in ("fid", "kid") else metric)
        ax.set_title(subtitle, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{metric}_vs_{name}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths
