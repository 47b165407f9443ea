"""The recipes study (issue 15): DDPM epsilon, DDPM v-prediction + zero-terminal-SNR, flow
matching (logit-normal) and EDM (Karras et al. 2022 preconditioning), each trained with the same U-Net, data, batch, optimizer, seed and number
of steps, then each with its best sampler at 5, 10, 20 and 50 NFE, and post-hoc EMA lengths.

Stages, in order; each writes ``docs/results/recipes/runs/<recipe>__<stage>.json`` as soon as it is
done and is skipped when that file exists, so the study resumes across sessions (training itself
resumes from its newest checkpoint under ``runs/recipes/<recipe>``):

1. ``train``: ``python -m training --config <recipe config> train.max_steps=S ...`` (post-hoc EMA
   snapshots on, so stage 5 can reconstruct any EMA length); wall time from its summary.
   ``ddpm-eps`` is today's shipped model's recipe, and the shipped model
   (``diffusion/weights/fashion-mnist-diffusion``) was trained by that exact command: the study
   evaluates it instead of training again (``--retrain-shipped`` trains it; only then has it
   post-hoc EMA rows).
2. ``sampler-<name>``: every candidate sampler that applies to the model at 20 NFE, n =
   ``--n-select``; the best FID is the recipe's sampler.
3. ``nfe-<k>``: the best sampler at 5, 10, 20 and 50 NFE; n = ``--n-main`` at 20 NFE,
   ``--n-other`` elsewhere. Metrics: FID, KID, precision, recall, conditional accuracy and the speckle
   rate (classifier features, reference: the 10,000 real test images).
4. ``guidance-<s>``: guidance scales at 20 NFE, n = ``--n-select`` (the study's rows use 2.0, the
   shipped model's setting, unless ``--guidance`` says otherwise).
5. ``phema-<sigma_rel>``: post-hoc EMA reconstructions (Karras et al. 2024) at 20 NFE, n =
   ``--n-select``.

Then ``docs/results/recipes.md`` (tables), ``recipes.csv`` and plots (FID and speckle rate vs NFE);
``docs/results/recipes/notes.md``, hand-written observations on the figures, ends the page.

    python benchmarks/recipes_study.py                        # run or resume everything
    python benchmarks/recipes_study.py --steps 1400 --recipes ddpm-eps,flow-logit-normal
    python benchmarks/recipes_study.py --report-only          # rebuild the page from the JSONs

Sampling: bf16 autocast, seed 0 (image i: class i mod 10, seed i), guidance 2.0.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "recipes"
RUNS = OUT / "runs"
PAGE = REPO / "docs" / "results" / "recipes.md"
CACHE = "runs/eval-cache"
REFERENCE_N = None     # --reference-n: real test images as the reference (None: all 10,000)
WORK = REPO / "runs" / "recipes"
OVERRIDES: list = []   # --override: appended to every recipe's training command (smoke tests)


def set_paths(results: Path, work: Path) -> None:
    """Put the JSONs, page and plots under ``results`` (``results.md`` beside it) and the
    training runs under ``work``."""
    global OUT, RUNS, PAGE, WORK
    OUT, RUNS, PAGE, WORK = results, results / "runs", results.with_suffix(".md"), work

#: recipe -> (config, overrides): every other setting is the config's (the shipped model's recipe)
RECIPES = {
    "ddpm-eps": ("training/configs/fashion_mnist_diffusion.yaml", []),
    "ddpm-v-zsnr": ("training/configs/fashion_mnist_diffusion.yaml",
                    ["diffusion.prediction_type=v_prediction", "diffusion.rescale_betas_zero_snr=true",
                     "diffusion.sampler=euler-a"]),
    "flow-logit-normal": ("training/configs/fashion_mnist_flow.yaml", []),
    "edm": ("training/configs/fashion_mnist_edm.yaml", []),
}
#: recipes whose committed shipped model was trained by exactly the recipe's command (same config,
#: steps, seed): the study evaluates it instead of training again, unless --retrain-shipped. It
#: has no post-hoc EMA snapshots (trained before they existed), so its phema rows are absent.
SHIPPED = {"ddpm-eps": REPO / "diffusion" / "weights" / "fashion-mnist-diffusion"}
#: candidate samplers per recipe (those that apply to the model are tried; see samplers_for)
CANDIDATES = ["dpmpp-2m", "euler-a", "unipc", "ddim", "euler", "heun",
              "flow-euler", "flow-heun", "flow-dpmpp-2m", "flow-unipc",
              "edm-euler", "edm-heun", "edm-dpmpp-2m"]
NFES = (5, 10, 20, 50)
METRICS = "fid,kid,precision,recall,accuracy,speckle"
GUIDANCE_SCALES = (1.5, 1.75, 2.0, 3.0)
SIGMA_RELS = (0.03, 0.05, 0.07, 0.10, 0.15, 0.20)


def run_dir(recipe: str) -> Path:
    return WORK / recipe


def result_path(recipe: str, stage: str) -> Path:
    return RUNS / f"{recipe}__{stage}.json"


def done(recipe: str, stage: str):
    path = result_path(recipe, stage)
    return json.loads(path.read_text()) if path.exists() else None


def save(recipe: str, stage: str, result: dict) -> dict:
    RUNS.mkdir(parents=True, exist_ok=True)
    path = result_path(recipe, stage)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return result


def model_dir(recipe: str, reuse_shipped: bool) -> Path:
    """The trained pipeline a recipe's stages evaluate."""
    if reuse_shipped and recipe in SHIPPED:
        return SHIPPED[recipe]
    return run_dir(recipe) / "final"


