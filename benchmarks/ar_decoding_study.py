"""Decoding settings of the shipped autoregressive baseline: quality per setting, resumable.

For each decoding setting of the VQ-VAE + transformer prior (``diffusion/weights/fashion-mnist-ar``
or ``--model``) runs one :func:`diffusion.evaluation.evaluate` (FID, KID, precision/recall with the
shipped classifier's features against the 10,000 real test images, and the classifier's
conditional accuracy) and writes ``docs/results/ar_decoding/<name>.json`` as soon as it is done (a
setting whose JSON exists is skipped). Then the page ``docs/results/ar_decoding.md``. Every
setting equals one CLI command, e.g. ``python -m diffusion evaluate --model
diffusion/weights/fashion-mnist-ar --temperature 1.0 --top-k 0 --top-p 1.0 --guidance-scale 1.0
--num-samples 1000 --metrics fid,kid,precision,recall,accuracy``. Image i: class i mod 10, seed i.

Also the tokenizer's own figures: reconstruction MSE / PSNR on the whole test split and codebook
usage over it (:func:`diffusion.models.vqvae.reconstruction_metrics`).

    python benchmarks/ar_decoding_study.py                # n = 1,000 per setting
    python benchmarks/ar_decoding_study.py --num-samples 2000 --settings default
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "ar_decoding"
PAGE = REPO / "docs" / "results" / "ar_decoding.md"
METRICS = "fid,kid,precision,recall,accuracy"

#: name -> (temperature, top_k, top_p, guidance_scale); 0 / 1.0 switch top-k / top-p off
SETTINGS = {
    "ancestral": (1.0, 0, 1.0, 1.0),
    "t0.9": (0.9, 0, 1.0, 1.0),
    "topk50": (1.0, 50, 1.0, 1.0),
    "topp0.9": (1.0, 0, 0.9, 1.0),
    "cfg1.5": (1.0, 0, 1.0, 1.5),
    "cfg2": (1.0, 0, 1.0, 2.0),
    "cfg3": (1.0, 0, 1.0, 3.0),
    "topk50_cfg2": (1.0, 50, 1.0, 2.0),
    "greedy": (0.0, 0, 1.0, 1.0),
}


def cli_command(model: str, name: str, n: int) -> str:
    t, k, p, g = SETTINGS[name]
    return (f"python -m diffusion evaluate --model {model} --temperature {t} --top-k {k} "
            f"--top-p {p} --guidance-scale {g} --num-samples {n} --metrics {METRICS} "
            f"--cache-dir runs/eval-cache")


def main(argv=None) -> int:
    from diffusion import WEIGHTS_DIR
    from diffusion.evaluation import evaluate
    from diffusion.pipelines.loading import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(WEIGHTS_DIR / "fashion-mnist-ar"))
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--settings", default="all", help=f"comma list of {list(SETTINGS)} or all")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    names = list(SETTINGS) if args.settings == "all" else args.settings.split(",")
    unknown = set(names) - set(SETTINGS)
    if unknown:
        ap.error(f"unknown settings {sorted(unknown)}; known: {list(SETTINGS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, quiet=True)
    model_rel = str(Path(args.model).resolve().relative_to(REPO)) if \
        Path(args.model).resolve().is_relative_to(REPO) else args.model
    if not args.report_only:
        tok = OUT / "tokenizer.json"
        if not tok.exists():
            from diffusion.models.vqvae import reconstruction_metrics
            from diffusion.data.datasets import fashion_mnist

            start = time.time()
            r = reconstruction_metrics(pipe.vqvae.eval(), fashion_mnist("test").images)
            tok.write_text(json.dumps({**r, "n": 10_000, "seconds": time.time() - start}, indent=2))
            print("tokenizer:", r)
        for name in names:
            path = OUT / f"{name}_n{args.num_samples}.json"
            if path.exists():
                continue
            t, k, p, g = SETTINGS[name]
            start = time.time()
            r = evaluate(pipe, metrics=METRICS, num_samples=args.num_samples, guidance_scale=g,
                         pipeline_kwargs={"temperature": t, "top_k": k, "top_p": p},
                         cache_dir="runs/eval-cache", progress=False)
            r.update(setting=name, temperature=t, top_k=k, top_p=p, guidance_scale=g,
                     command=cli_command(model_rel, name, args.num_samples),
                     wall_seconds=time.time() - start)
            path.write_text(json.dumps(r, indent=2, default=str))
            print(f"{name}: FID {r['fid']:.3f} accuracy {r['accuracy']:.4f} "
                  f"P/R {r['precision']:.3f}/{r['recall']:.3f} ({time.time() - start:.0f} s)")
    write_page(model_rel)
    return 0


def write_page(model: str) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*_n*.json"))]
    order = {n: i for i, n in enumerate(SETTINGS)}
    rows.sort(key=lambda r: (r["n"], order.get(r["setting"], 99)))
    tok = json.loads((OUT / "tokenizer.json").read_text()) if (OUT / "tokenizer.json").exists() else None
    lines = ["# Autoregressive baseline: decoding settings", "",
             f"Model `{model}` (VQ-VAE 7x7 tokens + transformer prior). Written by "
             "`python benchmarks/ar_decoding_study.py`; each row is the CLI command in its JSON "
             "(`docs/results/ar_decoding/`). Features: the shipped classifier's; reference: the "
             "10,000 real test images; image i is class i mod 10 with seed i; fp32. FID at n = 1,000 "
             "is biased upward against n = 10,000 figures: compare rows at equal n only.", ""]
    if tok:
        lines += [f"Tokenizer on the 10,000 test images: MSE {tok['mse']:.5f} ([0, 1] scale), PSNR "
                  f"{tok['psnr']:.2f} dB, codebook usage {tok['codebook_used']} codes "
                  f"({100 * tok['codebook_fraction']:.1f}%), perplexity {tok['codebook_perplexity']:.1f}.", ""]
    lines += ["| setting | temperature | top_k | top_p | guidance | n | FID | KID | precision | recall "
              "| accuracy | s/image |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['temperature']} | {r['top_k'] or '-'} | "
                     f"{r['top_p'] if r['top_p'] != 1.0 else '-'} | {r['guidance_scale']} | {r['n']} | "
                     f"{r['fid']:.3f} | {r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['accuracy']:.4f} | {r['seconds_per_image']:.4f} |")
    if rows:
        lines += ["", f"Hardware: {rows[0].get('hardware', '?')}."]
    PAGE.write_text("\n".join(lines) + "\n")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    raise SystemExit(main())
