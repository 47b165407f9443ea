"""The guidance study (issue 17): every guidance method of :mod:`samplers.guidance` on the shipped
class-conditional model at 20 NFE, over a range of scales, then each method at its best scale at a
larger n; the page ``docs/results/guidance.md`` and its plot are rebuilt from the results.

Points, in order; each writes ``docs/results/guidance/runs/<method>__s<scale>__n<n>.json`` as soon
as it is done (with its equivalent ``python -m diffusion evaluate ...`` command) and is skipped
when that file exists, so the study resumes across sessions:

1. ``guide`` (``--make-guide`` only): the weaker network for autoguidance, an early checkpoint of
   the shipped recipe (Karras et al. 2024, Sec. 3): ``python -m training --config
   training/configs/fashion_mnist_diffusion.yaml train.max_steps=700
   train.output_dir=runs/guidance/guide``; its ``final/`` folder is the guide. Without
   ``--make-guide`` or ``--guide-model`` the autoguidance rows are skipped (the reason is printed
   and written on the page).
2. The scan: every method of :data:`METHODS` at each of its scales, n = ``--n`` (2,000). Metrics:
   FID, KID, precision, recall (classifier features; reference: the 10,000 real test images),
   conditional accuracy, speckle rate, and NFE per image as the pipeline counts it (a batched
   conditional + null forward counts once; autoguidance's two networks count twice).
3. The best: each method at its lowest-FID scale, n = ``--n-best`` (10,000); autoguidance also at
   half the steps (``autoguidance-equal-nfe``), which matches CFG's NFE.

    python benchmarks/guidance_study.py --make-guide          # train the guide, run or resume all
    python benchmarks/guidance_study.py --guide-model DIR     # a guide you already have
    python benchmarks/guidance_study.py --methods cfg,apg --scales apg=2,3,5
    python benchmarks/guidance_study.py --report-only         # rebuild the page from the JSONs

Sampling: bf16 autocast, image ``i`` of class ``i mod 10`` with seed ``i`` (as ``evaluate`` draws
them); ``--sampler`` (default: dpmpp-2m, the shipped default) for every method but CFG++, which is
defined for first-order samplers only and runs on ``--cfgpp-sampler`` (default ddim, Chung et al.
2024, Alg. 1), beside plain CFG on that sampler as its reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "guidance"
RUNS = OUT / "runs"
PAGE = REPO / "docs" / "results" / "guidance.md"
CACHE = REPO / "runs" / "eval-cache"
WORK = REPO / "runs" / "guidance"
GUIDE_CONFIG = "training/configs/fashion_mnist_diffusion.yaml"
GUIDE_STEPS = 700                  # of the recipe's 2,800: an early checkpoint (Karras et al. 2024)
METRICS = "fid,kid,precision,recall,accuracy,speckle"
TARGET = -0.10                     # the target: >= 10% lower FID than CFG's best


def set_paths(results: Path, work: Path, cache: Path) -> None:
    """Put the JSONs and plot under ``results`` (the page is ``results.md`` beside it), the guide's
    training run under ``work`` and the evaluation cache (reference features, sample shards) in
    ``cache``."""
    global OUT, RUNS, PAGE, WORK, CACHE
    OUT, RUNS, PAGE, WORK, CACHE = results, results / "runs", results.with_suffix(".md"), work, cache


@dataclass(frozen=True)
class Method:
    """One row family of the study: a guidance method by name with fixed options, its scales and
    the sampler it runs on (``"main"``: ``--sampler``; ``"cfg++"``: ``--cfgpp-sampler``)."""

    guidance: str
    scales: tuple
    options: dict = field(default_factory=dict)
    sampler: str = "main"
    note: str = ""


#: method -> its settings. Options are each method's documented defaults unless the note says why
#: not; scales bracket each method's useful range (higher for the methods that damp
#: over-saturation: rescale, interval, APG).
METHODS = {
    "cfg": Method("cfg", (1.5, 2.0, 3.0, 4.0), note="Ho & Salimans 2022, eq. 6; the shipped "
                                                    "default is 2.0"),
    "cfg-rescale": Method("cfg", (2.0, 3.0, 4.0, 6.0), {"guidance_rescale": 0.7},
                          note="guidance rescale phi = 0.7, Lin et al. 2024's choice (Sec. 3.4)"),
    "interval": Method("interval", (2.0, 3.0, 4.0, 6.0),
                       note="Kynkaanniemi et al. 2024; default interval sigma in [0.28, 5.42]"),
    "apg": Method("apg", (2.0, 3.0, 4.0, 6.0),
                  note="Sadat et al. 2024; defaults eta = 0, no norm threshold, no momentum"),
    "cfg-zero-star": Method("cfg-zero-star", (1.5, 2.0, 3.0, 4.0),
                            note="Fan et al. 2025; zero_init_steps = 1 on Euler-type samplers, "
                                 "0 on the others (its docstring: eps = 0 rescales x_t there)"),
    "cfg++": Method("cfg++", (0.2, 0.4, 0.6, 0.8), sampler="cfg++",
                    note="Chung et al. 2024; the scale is lambda in [0, 1]"),
    "cfg-on-cfgpp-sampler": Method("cfg", (1.5, 2.0, 3.0, 4.0), sampler="cfg++",
                                   note="plain CFG on CFG++'s sampler: CFG++'s reference"),
    "autoguidance": Method("autoguidance", (1.5, 2.0, 3.0, 4.0),
                           note="Karras et al. 2024; guide: an early checkpoint of the same "
                                "recipe (see above)"),
}
#: rows run only at the best scale of another method, with the steps divided so that the NFE
#: equals CFG's: name -> (method, divisor)
EQUAL_NFE = {"autoguidance-equal-nfe": ("autoguidance", 2)}
#: why a method may have no rows
NOT_RUN = {"autoguidance": "no guide model: pass --guide-model DIR or --make-guide (trains one)"}


def result_path(method: str, scale: float, n: int) -> Path:
    return RUNS / f"{method}__s{scale:g}__n{n}.json"


def done(method: str, scale: float, n: int):
    path = result_path(method, scale, n)
    return json.loads(path.read_text()) if path.exists() else None


def save(result: dict) -> dict:
    RUNS.mkdir(parents=True, exist_ok=True)
    path = result_path(result["method"], result["scale"], result["n"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return result


def _rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# -- the guide ------------------------------------------------------------------------------------

def guide_command(steps: int, overrides=()) -> list[str]:
    """The training command of the guide (``--make-guide``); its pipeline is ``<WORK>/guide/final``."""
    return [sys.executable, "-m", "training", "--config", GUIDE_CONFIG, f"train.max_steps={steps}",
            f"train.output_dir={WORK / 'guide'}", *overrides]


def make_guide(steps: int, overrides=()) -> Path:
    """Train the guide unless its final pipeline exists (training resumes from its newest
    checkpoint); returns the pipeline folder."""
    final = WORK / "guide" / "final"
    if not (final / "model_index.json").exists():
        argv = guide_command(steps, overrides)
        print("[guide] python " + " ".join(argv[1:]), flush=True)
        subprocess.run(argv, cwd=REPO, check=True)
    return final


# -- one point ------------------------------------------------------------------------------------

_PIPES: dict = {}


def load(model: str):
    from diffusion.pipelines.loading import load_pipeline

    if model not in _PIPES:
        _PIPES[model] = load_pipeline(model, quiet=True)
    return _PIPES[model]


def sampler_of(method: str, args) -> str:
    return args.cfgpp_sampler if METHODS[method].sampler == "cfg++" else args.sampler


def options_of(method: str, args, sampler: str) -> dict:
    """The method's options for this run: the fixed ones, plus those that depend on the run
    (CFG-Zero*'s zero-init by sampler type, autoguidance's guide)."""
    from samplers import build_sampler

    m = METHODS[method]
    options = dict(m.options)
    if m.guidance == "cfg-zero-star":
        # Euler-type samplers (latents x_t / sqrt(abar), init_noise_sigma = sigma_max > 1) stand
        # still at eps = 0; DDIM-type ones (init_noise_sigma = 1) would rescale x_t.
        euler_type = float(build_sampler(sampler, load(args.model).scheduler).init_noise_sigma) > 1
        options["zero_init_steps"] = 1 if euler_type else 0
    if m.guidance == "autoguidance":
        options["guide_model"] = _rel(args.guide_model)
    return options


def evaluate_point(method: str, scale: float, n: int, args, steps_divisor: int = 1,
                   name: str = None) -> dict:
    """Evaluate ``method`` at ``scale`` with ``n`` images (or read its JSON); ``name`` (default
    ``method``) is the row's name, ``steps_divisor`` divides the steps (equal-NFE rows)."""
    name = name or method
    if (r := done(name, scale, n)) is not None:
        return r
    import torch

    from diffusion.evaluation import evaluate
    from samplers import build_guidance, steps_for_nfe

    pipe = load(args.model)
    sampler = sampler_of(method, args)
    steps = max(1, steps_for_nfe(sampler, pipe.scheduler, args.nfe) // steps_divisor)
    options = options_of(method, args, sampler)
    guidance = build_guidance(METHODS[method].guidance, **options)
    command = (f"python -m diffusion evaluate --model {_rel(args.model)} --sampler {sampler} "
               f"--steps {steps} --guidance {guidance.name} "
               + "".join(f"--guidance-option {k}={v} " for k, v in options.items())
               + f"--guidance-scale {scale:g} --num-samples {n} --metrics {METRICS} --bf16 "
               f"--cache-dir {_rel(CACHE)}"
               + (f" --reference-num-samples {args.reference_n}" if args.reference_n else ""))
    print(f"[{name} s={scale:g} n={n}] {command}", flush=True)
    result = evaluate(pipe, metrics=METRICS.split(","), num_samples=n, sampler=sampler,
                      num_inference_steps=steps, guidance_scale=scale, guidance=guidance, seed=0,
                      reference_num_samples=args.reference_n, autocast_dtype=torch.bfloat16,
                      cache_dir=CACHE, progress=False)
    result.update(method=name, scale=scale, options=options, command=command, target_nfe=args.nfe,
                  steps=steps)
    return save(result)


def best_scale(method: str, n: int, scales) -> float:
    """The scale of ``method``'s lowest FID among its scan points at ``n``."""
    return min((done(method, s, n) for s in scales), key=lambda r: r["fid"])["scale"]


def study(args, methods: list[str], scales: dict) -> None:
    for method in methods:
        for s in scales[method]:
            evaluate_point(method, s, args.n, args)
    for method in methods:
        evaluate_point(method, best_scale(method, args.n, scales[method]), args.n_best, args)
    for name, (method, divisor) in EQUAL_NFE.items():
        if method in methods:
            evaluate_point(method, best_scale(method, args.n, scales[method]), args.n_best, args,
                           steps_divisor=divisor, name=name)


# -- the page -------------------------------------------------------------------------------------

def rows() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]


