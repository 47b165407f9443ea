"""``python -m diffusion evaluate``: FID, KID, precision/recall, IS, accuracy, speckle rate (and
CAS) of one model, or of real images (``--real``, the floor), printed as a table and written as JSON.

Examples::

    python -m diffusion evaluate --num-samples 2000 --out runs/eval.json
    python -m diffusion evaluate --model diffusion/weights/fashion-mnist-text --prompts held-out
    accelerate launch --num_processes 2 -m diffusion evaluate ...     # generation split over 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion.cli import options
from diffusion.cli.options import exit_on
from diffusion.cli.scoring import eval_setup


def add_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser("evaluate", help="FID, KID, precision/recall, IS, accuracy (and CAS)",
                              description="Generate --num-samples images and score them against "
                                          "a real split; prints a table and writes JSON (--out).")
    options.add_eval(e)
    options.add_sampler(e)
    options.add_steps(e)
    e.add_argument("--real", default=None, metavar="SPLIT",
                   help="score real images of SPLIT (e.g. train) instead of a model: the floor "
                        "every model is measured against")
    options.add_cas(e, help="also CAS: train the evaluation classifier on the generated images and "
                            "on as many real ones, test both on the real test split (minutes)",
                    steps_help="classifier training steps for --cas (default: the shipped "
                               "config's)")
    e.add_argument("--out", default=None, help="JSON file for the result")
    return e


#: The result fields printed, in order, with their formats.
TABLE = (("n", "{}"), ("generated", "{}"), ("nfe", "{}"), ("fid", "{:.3f}"), ("kid", "{:.5f}"),
         ("kid_std", "{:.5f}"), ("precision", "{:.3f}"), ("recall", "{:.3f}"),
         ("inception_score", "{:.3f}"), ("accuracy", "{:.4f}"), ("cas", "{:.4f}"),
         ("cas_real_accuracy", "{:.4f}"), ("cas_ratio", "{:.3f}"), ("speckle_rate", "{:.4f}"),
         ("speckle_threshold", "{:.4g}"), ("seconds_per_image", "{:.4f}"),
         ("peak_memory_bytes", "{:,}"), ("feature_network", "{}"),
         ("feature_description", "{}"), ("reference_dataset", "{}"), ("reference_split", "{}"),
         ("reference_n", "{}"), ("hardware", "{}"))


def print_table(result: dict) -> None:
    for key, fmt in TABLE:
        if result.get(key) is not None:
            print(f"  {key:20s} {fmt.format(result[key])}")


def run(args) -> int:
    from diffusion.evaluation import evaluate

    pipe, accelerator, kwargs = eval_setup(args)
    call = {} if args.real else dict(sampler=args.sampler, num_inference_steps=args.steps)
    with exit_on(ValueError, FileNotFoundError):
        result = evaluate(pipe, **call, **kwargs)
    if args.real:
        result["sampler"] = f"real {args.real} images ({args.dataset}; floor)"
    if args.cas and (accelerator is None or accelerator.is_main_process):
        from diffusion.evaluation.cas import pipeline_cas, planned_steps
        from diffusion.evaluation.sampling import pipeline_call_kwargs

        with exit_on(ValueError):
            steps = planned_steps(args.cas_steps)
        print(f"CAS: training the classifier twice for {steps} steps each, on {args.num_samples} "
              f"generated images and on {args.num_samples} real ones (--cas-steps sets the steps)",
              flush=True)
        cas = pipeline_cas(pipe, args.num_samples, seed=args.seed, batch_size=args.batch_size,
                           call_kwargs=pipeline_call_kwargs(  # as evaluate() passed them
                               pipe, kwargs.get("pipeline_kwargs"), **call,
                               guidance_scale=kwargs["guidance_scale"],
                               guidance=kwargs["guidance"]),
                           cache_dir=kwargs["cache_dir"], autocast_dtype=kwargs["autocast_dtype"],
                           progress=not args.quiet, shard_size=args.shard_size,
                           class_prompts=kwargs.get("class_prompts"), max_steps=args.cas_steps)
        result.update(cas=cas["cas"], cas_real_accuracy=cas["real_accuracy"],
                      cas_ratio=cas["ratio"], cas_details=cas)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    if hasattr(pipe, "decoding_settings"):  # AR: record the decoding setting actually used
        used = dict(kwargs["pipeline_kwargs"] or {}, guidance_scale=kwargs["guidance_scale"])
        used.pop("use_cache", None)
        result["decoding"] = pipe.decoding_settings(**used)
        result["guidance_scale"] = result["decoding"]["guidance_scale"]
        print(f"{result['pipeline']} " + " ".join(f"{k}={v}" for k, v in result["decoding"].items())
              + f" seed={result['seed']} dtype={result['autocast_dtype'] or 'float32'}")
    else:
        prompts = f" prompts={args.prompts}" if getattr(args, "prompts", None) else ""
        print(f"{result['pipeline']} sampler={result['sampler']} "
              f"steps={result['num_inference_steps']} "
              f"guidance={(result.get('guidance') or {}).get('name', 'cfg')} "
              f"guidance_scale={result['guidance_scale']}{prompts} seed={result['seed']} "
              f"dtype={result['autocast_dtype'] or 'float32'}")
    print_table(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0
