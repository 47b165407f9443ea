"""The evaluation study of the shipped diffusion model (issue 3), resumable config by config.

Runs, in priority order, one ``diffusion.evaluation.evaluate`` per configuration and writes its
result to ``docs/results/evaluation/runs/<name>.json`` as soon as it is done (a configuration whose
JSON exists is skipped, so the study resumes across sessions even if the sample cache is lost):

1. ``floor``: real training images vs the real test split, n = 10,000 and 2,000;
2. ``default``: dpmpp-2m at 20 NFE, n = 10,000, with CAS (``--cas``) on those images;
3. every registered sampler at 20 NFE (second-order samplers: the largest step count with
   NFE <= 20), n = 2,000;
4. NFE 5, 10, 50 for ddim, dpmpp-2m, unipc, euler and heun, n = 2,000;
5. DDPM at 250 steps, n = 2,000 (the reference line).

Every configuration equals one command of the package CLI (written into its JSON and the page), e.g.
``python -m diffusion evaluate --sampler heun --steps 10 --num-samples 2000 --bf16 --cache-dir
runs/eval-cache``. Sampling: bf16 autocast, guidance 2.0, seed 0 (image i: class i mod 10, seed i);
features: the shipped classifier's; reference: the 10,000 real test images.

    python benchmarks/evaluation_study.py --cas           # run (or resume) everything, then the page
    python benchmarks/evaluation_study.py --report-only   # rebuild docs/results/evaluation.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "evaluation"
RUNS = OUT / "runs"
PAGE = REPO / "docs" / "results" / "evaluation.md"
CACHE = "runs/eval-cache"
STUDY_SAMPLERS = ["ddim", "dpmpp-2m", "unipc", "euler", "heun"]
GUIDANCE = 2.0


def study_configs(scheduler) -> list[dict]:
    """Every configuration, in the order they run: dicts with name, part, sampler, steps, n."""
    from samplers import list_samplers, steps_for_nfe

    configs = [dict(part="floor", sampler=None, steps=None, n=10_000),
               dict(part="floor", sampler=None, steps=None, n=2_000),
               dict(part="default", sampler="dpmpp-2m", steps=20, n=10_000)]
    for name in list_samplers():
        configs.append(dict(part="all", sampler=name, steps=steps_for_nfe(name, scheduler, 20),
                            n=2_000))
    for nfe in (10, 5, 50):
        for name in STUDY_SAMPLERS:
            configs.append(dict(part="nfe", sampler=name,
                                steps=steps_for_nfe(name, scheduler, nfe), n=2_000))
    configs.append(dict(part="reference", sampler="ddpm", steps=250, n=2_000))
    for c in configs:
        c["name"] = ("floor_train_vs_test" if c["part"] == "floor" else
                     f"{c['sampler']}_{c['steps']}steps") + f"_n{c['n']}"
    return configs


def cli_command(c: dict, cas: bool = False) -> str:
    if c["part"] == "floor":
        return (f"python -m diffusion evaluate --real train --num-samples {c['n']} "
                f"--cache-dir {CACHE}")
    return (f"python -m diffusion evaluate --sampler {c['sampler']} --steps {c['steps']} "
            f"--guidance-scale {GUIDANCE} --num-samples {c['n']} --bf16 --cache-dir {CACHE}"
            + (" --cas" if cas else ""))


def run_config(c: dict, pipe, cas: bool) -> dict:
    from diffusion.evaluation import evaluate

    if c["part"] == "floor":
        from diffusion.evaluation.real import RealImagesPipeline
        from diffusion.data.datasets import fashion_mnist

        r = evaluate(RealImagesPipeline(fashion_mnist("train")), num_samples=c["n"],
                     cache_dir=CACHE, progress=False)
        r["sampler"] = "real train images (floor)"
    else:
        r = evaluate(pipe, num_samples=c["n"], sampler=c["sampler"],
                     num_inference_steps=c["steps"], guidance_scale=GUIDANCE, cache_dir=CACHE,
                     autocast_dtype=torch.bfloat16, progress=False)
        if cas and c["part"] == "default":
            from diffusion.evaluation.cas import classification_accuracy_score
            from diffusion.evaluation.sampling import generate_samples

            run = generate_samples(pipe, c["n"], call_kwargs=dict(
                sampler=c["sampler"], num_inference_steps=c["steps"], guidance_scale=GUIDANCE),
                cache_dir=Path(CACHE) / "samples", autocast_dtype=torch.bfloat16, progress=False)
            d = classification_accuracy_score(run.images, run.labels, seed=0)
            r.update(cas=d["cas"], cas_real_accuracy=d["real_accuracy"], cas_ratio=d["ratio"],
                     cas_details=d)
    r["part"], r["command"] = c["part"], cli_command(c, cas and c["part"] == "default")
    return r


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def metric_table(rows: list[dict]) -> str:
    head = ("| sampler | steps | NFE | n | FID | KID x 1e3 (std) | precision | recall | accuracy "
            "| IS | s/image |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        kid = "" if r.get("kid") is None else f"{r['kid'] * 1e3:.2f} ({r['kid_std'] * 1e3:.2f})"
        lines.append(
            f"| {r.get('sampler')} | {r.get('num_inference_steps') or ''} | {r.get('nfe')} | "
            f"{r.get('n')} | {_fmt(r.get('fid'), '.4f')} | {kid} | "
            f"{_fmt(r.get('precision'), '.3f')} | {_fmt(r.get('recall'), '.3f')} | "
            f"{_fmt(r.get('accuracy'), '.4f')} | {_fmt(r.get('inception_score'), '.3f')} | "
            f"{_fmt(r.get('seconds_per_image'), '.4f')} |")
    return head + "\n".join(lines) + "\n"


def write_page(configs: list[dict], cas: bool) -> None:
    from diffusion.evaluation.sweep import plot_sweep, write_csv

    done = {c["name"]: json.loads((RUNS / f"{c['name']}.json").read_text())
            for c in configs if (RUNS / f"{c['name']}.json").is_file()}
    rows_of = lambda part: [done[c["name"]] for c in configs if c["part"] == part and c["name"] in done]
    any_row = next(iter(done.values()), {})
    out = ["# Evaluation of the shipped diffusion model\n",
           "Produced by `python benchmarks/evaluation_study.py --cas`, one configuration at a time; "
           "each row equals the `python -m diffusion evaluate ...` command stored with it in "
           "`evaluation/runs/<row>.json`. Sampling under bf16 autocast, guidance scale 2.0, seed 0 "
           "(image i: class i mod 10, seed i). FID/KID/precision/recall use the shipped "
           "Fashion-MNIST classifier's 128-d penultimate features "
           f"(`{any_row.get('feature_network')}`), against the 10,000 real test images: the "
           "numbers compare with each other and with the real-data floor, **not** with "
           "Inception-FIDs in papers. FID is biased upward at small n: compare FIDs at equal n "
           "only (KID is unbiased). s/image is generation wall time per image, recorded when the "
           "images were made, on 2 CPU cores while other jobs shared the machine (each JSON's "
           "`hardware` field says where and with how many torch threads; shards made before that "
           "was recorded say `not recorded`, made by the same study process): noisy, compare "
           "within a table. See [the methodology](../evaluation.md).\n"]
    top = rows_of("floor") + rows_of("default")
    if top:
        out.append("## The real-data floor (n = 10,000 and 2,000) and the default sampler\n\n"
                   + metric_table(top) + "\n"
                   + "\n".join(f"    {r['command']}" for r in top) + "\n")
    default = rows_of("default")
    if default and default[0].get("cas") is not None:
        r, d = default[0], default[0].get("cas_details", {})
        out.append("## CAS (classification accuracy score, Ravuri & Vinyals 2019)\n\n"
                   f"The evaluation classifier's architecture and training config "
                   f"(`{Path(str(d.get('config', ''))).name}`, {d.get('max_steps')} steps) trained "
                   f"on the {r['n']:,} generated images of the default row vs on "
                   f"{d.get('n_real', r['n']):,} real training images with the same class counts; "
                   f"both tested on the {d.get('n_test', 10000):,} real test images.\n\n"
                   "| trained on | test accuracy |\n|---|---:|\n"
                   f"| {r['n']:,} generated images (CAS) | {r['cas']:.4f} |\n"
                   f"| {d.get('n_real', r['n']):,} real images | {r['cas_real_accuracy']:.4f} |\n"
                   f"| ratio | {r['cas_ratio']:.3f} |\n")
    rows = rows_of("all")
    if rows:
        write_csv(rows, OUT / "all_samplers_nfe20.csv")
        out.append("## Every registered sampler at 20 NFE, n = 2,000\n\n"
                   "heun, kdpm2 and kdpm2-a make two network calls per step (10 steps = 19 NFE); "
                   "pndm one extra (19 steps = 20 NFE). CSV: `evaluation/all_samplers_nfe20.csv`.\n\n"
                   "pndm's high FID is PLMS on the trailing schedule (every sampler here starts at "
                   "t = 999), not our DDIM/PNDM step fix: at 20 steps, n = 500, our pndm equals "
                   "diffusers' `PNDMScheduler` with trailing spacing exactly (FID 1.126), while "
                   "diffusers' default leading spacing (first step at t = 951) gives 0.849 and "
                   "ddim 0.755 (`python benchmarks/pndm_spacing.py`).\n\n"
                   + metric_table(sorted(rows, key=lambda r: r["fid"])) + "\n")
    sweep_rows = [dict(r) for r in rows_of("all") if r["sampler"] in STUDY_SAMPLERS] + \
        [dict(r) for r in rows_of("nfe")]
    ref = rows_of("reference")
    if sweep_rows:
        for r in sweep_rows:
            r["reference"] = False
        for r in ref:
            r = dict(r, reference=True)
            sweep_rows.append(r)
        sweep_rows.sort(key=lambda r: (r["reference"], r["sampler"], r["nfe"]))
        write_csv(sweep_rows, OUT / "nfe_sweep.csv")
        plot_sweep(sweep_rows, OUT)
        out.append("## Quality vs NFE, n = 2,000\n\n"
                   "![FID vs NFE](evaluation/fid_vs_nfe.png)\n"
                   "![FID vs seconds per image](evaluation/fid_vs_seconds.png)\n\n"
                   "CSV: `evaluation/nfe_sweep.csv`. The same plots and CSV from one command: "
                   "`python -m diffusion sweep --samplers ddim,dpmpp-2m,unipc,euler,heun --nfe "
                   "5,10,20,50 --reference ddpm:250 --num-samples 2000 --bf16 --cache-dir "
                   f"{CACHE} --out <folder>`.\n\n"
                   "heun at 3 steps (NFE 5) gives noise, not a poor image: accuracy 0.10 (also 0.07 "
                   "in fp32 and 0.12 without guidance, n = 60, while euler at 3 steps scores 0.83). "
                   "On the trailing schedule its first step goes from sigma 157.4 to 9.5, and "
                   "Heun's trapezoidal correction averages two noise estimates across that whole "
                   "interval; at 10 steps (first step 157 -> 60) heun is among the best. The "
                   "timesteps the network receives match the sigmas exactly (checked); Karras "
                   "sigmas (`dpmpp-2m-karras`-style spacing) would shorten the first step but are "
                   "not used by the registry's heun.\n\n" + metric_table(sweep_rows) + "\n")
    missing = [c for c in configs if c["name"] not in done]
    if missing:
        out.append("## Not measured yet\n\nThe study stopped before these configurations "
                   "(rerun `python benchmarks/evaluation_study.py --cas` to resume):\n\n"
                   + "\n".join(f"- {c['part']}: `{cli_command(c)}`" for c in missing) + "\n")
    PAGE.write_text("\n".join(out))
    print(f"wrote {PAGE} ({len(done)} of {len(configs)} configurations)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cas", action="store_true", help="CAS with the default configuration")
    p.add_argument("--parts", default="floor,default,all,nfe,reference")
    p.add_argument("--report-only", action="store_true", help="only rebuild the Markdown page")
    args = p.parse_args()
    from diffusion import default_model_path
    from diffusion.pipelines.loading import load_pipeline

    pipe = load_pipeline(default_model_path(), quiet=True)
    configs = study_configs(pipe.scheduler)
    RUNS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for c in configs:
            path = RUNS / f"{c['name']}.json"
            if c["part"] not in args.parts.split(",") or path.is_file():
                continue
            start = time.time()
            r = run_config(c, pipe, args.cas)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(r, indent=2, default=str))
            tmp.replace(path)
            print(f"{c['name']:32s} NFE={r['nfe']:4d} FID={r.get('fid', float('nan')):.4f} "
                  f"acc={r.get('accuracy', float('nan')):.4f} generated={r['generated']:6d} "
                  f"wall={time.time() - start:.0f}s", flush=True)
            write_page(configs, args.cas)
    write_page(configs, args.cas)


if __name__ == "__main__":
    main()