def fmt(v, digits=4):
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def options_text(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


COLUMNS = ["scale", "sampler", "steps", "NFE", "n", "FID", "KID x 1e3", "precision", "recall",
           "accuracy", "speckle rate", "s/image"]


def cells(r: dict) -> list[str]:
    """One result as table cells in the order of :data:`COLUMNS`."""
    return [f"{r['scale']:g}", r["sampler"], str(r["steps"]), str(r["nfe"]), f"{r['n']:,}",
            fmt(r["fid"]), fmt(r["kid"] * 1e3, 2), fmt(r["precision"], 3), fmt(r["recall"], 3),
            fmt(r["accuracy"]), fmt(r["speckle_rate"]), fmt(r["seconds_per_image"])]


def table(columns: list[str], body: list[list[str]], text_columns: tuple = ()) -> list[str]:
    align = "|" + "".join("---|" if i in text_columns else "---:|" for i in range(len(columns)))
    return ["| " + " | ".join(columns) + " |", align] + ["| " + " | ".join(c) + " |" for c in body]


def best_rows(results: list[dict], n_best: int) -> dict:
    """method -> its result at ``n_best`` (one per method: the study runs only its best scale
    there; with several, the lowest FID)."""
    best = {}
    for r in results:
        if r["n"] == n_best and (r["method"] not in best or r["fid"] < best[r["method"]]["fid"]):
            best[r["method"]] = r
    return best


def summary(best: dict) -> tuple[list[str], dict]:
    """The summary table's lines and, per method, its relative FID change vs CFG's best on the
    study sampler and vs plain CFG's best on its own sampler."""
    ref = best.get("cfg")
    same = {r["sampler"]: r for k, r in best.items() if k == "cfg" or is_reference(k)}
    change = {k: {"vs_cfg": None if ref is None else r["fid"] / ref["fid"] - 1,
                  "vs_same_sampler": None if r["sampler"] not in same
                  else r["fid"] / same[r["sampler"]]["fid"] - 1} for k, r in best.items()}
    pct = lambda v: "" if v is None else f"{100 * v:+.1f}%"
    body = [[k, r["guidance"]["name"], options_text(r["options"]), r["sampler"], f"{r['scale']:g}",
             str(r["nfe"]), f"{r['n']:,}", fmt(r["fid"]), pct(change[k]["vs_cfg"]),
             pct(change[k]["vs_same_sampler"]), fmt(r["precision"], 3), fmt(r["recall"], 3),
             fmt(r["accuracy"]), fmt(r["speckle_rate"])]
            for k, r in sorted(best.items(), key=lambda kv: kv[1]["fid"])]
    lines = table(["method", "guidance", "options", "sampler", "scale", "NFE", "n", "FID",
                   "FID vs CFG's best", "FID vs CFG on the same sampler", "precision", "recall",
                   "accuracy", "speckle rate"], body, text_columns=(0, 1, 2, 3))
    return lines, change


def is_reference(method: str) -> bool:
    """Plain CFG with no options on a sampler other than the study's (a reference, not a
    guidance method of its own)."""
    m = METHODS.get(method)
    return method != "cfg" and m is not None and m.guidance == "cfg" and not m.options


def candidates(best: dict) -> dict:
    """The rows that compete for the target and the recommendation: every guidance method, not
    the plain-CFG references on other samplers."""
    return {k: r for k, r in best.items() if not is_reference(k)}


def verdict(best: dict, change: dict, edges: dict) -> str:
    """The target's sentence: the best method at CFG's NFE against CFG's best FID; ``edges``:
    method -> the lowest and highest scale of its scan."""
    ref = best.get("cfg")
    if ref is None:
        return "Target not assessed: plain CFG has no result at n-best yet."
    rivals = {k: r for k, r in candidates(best).items() if k != "cfg" and r["nfe"] <= ref["nfe"]}
    if not rivals:
        return "Target not assessed: no other method has a result at CFG's NFE yet."
    k = min(rivals, key=lambda k: rivals[k]["fid"])
    r, c = rivals[k], change[k]["vs_cfg"]
    head = (f"**Target (FID at least 10% below CFG's best at equal NFE): "
            f"{'met' if c <= TARGET else 'not met'}.** The best method at {ref['nfe']} NFE is "
            f"`{k}` at scale {r['scale']:g} (FID {fmt(r['fid'])}) against CFG's best at scale "
            f"{ref['scale']:g} (FID {fmt(ref['fid'])}): {100 * c:+.1f}%")
    if c <= TARGET:
        return head + "."
    edge = [m for m, r in {**rivals, "cfg": ref}.items()
            if m in METHODS and r["scale"] in edges.get(m, ())]
    return head + (f", {100 * (c - TARGET):.1f} points short of the target: no guidance method "
                   "moves this model's FID as much as the target asks at its tested options. "
                   + (f"Best scale at the edge of the scanned range (a wider range might still "
                      f"help): {', '.join(f'`{m}`' for m in edge)}." if edge else
                      "Every method's best scale lies inside its scanned range."))


def recommendation(best: dict) -> str:
    """The method and scale with the lowest FID among those at CFG's NFE whose speckle rate is
    not worse than CFG's best (from the numbers; no winner is written in)."""
    ref = best.get("cfg")
    if ref is None:
        return "No recommendation yet: plain CFG has no result at n-best."
    fair = {k: r for k, r in candidates(best).items() if r["nfe"] <= ref["nfe"]
            and r["speckle_rate"] <= ref["speckle_rate"]}
    k = min(fair, key=lambda k: fair[k]["fid"])
    r = fair[k]
    excluded = [f"`{e}` ({'NFE ' + str(r['nfe']) if r['nfe'] > ref['nfe'] else 'speckle rate ' + fmt(r['speckle_rate'])})"
                for e, r in candidates(best).items() if e not in fair]
    why = (f" Not eligible (NFE above CFG's {ref['nfe']}, or speckle rate above CFG's "
           f"{fmt(ref['speckle_rate'])}): {', '.join(excluded)}." if excluded else "")
    if k == "cfg":
        return (f"Keep plain CFG as the default, at scale {r['scale']:g} on {r['sampler']} "
                f"(FID {fmt(r['fid'])}, speckle rate {fmt(r['speckle_rate'])}, n = {r['n']:,}): "
                f"no other method at {ref['nfe']} NFE has a lower FID without a higher speckle "
                f"rate.{why}")
    return (f"Use `{r['guidance']['name']}` ({options_text(r['options'])}) at scale "
            f"{r['scale']:g} on {r['sampler']} as the default: FID {fmt(r['fid'])} against plain "
            f"CFG's best {fmt(ref['fid'])} (scale {ref['scale']:g}), speckle rate "
            f"{fmt(r['speckle_rate'])} against {fmt(ref['speckle_rate'])}, at {r['nfe']} NFE "
            f"(n = {r['n']:,}). Command: `{r['command']}`.{why}")


def report(n: int, n_best: int) -> None:
    """Rebuild the page and the plot from the JSONs."""
    results = rows()
    command_file = OUT / "study_command.txt"
    command = command_file.read_text().strip() if command_file.exists() else \
        "python benchmarks/guidance_study.py --make-guide"
    lines = ["# Guidance methods compared", "",
             f"Produced by `{command}` (each row's own `python -m diffusion evaluate` command is in "
             f"`{_rel(RUNS)}/*.json`). Classifier features (not Inception), reference: the real "
             "Fashion-MNIST test images; bf16 sampling; image `i` of class `i mod 10` with seed `i`. "
             "NFE per image as the pipeline counts it: a conditional + null forward batched together "
             "counts once, autoguidance's two networks count twice (same compute per step as CFG's "
             "batched pair, as the guide has the same U-Net); `autoguidance-equal-nfe` runs half the "
             "steps to match CFG's NFE. Speckle rate: fraction of images whose background "
             "high-frequency energy exceeds the real test images' 99th percentile "
             "(`diffusion/evaluation/speckle.py`; real images: 1% by construction).", ""]
    guides = {r["options"].get("guide_model") for r in results if "guide_model" in r["options"]}
    for guide in sorted(g for g in guides if g):
        summary_file = (REPO / guide if not Path(guide).is_absolute() else Path(guide)) / \
            "training_summary.json"
        s = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        lines += [f"Autoguidance's guide: `{guide}`"
                  + (f", {s['steps']} training steps ({s.get('train_seconds', 0) / 60:.0f} min on "
                     f"{s.get('hardware', '?')}), command `{s.get('command', '')}`." if s else "."),
                  ""]
    missing = [m for m in METHODS if not any(r["method"] == m for r in results)]
    for method in missing:
        reason = NOT_RUN.get(method, "no results yet (see --methods)")
        lines += [f"`{method}`: not run: {reason}.", ""]

    best = best_rows(results, n_best)
    lines += ["## Each method at its best scale", "",
              f"The scale of lowest FID at n = {n:,}, rerun at n = {n_best:,}; sorted by FID. "
              "\"FID vs CFG's best\": relative change against plain CFG's best on the study's "
              "sampler; \"on the same sampler\": against plain CFG's best on the row's own sampler "
              "(CFG++ runs on a first-order sampler only).", ""]
    summary_lines, change = summary(best)
    scan = [r for r in results if r["n"] == n and r["method"] in METHODS]
    edges = {m: (min(ss), max(ss)) for m in METHODS
             if (ss := [r["scale"] for r in scan if r["method"] == m])}
    lines += summary_lines + ["", verdict(best, change, edges), "", "## Recommendation", "",
                              recommendation(best), ""]

    names = list(METHODS) + list(EQUAL_NFE)
    for method in names + sorted({r["method"] for r in results} - set(names)):
        mine = sorted((r for r in results if r["method"] == method),
                      key=lambda r: (r["n"], r["scale"]))
        if not mine:
            continue
        note = METHODS[method].note if method in METHODS else \
            f"{EQUAL_NFE[method][0]} at its best scale with 1/{EQUAL_NFE[method][1]} of the steps" \
            if method in EQUAL_NFE else ""
        lines += [f"## {method}", "", f"`{mine[0]['guidance']['name']}`, options "
                  f"{options_text(mine[0]['options'])}. {note}.", ""]
        lines += table(COLUMNS, [cells(r) for r in mine], text_columns=(1,)) + [""]
    OUT.mkdir(parents=True, exist_ok=True)
    if scan:
        plot(scan)
        lines += [f"![FID vs guidance scale]({OUT.name}/fid_vs_scale.png)", ""]
    PAGE.write_text("\n".join(lines))
    print(f"wrote {PAGE}")


def plot(scan: list[dict]) -> None:
    """FID vs scale per method (CFG++'s lambda in [0, 1] on its own axis)."""
    from matplotlib.figure import Figure

    lam = [r for r in scan if r["guidance"]["name"] == "cfg++"]
    fig = Figure(figsize=(9 if lam else 5.5, 3.8))
    axes = fig.subplots(1, 2 if lam else 1, squeeze=False)[0]
    for ax, part, xlabel in ((axes[0], [r for r in scan if r not in lam], "guidance scale"),
                             (axes[-1], lam, "CFG++ lambda")):
        for method in [m for m in METHODS if any(r["method"] == m for r in part)]:
            pts = sorted((r["scale"], r["fid"]) for r in part if r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{method} ({next(r['sampler'] for r in part if r['method'] == method)})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID (classifier features)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "fid_vs_scale.png", dpi=100)


# -- command line ---------------------------------------------------------------------------------

def parse_scales(items: list[str], methods: list[str]) -> dict:
    """``--scales METHOD=S1,S2`` (repeatable) over the defaults of :data:`METHODS`."""
    scales = {m: METHODS[m].scales for m in methods}
    for item in items:
        method, sep, values = item.partition("=")
        if not sep or method not in METHODS:
            raise SystemExit(f"error: --scales {item!r}: give METHOD=S1,S2,... with METHOD one of "
                             f"{list(METHODS)}")
        try:
            scales[method] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise SystemExit(f"error: --scales {item!r}: the scales must be numbers") from None
    return scales


def main(argv=None) -> None:
    from diffusion.paths import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=default_model_path(), help="the pipeline folder to study "
                   "(default: the shipped class-conditional model)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    p.add_argument("--scales", action="append", default=[], metavar="METHOD=S1,S2",
                   help="a method's scales instead of its defaults (repeatable)")
    p.add_argument("--n", type=int, default=2000, help="images per scan point")
    p.add_argument("--n-best", type=int, default=10000, help="images at each method's best scale")
    p.add_argument("--nfe", type=int, default=20, help="network evaluations per image (CFG's count)")
    p.add_argument("--sampler", default="dpmpp-2m", help="the sampler of every method but CFG++")
    p.add_argument("--cfgpp-sampler", default="ddim", help="CFG++'s sampler (ddim, ddpm, euler, "
                                                           "euler-a) and its plain-CFG reference's")
    p.add_argument("--guide-model", default=None, metavar="DIR",
                   help="autoguidance's weaker model (a saved pipeline of the same family)")
    p.add_argument("--make-guide", action="store_true",
                   help=f"train the guide first: {GUIDE_CONFIG} for --guide-steps steps into "
                        "<work>/guide (resumes; skipped when <work>/guide/final exists)")
    p.add_argument("--guide-steps", type=int, default=GUIDE_STEPS)
    p.add_argument("--guide-override", action="append", default=[], metavar="KEY=VALUE",
                   help="appended to the guide's training command (e.g. train.num_threads=2)")
    p.add_argument("--reference-n", type=int, default=None,
                   help="real test images as the reference (default: all 10,000)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", default=str(OUT), help="folder of the JSONs and plot; the page is "
                                                      "<results>.md")
    p.add_argument("--work", default=str(WORK), help="folder of the guide's training run")
    p.add_argument("--cache-dir", default=str(CACHE), help="evaluation cache (reference features, "
                                                           "sample shards)")
    args = p.parse_args(argv)
    set_paths(Path(args.results), Path(args.work), Path(args.cache_dir))
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: unknown methods {unknown}; choose from {list(METHODS)}")
    if args.cfgpp_sampler and "cfg++" in methods:
        from samplers.guidance import CFGPP_SAMPLERS
        if args.cfgpp_sampler not in CFGPP_SAMPLERS:
            raise SystemExit(f"error: --cfgpp-sampler {args.cfgpp_sampler!r}: CFG++ is defined for "
                             f"{list(CFGPP_SAMPLERS)}")
    scales = parse_scales(args.scales, methods)
    if "autoguidance" in methods and not args.report_only:
        if args.make_guide and args.guide_model is None:
            args.guide_model = str(make_guide(args.guide_steps, args.guide_override))
        if args.guide_model is None:
            print(f"autoguidance skipped: {NOT_RUN['autoguidance']}", flush=True)
            methods.remove("autoguidance")
    if not args.report_only:
        RUNS.mkdir(parents=True, exist_ok=True)
        (OUT / "study_command.txt").write_text(
            "python benchmarks/guidance_study.py "
            + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
        start = time.time()
        study(args, methods, scales)
        print(f"study: {time.time() - start:.0f} s", flush=True)
    report(args.n, args.n_best)


if __name__ == "__main__":
    main()