def reuse(recipe: str, steps: int) -> dict:
    """The train record of a recipe evaluated from its shipped model (:data:`SHIPPED`)."""
    if (r := done(recipe, "train")) is not None:
        return r
    summary = json.loads((SHIPPED[recipe] / "training_summary.json").read_text())
    if summary.get("steps") != steps:
        raise SystemExit(f"error: the shipped {_rel(SHIPPED[recipe])} trained {summary.get('steps')} "
                         f"steps, the study trains {steps}: pass --retrain-shipped")
    return save(recipe, "train", {"command": summary.get("command"), "steps": steps,
                                  "reused_shipped_model": _rel(SHIPPED[recipe]),
                                  "summary": summary})


def train(recipe: str, steps: int, snapshot_every: int) -> dict:
    if (r := done(recipe, "train")) is not None:
        if (run_dir(recipe) / "final" / "model_index.json").is_file():
            return r
        # the JSON is committed, the weights are not: on another machine, train again
        print(f"[{recipe}] {_rel(run_dir(recipe))}/final is missing (trained on another machine): "
              f"training again", flush=True)
    config, overrides = RECIPES[recipe]
    argv = [sys.executable, "-m", "training", "--config", config, *overrides,
            f"train.max_steps={steps}", f"train.output_dir={_rel(run_dir(recipe))}",
            "train.posthoc_ema=true", f"train.posthoc_ema_snapshot_every={snapshot_every}",
            *OVERRIDES]
    command = "python " + " ".join(argv[1:])
    print(f"[{recipe}] {command}", flush=True)
    start = time.time()
    subprocess.run(argv, cwd=REPO, check=True)
    summary = json.loads((run_dir(recipe) / "final" / "training_summary.json").read_text())
    return save(recipe, "train", {"command": command, "steps": steps,
                                  "session_wall_s": time.time() - start, "summary": summary})


def evaluate_stage(recipe: str, stage: str, pipe_dir: Path, sampler: str, nfe: int, n: int,
                   guidance_scale: float, metrics: str = METRICS) -> dict:
    if (r := done(recipe, stage)) is not None:
        return r
    import torch

    from diffusion.evaluation import evaluate
    from diffusion.pipelines.loading import load_pipeline
    from samplers import steps_for_nfe

    pipe = load_pipeline(pipe_dir, quiet=True)
    steps = steps_for_nfe(sampler, pipe.scheduler, nfe)
    command = (f"python -m diffusion evaluate --model {_rel(pipe_dir)} --sampler "
               f"{sampler} --steps {steps} --guidance-scale {guidance_scale} --num-samples {n} "
               f"--metrics {metrics} --bf16 --cache-dir {CACHE}"
               + (f" --reference-num-samples {REFERENCE_N}" if REFERENCE_N else ""))
    print(f"[{recipe}] {stage}: {command}", flush=True)
    result = evaluate(pipe, metrics=metrics.split(","), num_samples=n, sampler=sampler,
                      num_inference_steps=steps, guidance_scale=guidance_scale, seed=0,
                      autocast_dtype=torch.bfloat16, cache_dir=REPO / CACHE, progress=False,
                      reference_num_samples=REFERENCE_N)
    result.update(recipe=recipe, stage=stage, command=command, sampler=sampler, target_nfe=nfe,
                  steps=steps, guidance_scale=guidance_scale)
    return save(recipe, stage, result)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def candidates(pipe_dir: Path) -> list[str]:
    from diffusion.pipelines.loading import load_pipeline
    from samplers import samplers_for

    applicable = set(samplers_for(load_pipeline(pipe_dir, quiet=True).scheduler))
    return [s for s in CANDIDATES if s in applicable]


