"""Run the evaluation study of the shipped diffusion model and write ``docs/results/evaluation.md``.

Each part is one command of the package CLI (printed in the report above its table); every
command reads the sample cache that ``benchmarks/sampler_study.py`` fills (same seeds, bf16
autocast, shards of 500), so parts whose images are cached take seconds, and a part whose
images are missing generates them (resumable). Parts:

    floor     real train images vs the real test split, n = 10,000
    default   dpmpp-2m, 20 NFE, n = 10,000 (with --cas: CAS on those 10,000 images)
    all       every registered sampler at 20 NFE, n = 2,000
    nfe       ddim, dpmpp-2m, unipc, euler, heun at NFE 5, 10, 20, 50 (+ DDPM 250 steps), n = 2,000

    python benchmarks/evaluation_report.py --parts floor,default,all,nfe --cas
    python benchmarks/evaluation_report.py --report-only      # rewrite the Markdown from results

Results go to ``docs/results/evaluation/`` (JSON, CSV, PNG); the Markdown page is rebuilt from
whatever results exist, and says which parts are missing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "evaluation"
PAGE = REPO / "docs" / "results" / "evaluation.md"
CACHE = "runs/eval-cache"
COMMON = ["--bf16", "--cache-dir", CACHE, "--quiet"]

COMMANDS = {
    "floor": ["evaluate", "--real", "train", "--num-samples", "10000", "--cache-dir", CACHE,
              "--quiet", "--out", "docs/results/evaluation/floor_train_vs_test_n10000.json"],
    "default": ["evaluate", "--sampler", "dpmpp-2m", "--steps", "20", "--num-samples", "10000",
                *COMMON, "--out", "docs/results/evaluation/default_dpmpp-2m_20_n10000.json"],
    "all": ["sweep", "--samplers", "all", "--nfe", "20", "--num-samples", "2000", *COMMON,
            "--out", "docs/results/evaluation/all_samplers_nfe20"],
    "nfe": ["sweep", "--samplers", "ddim,dpmpp-2m,unipc,euler,heun", "--nfe", "5,10,20,50",
            "--reference", "ddpm:250", "--num-samples", "2000", *COMMON,
            "--out", "docs/results/evaluation/nfe_sweep"],
}


def command(part: str, cas: bool = False) -> list[str]:
    args = list(COMMANDS[part])
    if part == "default" and cas:
        args.insert(-2, "--cas")
    return args


def shell(args: list[str]) -> str:
    return "python -m diffusion " + " ".join(shlex.quote(a) for a in args)


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def metric_table(rows: list[dict], first: str = "sampler") -> str:
    head = (f"| {first} | steps | NFE | n | FID | KID (x1e3) | precision | recall | accuracy | "
            f"IS | s/image |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        kid = None if r.get("kid") is None else r["kid"] * 1e3
        kid_std = None if r.get("kid_std") is None else r["kid_std"] * 1e3
        name = r.get("sampler") or ""
        if r.get("reference"):
            name += " (reference)"
        lines.append(
            f"| {name} | {r.get('num_inference_steps') or ''} | {r.get('nfe')} | {r.get('n')} | "
            f"{_fmt(r.get('fid'), '.4g')} | {_fmt(kid, '.2f')} ± {_fmt(kid_std, '.2f')} | "
            f"{_fmt(r.get('precision'), '.3f')} | {_fmt(r.get('recall'), '.3f')} | "
            f"{_fmt(r.get('accuracy'), '.4f')} | {_fmt(r.get('inception_score'), '.3f')} | "
            f"{_fmt(r.get('seconds_per_image'), '.4f')} |")
    return head + "\n".join(lines) + "\n"


def settings_line(r: dict) -> str:
    return (f"Features: `{r.get('feature_network')}` ({r.get('feature_description')}). Reference: "
            f"{r.get('reference_dataset')} {r.get('reference_split')} split, n = "
            f"{r.get('reference_n')}. Sampling dtype: {r.get('autocast_dtype') or 'float32'}; "
            f"guidance scale {r.get('guidance_scale')}; seed {r.get('seed')} (image i: class "
            f"i mod 10, seed + i). Hardware: {r.get('hardware')}; {r.get('versions')}.")


def write_page(cas: bool) -> None:
    from diffusion.evaluation.sweep import read_csv

    parts = []
    parts.append("# Evaluation of the shipped diffusion model\n\n"
                 "Produced by `python benchmarks/evaluation_report.py` (the commands below, one per "
                 "table). FID/KID/precision/recall use the shipped Fashion-MNIST classifier's "
                 "128-d penultimate features, so the numbers are comparable with each other and "
                 "with the real-data floor, **not** with Inception-FIDs in papers. FID is biased "
                 "upward at small n: compare FIDs only at equal n (KID is unbiased). "
                 "s/image is generation wall time per image on the stated hardware, measured when "
                 "the images were generated (the machine was shared with other jobs, so timings "
                 "are noisy; compare them within a table).\n")
    floor = OUT / "floor_train_vs_test_n10000.json"
    default = OUT / "default_dpmpp-2m_20_n10000.json"
    if floor.is_file() or default.is_file():
        rows = []
        if floor.is_file():
            r = json.loads(floor.read_text())
            r["sampler"] = "real train images (floor)"
            rows.append(r)
        if default.is_file():
            rows.append(json.loads(default.read_text()))
        parts.append("## The floor and the default sampler at n = 10,000\n\n"
                     + "\n".join(f"    {shell(command(p, cas))}" for p in ("floor", "default")
                                 if (OUT / Path(command(p)[-1]).name).is_file()) + "\n\n"
                     + metric_table(rows, first="images") + "\n" + settings_line(rows[-1]) + "\n")
        if default.is_file():
            r = json.loads(default.read_text())
            if r.get("cas") is not None:
                d = r.get("cas_details", {})
                parts.append(
                    "## CAS (classification accuracy score, Ravuri & Vinyals 2019)\n\n"
                    f"The evaluation classifier's architecture and training config "
                    f"(`{Path(str(d.get('config', ''))).name}`, {d.get('max_steps')} steps) trained "
                    f"on the {r['n']:,} generated images above vs on {d.get('n_real', r['n']):,} real "
                    f"training images with the same class counts, both tested on the real test "
                    f"split ({d.get('n_test', 10000):,} images):\n\n"
                    f"| trained on | test accuracy |\n|---|---|\n"
                    f"| {r['n']:,} generated images (CAS) | {r['cas']:.4f} |\n"
                    f"| {d.get('n_real', r['n']):,} real images | {r['cas_real_accuracy']:.4f} |\n"
                    f"| ratio | {r['cas_ratio']:.3f} |\n")
    all_csv = OUT / "all_samplers_nfe20" / "sweep.csv"
    if all_csv.is_file():
        rows = read_csv(all_csv)
        parts.append("## Every registered sampler at 20 NFE, n = 2,000\n\n"
                     f"    {shell(command('all'))}\n\n"
                     "Second-order samplers (heun, kdpm2, kdpm2-a) take two network calls per step: "
                     "they run the largest step count whose NFE fits in 20 (10 steps, 19 NFE); pndm "
                     "(PLMS) takes one extra call.\n\n" + metric_table(rows) + "\n"
                     + settings_line(rows[0]) + "\n")
    nfe_csv = OUT / "nfe_sweep" / "sweep.csv"
    if nfe_csv.is_file():
        rows = read_csv(nfe_csv)
        rows.sort(key=lambda r: (bool(r.get("reference")), r["sampler"], r["nfe"]))
        parts.append("## Quality vs NFE, n = 2,000\n\n"
                     f"    {shell(command('nfe'))}\n\n"
                     "![FID vs NFE](evaluation/nfe_sweep/fid_vs_nfe.png)\n"
                     "![FID vs seconds per image](evaluation/nfe_sweep/fid_vs_seconds.png)\n\n"
                     + metric_table(rows) + "\n" + settings_line(rows[0]) + "\n")
    missing = [p for p, path in (("floor", floor), ("default", default), ("all", all_csv),
                                 ("nfe", nfe_csv)) if not path.is_file()]
    if missing:
        parts.append("## Not yet measured\n\n" + "\n".join(
            f"- `{p}`: `{shell(command(p, cas))}`" for p in missing) + "\n")
    PAGE.write_text("\n".join(parts))
    print(f"wrote {PAGE}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="floor,default,all,nfe")
    p.add_argument("--cas", action="store_true", help="CAS with the default part (two trainings)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the Markdown page")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for part in args.parts.split(","):
            cmd = [sys.executable, "-m", "diffusion", *command(part, args.cas)]
            print("$", shell(command(part, args.cas)), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
    write_page(args.cas)


if __name__ == "__main__":
    main()
