"""``python -m training posthoc-ema``: export a run's model with an EMA length chosen after
training (Karras et al. 2024, Sec. 3.2): reconstructed from the run's post-hoc EMA snapshots
(:mod:`training.posthoc_ema`) at one ``sigma_rel``, or at the best of a list by a quick metric
sweep (:func:`diffusion.evaluation.evaluate` on a few images each). The export is the loop's
(:meth:`training.objectives.base.Objective.export`), written atomically, with the run's config and
a ``training_summary.json`` that adds a ``posthoc_ema`` entry (length, step, snapshots,
coefficients, and the sweep's rows).

Example::

    python -m training posthoc-ema --run runs/fm --sigma-rel 0.07 --out runs/fm/final-0.07
    python -m training posthoc-ema --run runs/fm --sweep 0.03,0.05,0.1,0.15 --metric fid \\
        --num-samples 500 --out runs/fm/final-best

or from Python::

    >>> from training.posthoc_export import export_posthoc
    >>> export_posthoc("runs/fm", "runs/fm/final-0.07", sigma_rel=0.07)   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from training.posthoc_ema import check_sigma_rel, reconstruct, reconstruction_plan

logger = logging.getLogger("training.loop")

#: metrics where a larger value is better (the rest of diffusion.evaluation.METRICS: smaller)
HIGHER_IS_BETTER = ("precision", "recall", "is", "accuracy")
#: evaluate()'s result key of a metric name, where they differ
RESULT_KEYS = {"is": "inception_score"}


def load_run(run_dir):
    """``(cfg, objective)`` of the run in ``run_dir``: its ``training_config.yaml`` and the
    objective rebuilt with the classes recorded in its newest snapshot (no data is loaded).

    Raises:
        ValueError: no ``training_config.yaml`` or no snapshots in ``run_dir``.
    """
    from training.config import load_config
    from training.objectives import build_objective
    from training.posthoc_ema import list_snapshots, read_metadata

    run_dir = Path(run_dir)
    saved = run_dir / "training_config.yaml"
    if not saved.is_file():
        raise ValueError(f"{run_dir} is not a training run folder: it has no training_config.yaml")
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise ValueError(f"no post-hoc EMA snapshots in {run_dir / 'posthoc-ema'}: train with "
                         f"train.posthoc_ema=true")
    cfg = load_config(saved)
    meta = read_metadata(snapshots[-1])
    return cfg, build_objective(cfg, int(meta["num_classes"]), meta.get("class_names") or ())


def load_weights(objective, weights: dict) -> None:
    """Put reconstructed ``{module: state dict}`` into ``objective.modules`` (parameters only).

    Raises:
        ValueError: a module's parameters and the snapshot's names differ (another architecture).
    """
    for n, state in weights.items():
        module = objective.modules[n]
        names = {name for name, _ in module.named_parameters()}
        if names != set(state):
            raise ValueError(f"the snapshots' {n!r} parameters do not match the run's config "
                             f"({len(set(state) ^ names)} names differ)")
        module.load_state_dict(state, strict=False)


def sweep_sigma_rels(run_dir, sigma_rels: Sequence[float], metric: str = "fid",
                     num_samples: int = 500, step: Optional[int] = None, seed: int = 0,
                     sampler: Optional[str] = None, num_inference_steps: Optional[int] = None,
                     guidance_scale: Optional[float] = None, cache_dir="default") -> dict:
    """Score the reconstruction of each of ``sigma_rels`` with ``metric`` on ``num_samples``
    generated images (:func:`diffusion.evaluation.evaluate`, seed ``seed``, the run's
    ``data.name`` / ``data.eval_split`` and ``diffusion.eval_feature_network``).

    Returns ``{"metric", "num_samples", "rows": [{"sigma_rel", metric}...], "best": sigma_rel}``,
    ``best`` the smallest value for FID / KID, the largest for precision, recall, IS, accuracy.
    Small ``num_samples`` bias FID upward equally for every row: compare within a sweep only.

    Raises:
        ValueError: an unknown metric, a ``sigma_rel`` out of range, or no snapshots.
    """
    from diffusion.evaluation import METRICS, evaluate  # the evaluation stack, only when asked for

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not sigma_rels:
        raise ValueError("the sweep needs at least one sigma_rel")
    for s in sigma_rels:
        check_sigma_rel("each swept sigma_rel", s)
    cfg, objective = load_run(run_dir)
    module = objective.modules[objective.sample_module]
    rows = []
    for s in sigma_rels:
        load_weights(objective, reconstruct(run_dir, s, step))
        module.eval()
        result = evaluate(objective.pipeline(module), dataset=cfg.data.name,
                          dataset_root=cfg.data.root, metrics=[metric], num_samples=num_samples,
                          batch_size=min(num_samples, 250), sampler=sampler,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          seed=seed, feature_network=cfg.diffusion.eval_feature_network,
                          reference_split=cfg.data.eval_split, cache_dir=cache_dir,
                          cache_samples=False, progress=False)
        value = float(result[RESULT_KEYS.get(metric, metric)])
        rows.append({"sigma_rel": float(s), metric: value})
        logger.info("post-hoc EMA sigma_rel %.4f: %s %.5g (n=%d)", s, metric, value, num_samples)
    pick = max if metric in HIGHER_IS_BETTER else min
    best = pick(rows, key=lambda r: r[metric])["sigma_rel"]
    return {"metric": metric, "num_samples": num_samples, "seed": seed, "sampler": sampler,
            "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "rows": rows, "best": best}


def export_posthoc(run_dir, out, sigma_rel: Optional[float] = None, step: Optional[int] = None,
                   sweep: Optional[dict] = None) -> Path:
    """Export the run's model with the EMA of ``sigma_rel`` (or ``sweep["best"]``, a result of
    :func:`sweep_sigma_rels`, recorded in the summary) reconstructed at snapshot ``step``
    (default: the newest) to ``out``, atomically (``.tmp-<name>`` then renamed). Returns ``out``.

    Raises:
        ValueError: neither or both of ``sigma_rel`` and ``sweep``; see also
            :func:`training.posthoc_ema.reconstruction_plan`.
    """
    from training.config import to_yaml
    from training.loop import publish_export

    if (sigma_rel is None) == (sweep is None):
        raise ValueError("give exactly one of sigma_rel and sweep")
    sigma_rel = float(sweep["best"] if sweep is not None else sigma_rel)
    run_dir, out = Path(run_dir), Path(out)
    plan = reconstruction_plan(run_dir, sigma_rel, step)
    cfg, objective = load_run(run_dir)
    load_weights(objective, reconstruct(run_dir, sigma_rel, plan["step"]))
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    objective.export(objective.modules, tmp)
    (tmp / "training_config.yaml").write_text(to_yaml(cfg))
    final_summary = run_dir / "final" / "training_summary.json"
    summary = json.loads(final_summary.read_text()) if final_summary.is_file() else {}
    summary["posthoc_ema"] = {
        "sigma_rel": sigma_rel, "gamma": plan["gamma"], "step": plan["step"],
        "tracked_sigma_rels": plan["metadata"]["sigma_rels"],
        "snapshots": [p.name for p in plan["snapshots"]],
        "coefficients": {n: [{"snapshot": p.name, "sigma_rel": plan["metadata"]["sigma_rels"][k],
                              "weight": x} for p, k, x in m["coefficients"]]
                         for n, m in plan["modules"].items()},
        "sweep": sweep,
        "source": "Karras et al. 2024 (EDM2), App. C.3, Alg. 3",
    }
    (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    publish_export(tmp, out)
    return out


def _floats(text: str) -> list:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training posthoc-ema",
        description="Export a run's model with an EMA of any relative length, reconstructed from "
                    "its post-hoc EMA snapshots (train.posthoc_ema=true; Karras et al. 2024).",
        epilog="example: python -m training posthoc-ema --run runs/fm --sweep 0.05,0.1,0.15 "
               "--metric fid --num-samples 500 --out runs/fm/final-best")
    parser.add_argument("--run", required=True, help="the run's train.output_dir")
    parser.add_argument("--out", help="export folder (default: <run>/final-posthoc-<sigma_rel>)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sigma-rel", type=float, help="relative EMA length in (0, 0.2887), e.g. 0.07")
    what.add_argument("--sweep", type=_floats, help="comma list of sigma_rel; export the best by --metric")
    parser.add_argument("--step", type=int, help="snapshot step to reconstruct at (default: the newest)")
    parser.add_argument("--metric", default="fid", help="sweep metric (default fid; lower is better "
                        "for fid/kid, higher for precision/recall/is/accuracy)")
    parser.add_argument("--num-samples", type=int, default=500, help="images per swept length (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", help="sweep sampler (default: the pipeline's saved one)")
    parser.add_argument("--steps", type=int, help="sweep sampling steps (default: the pipeline's)")
    parser.add_argument("--guidance-scale", type=float, help="sweep guidance (default: the pipeline's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sweep = None
        if args.sweep is not None:
            sweep = sweep_sigma_rels(args.run, args.sweep, args.metric, args.num_samples, args.step,
                                     args.seed, args.sampler, args.steps, args.guidance_scale)
        chosen = sweep["best"] if sweep else args.sigma_rel
        out = args.out or str(Path(args.run) / f"final-posthoc-{chosen:g}")
        out = export_posthoc(args.run, out, sigma_rel=None if sweep else args.sigma_rel,
                             step=args.step, sweep=sweep)
    except (ValueError, FileNotFoundError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"python -m training posthoc-ema: error: {first}", file=sys.stderr)
        return 2
    if sweep:
        for row in sweep["rows"]:
            print(f"sigma_rel {row['sigma_rel']:.4f}  {sweep['metric']} {row[sweep['metric']]:.5g}")
    print(f"exported sigma_rel {chosen:g} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