def posthoc_stage(recipe: str, sigma_rel: float, sampler: str, n: int, guidance: float) -> dict:
    stage = f"phema-{sigma_rel:g}"
    if (r := done(recipe, stage)) is not None:
        return r
    out = run_dir(recipe) / f"phema-{sigma_rel:g}"
    if not (out / "model_index.json").exists():
        subprocess.run([sys.executable, "-m", "training", "posthoc-ema", "--run",
                        str(run_dir(recipe)), "--sigma-rel", f"{sigma_rel:g}", "--out", str(out)],
                       cwd=REPO, check=True)
    result = evaluate_stage(recipe, stage, out, sampler, 20, n, guidance, "fid,precision,recall,accuracy,speckle")
    return result


def study(recipe: str, args) -> None:
    reused = not args.retrain_shipped and recipe in SHIPPED
    if reused:
        reuse(recipe, args.steps)
    else:
        train(recipe, args.steps, max(1, args.steps // 20))
    final = model_dir(recipe, not args.retrain_shipped)
    selection = [evaluate_stage(recipe, f"sampler-{s}", final, s, 20, args.n_select, args.guidance)
                 for s in candidates(final)]
    best = min(selection, key=lambda r: r["fid"])["sampler"]
    for nfe in NFES:
        evaluate_stage(recipe, f"nfe-{nfe}", final, best, nfe,
                       args.n_main if nfe == 20 else args.n_other, args.guidance)
    for s in GUIDANCE_SCALES:
        evaluate_stage(recipe, f"guidance-{s:g}", final, best, 20, args.n_select, s)
    if not args.skip_phema and not reused:
        for sigma_rel in SIGMA_RELS:
            posthoc_stage(recipe, sigma_rel, best, args.n_select, args.guidance)


# -- the page -------------------------------------------------------------------------------------

def rows() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]


def fmt(v, digits=3):
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def report() -> None:
    results = rows()
    recipes = [k for k in RECIPES if result_path(k, "train").exists()]
    command_file = RUNS.parent / "study_command.txt"
    command = command_file.read_text().strip() if command_file.exists() else \
        "python benchmarks/recipes_study.py"
    lines = ["# Training recipes compared at equal compute", "",
             f"Produced by `{command}` (each row's own command is in "
             f"`{_rel(RUNS)}/*.json`). Same U-Net (1.6M parameters), data, batch 128, "
             "AdamW, LR schedule, EMA, seed and number of steps for every recipe; classifier features "
             "(not Inception), reference: the 10,000 real Fashion-MNIST test images; bf16 sampling; "
             "guidance 2.0 unless stated. Speckle rate: fraction of images whose background "
             "high-frequency energy exceeds the real test images' 99th percentile "
             "(`diffusion/evaluation/speckle.py`; real images: 1% by construction).", ""]
    lines += ["## Training", "", "| recipe | command | steps | wall time (h) | hardware |",
              "|---|---|---:|---:|---|"]
    for recipe in recipes:
        t = done(recipe, "train")
        s = t["summary"]
        hours = s.get("train_seconds", s.get("wall_seconds", 0)) / 3600 if isinstance(s, dict) else 0
        note = f" ({t['wall_time_note']})" if t.get("wall_time_note") else ""
        if t.get("reused_shipped_model"):
            note += f" (the shipped `{t['reused_shipped_model']}`, trained by this command; no post-hoc EMA snapshots)"
        lines.append(f"| {recipe} | `{t['command']}` | {t['steps']} | {hours:.2f}{note} | "
                     f"{s.get('hardware', '')} |")
    lines += ["", "## Quality vs NFE (each recipe with its best sampler at 20 NFE)", "",
              "| recipe | sampler | NFE | n | FID | KID x 1e3 | precision | recall | accuracy | speckle rate |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    csv_rows = []
    for recipe in recipes:
        for nfe in NFES:
            r = done(recipe, f"nfe-{nfe}")
            if r is None:
                continue
            csv_rows.append({k: r.get(k) for k in ("recipe", "sampler", "nfe", "n", "fid", "kid",
                                                    "precision", "recall", "accuracy", "speckle_rate",
                                                    "guidance_scale", "command")})
            lines.append(f"| {recipe} | {r['sampler']} | {r['nfe']} | {r['n']:,} | {fmt(r['fid'])} | "
                         f"{fmt(r['kid'] * 1e3, 2)} | {fmt(r['precision'])} | {fmt(r['recall'])} | "
                         f"{fmt(r['accuracy'], 4)} | {fmt(r['speckle_rate'], 4)} |")
    def stage_table(title, columns, prefix, cells, text_columns=1):
        """A table of every result whose stage starts with ``prefix``; ``cells(r)`` the row; the
        first ``text_columns`` columns left-aligned, the others right."""
        out = ["", f"## {title}", "", "| " + " | ".join(columns) + " |",
               "|" + "---|" * text_columns + "---:|" * (len(columns) - text_columns)]
        return out + ["| " + " | ".join(cells(r)) + " |" for r in results
                      if r.get("stage", "").startswith(prefix)]

    lines += stage_table("Sampler selection (20 NFE)", ["recipe", "sampler", "n", "FID", "speckle rate"],
                         "sampler-", lambda r: [r["recipe"], r["sampler"], f"{r['n']:,}",
                                                fmt(r["fid"]), fmt(r["speckle_rate"], 4)],
                         text_columns=2)
    lines += stage_table("Guidance scale (20 NFE)", ["recipe", "guidance", "n", "FID", "recall", "accuracy"],
                         "guidance-", lambda r: [r["recipe"], str(r["guidance_scale"]), f"{r['n']:,}",
                                                 fmt(r["fid"]), fmt(r["recall"]), fmt(r["accuracy"], 4)])
    lines += stage_table("Post-hoc EMA length (20 NFE)", ["recipe", "sigma_rel", "n", "FID", "recall", "accuracy"],
                         "phema-", lambda r: [r["recipe"], r["stage"].split("-", 1)[1], f"{r['n']:,}",
                                              fmt(r["fid"]), fmt(r["recall"]), fmt(r["accuracy"], 4)])
    OUT.mkdir(parents=True, exist_ok=True)
    if csv_rows:
        with open(OUT / "recipes.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
            w.writeheader()
            w.writerows(csv_rows)
        plot(csv_rows)
        lines += ["", f"![FID vs NFE]({OUT.name}/fid_vs_nfe.png)", "",
                  f"![speckle rate vs NFE]({OUT.name}/speckle_vs_nfe.png)"]
    notes = OUT / "notes.md"     # hand-written observations on the figures, kept beside the JSONs
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    PAGE.write_text("\n".join(lines) + "\n")
    print(f"wrote {PAGE}")


def plot(csv_rows: list) -> None:
    from matplotlib.figure import Figure

    for key, name, label in (("fid", "fid_vs_nfe", "FID (classifier features)"),
                             ("speckle_rate", "speckle_vs_nfe", "speckle rate")):
        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        for recipe in dict.fromkeys(r["recipe"] for r in csv_rows):
            pts = sorted((r["nfe"], r[key]) for r in csv_rows if r["recipe"] == recipe)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=recipe)
        ax.set_xscale("log")
        ax.set_xticks(list(NFES), [str(n) for n in NFES])
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.set_ylabel(label)
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / f"{name}.png", dpi=100)


def main(argv=None) -> None:
    global CACHE, REFERENCE_N
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {list(RECIPES)}")
    p.add_argument("--steps", type=int, default=2800, help="training steps of every recipe")
    p.add_argument("--n-main", type=int, default=5000, help="images at 20 NFE")
    p.add_argument("--n-other", type=int, default=2000, help="images at 5, 10, 50 NFE")
    p.add_argument("--n-select", type=int, default=1000, help="images per sampler/guidance/EMA point")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--skip-phema", action="store_true")
    p.add_argument("--retrain-shipped", action="store_true",
                   help=f"train {sorted(SHIPPED)} again instead of evaluating the shipped model "
                        "trained by the same command")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--reference-n", type=int, default=None,
                   help="real test images as the reference (default: all 10,000)")
    p.add_argument("--cache-dir", default=CACHE, help="evaluation cache (reference features, "
                                                      "sample shards), relative to the repository")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="appended to every recipe's training command (e.g. a tiny model for a "
                        "smoke test)")
    p.add_argument("--results", default=str(OUT), help="folder of the JSONs and plots; the page "
                                                      "is <results>.md")
    p.add_argument("--work", default=str(WORK), help="folder of the training runs")
    args = p.parse_args(argv)
    OVERRIDES[:] = args.override
    CACHE, REFERENCE_N = args.cache_dir, args.reference_n
    set_paths(Path(args.results), Path(args.work))
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"error: unknown recipes {unknown}; choose from {list(RECIPES)}")
    if not args.report_only:
        RUNS.mkdir(parents=True, exist_ok=True)
        (RUNS.parent / "study_command.txt").write_text(
            "python benchmarks/recipes_study.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
        for recipe in recipes:   # one after another: two at once on 2 cores halves both
            study(recipe, args)
    report()


if __name__ == "__main__":
    main()
