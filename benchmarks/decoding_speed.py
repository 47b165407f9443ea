"""Decoding speed of the autoregressive prior: KV-cache vs none, and beam search cost vs beams.

Both sides of each ratio decode the *same* tokens with the same prior in one run (greedy,
fp32, ``torch.inference_mode``), so the ratio is a property of the code, not of the machine load:

1. **KV-cache speed-up** = time without the cache / time with it, at 49 tokens (7x7, the shipped
   prior if present, else an untrained prior of the shipped config) and at 196 tokens (14x14, an
   untrained prior of the same width: speed does not depend on the weights). Target: >= 5x at 196.
   The tokens of the two sides are checked to be identical (exit status 1 otherwise).
2. **Beam search cost**: time of ``num_beams = k`` over greedy (``k = 1``), with the cache, at 49
   tokens; beam search runs ``k`` rows per image, so the cost should grow about linearly in k.

Timed runs alternate the two sides (ABAB) after a warm-up; medians are reported. Writes
``docs/results/decoding_speed.md`` and ``.json`` (``--out``) and prints the table.

Run (about 1 minute on 1 thread)::

    OMP_NUM_THREADS=1 python benchmarks/decoding_speed.py
    python benchmarks/decoding_speed.py --batch 16 --repeats 5 --beams 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from diffusion import WEIGHTS_DIR
from diffusion.models.prior import TransformerPrior
from samplers.decoding import decode

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP_196 = 5.0
SHIPPED = WEIGHTS_DIR / "fashion-mnist-ar"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="images per decode call")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    p.add_argument("--beams", default="1,2,4,8", help="comma-separated num_beams values")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the cached path is many small operations, "
                        "which oversubscribed threads on a shared machine slow down most)")
    p.add_argument("--out", default=str(REPO / "docs" / "results" / "decoding_speed"),
                   help="path stem of the .md and .json written")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    return args


def load_prior(num_positions: int) -> tuple[TransformerPrior, str]:
    """The shipped prior at 49 tokens; otherwise an untrained prior of the shipped config's size."""
    if num_positions == 49 and (SHIPPED / "prior").is_dir():
        return TransformerPrior.from_pretrained(SHIPPED / "prior").eval(), "shipped prior"
    from training.config import load_config

    p = load_config(REPO / "training" / "configs" / "fashion_mnist_prior.yaml").prior
    torch.manual_seed(0)
    prior = TransformerPrior(vocab_size=256, num_positions=num_positions, num_classes=10,
                             d_model=p.d_model, num_layers=p.num_layers, num_heads=p.num_heads,
                             mlp_ratio=p.mlp_ratio)
    return prior.eval(), "untrained prior (shipped config)"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median_time(fn, repeats: int):
    """Median of ``repeats`` timed runs of ``fn`` after one warm-up, and the last result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        t, out = timed(fn)
        times.append(t)
    return statistics.median(times), out


def compare(fa, fb, repeats: int):
    """Medians of alternating timed runs of ``fa`` and ``fb`` after one warm-up each."""
    fa(), fb()
    ta, tb, outs = [], [], None
    for _ in range(repeats):
        t, a = timed(fa)
        ta.append(t)
        t, b = timed(fb)
        tb.append(t)
        outs = (a, b)
    return statistics.median(ta), statistics.median(tb), outs


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, ok = [], True
    labels = torch.arange(args.batch) % 10
    with torch.inference_mode():
        for n in (49, 196):
            prior, what = load_prior(n)
            prefix = prior.prefix_ids(labels, args.batch)

            def run(use_cache, prior=prior, prefix=prefix, n=n):
                return decode(prior, prefix, n, do_sample=False, use_cache=use_cache)

            t_cache, t_full, (a, b) = compare(lambda: run(True), lambda: run(False), args.repeats)
            same = torch.equal(a.sequences, b.sequences)
            ok &= same
            rows.append({"kind": "kv-cache", "tokens": n, "prior": what, "batch": args.batch,
                         "seconds_with_cache": t_cache, "seconds_without_cache": t_full,
                         "speedup": t_full / t_cache, "same_tokens": same})
            print(f"{n:4d} tokens ({what}): with cache {t_cache:.3f} s, without {t_full:.3f} s, "
                  f"speed-up {t_full / t_cache:.2f}x, same tokens: {same}")
        prior, what = load_prior(49)
        prefix = prior.prefix_ids(labels, args.batch)
        beams = [int(k) for k in args.beams.split(",")]
        base = None
        for k in beams:
            def run(k=k):
                return decode(prior, prefix, 49, do_sample=False, num_beams=k)

            t, out = median_time(run, args.repeats)
            base = base or (t if k == 1 else None)
            rows.append({"kind": "beam", "tokens": 49, "prior": what, "batch": args.batch,
                         "num_beams": k, "seconds": t, "mean_log_prob": out.log_probs.mean().item(),
                         "cost_vs_greedy": None if base is None else t / base})
            cost = "" if base is None else f", {t / base:.2f}x greedy"
            print(f"num_beams={k}: {t:.3f} s{cost}, mean log p(tokens) {out.log_probs.mean():.2f}")

    kv196 = next(r for r in rows if r["kind"] == "kv-cache" and r["tokens"] == 196)
    verdict = "met" if kv196["speedup"] >= TARGET_SPEEDUP_196 else "NOT met"
    from diffusion.hardware import hardware_description

    hardware = hardware_description("cpu")
    lines = ["# Decoding speed: KV-cache and beam search", "",
             f"`python benchmarks/decoding_speed.py --batch {args.batch} --repeats {args.repeats}` "
             f"({hardware}; greedy, fp32, batch {args.batch}, medians of {args.repeats} alternating "
             f"runs). Target: cache speed-up >= {TARGET_SPEEDUP_196:.0f}x at 196 tokens: **{verdict}** "
             f"({kv196['speedup']:.2f}x).", "",
             "| tokens | prior | with cache (s) | without (s) | speed-up | same tokens |",
             "|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if r["kind"] == "kv-cache":
            lines.append(f"| {r['tokens']} | {r['prior']} | {r['seconds_with_cache']:.3f} | "
                         f"{r['seconds_without_cache']:.3f} | {r['speedup']:.2f}x | {r['same_tokens']} |")
    lines += ["", "| num_beams | seconds | cost vs greedy | mean log p(best grid) |", "|---:|---:|---:|---:|"]
    for r in rows:
        if r["kind"] == "beam":
            cost = "-" if r["cost_vs_greedy"] is None else f"{r['cost_vs_greedy']:.2f}x"
            lines.append(f"| {r['num_beams']} | {r['seconds']:.3f} | {cost} | {r['mean_log_prob']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
