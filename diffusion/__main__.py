"""Command line: ``python -m diffusion generate|evaluate|sweep|synthesize|samplers ...`` (also the
``diffusion-centric`` script).

Examples::

    python -m diffusion generate --out samples/grid.png             # shipped model, 10x10 grid
    python -m diffusion generate --classes Sneaker,Bag --per-class 8 --sampler euler-a \\
        --steps 30 --guidance-scale 3 --seed 7 --out grid.png --out-dir samples/
    python -m diffusion generate --model diffusion/weights/fashion-mnist-text \\
        --prompt "a pair of running shoes" --prompt "a summer dress" --negative-prompt "a bag"
    python -m diffusion samplers                                      # list sampler names
    python -m diffusion evaluate --num-samples 2000 --out runs/eval.json  # FID, KID, P/R, accuracy
    python -m diffusion evaluate --model diffusion/weights/fashion-mnist-text --prompts held-out
    python -m diffusion sweep --samplers ddim,dpmpp-2m,heun --nfe 5,10,20,50 --out runs/sweep
    python -m diffusion synthesize --per-class 100 --out runs/synthetic  # labelled image folder
    accelerate launch --num_processes 2 -m diffusion evaluate ...     # generation split over 2
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path


def _parse_classes(text: str, pipe) -> list[int]:
    if text in ("all", ""):
        if pipe.num_classes is None:
            return []
        return list(range(pipe.num_classes))
    return [pipe.class_id(part) for part in text.split(",")]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "image"


def cmd_generate(args) -> int:
    import inspect

    import torch
    from torchvision.utils import make_grid, save_image

    from diffusion.paths import default_model_path
    from diffusion.pipelines.loading import load_pipeline
    from samplers import sampler_name

    _check_sampler_name(args.sampler)
    model = args.model or default_model_path()
    if not Path(model).is_dir():
        raise SystemExit(f"error: model folder {model!r} does not exist (train one with "
                         f"`python -m training --config ...`; its pipeline is in <output_dir>/final)")
    if not (Path(model) / "model_index.json").is_file() and not (Path(model) / "config.json").is_file():
        raise SystemExit(f"error: {model!r} is not a saved pipeline (no model_index.json); "
                         f"use the folder written by save_pretrained, e.g. <output_dir>/final")
    if args.quiet:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    start = time.time()
    try:
        pipe = load_pipeline(model, device=args.device, quiet=args.quiet)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    # Family-specific options go only to pipelines whose call takes them (a GAN has no sampler).
    accepted = set(inspect.signature(pipe.__call__).parameters)
    _default_guidance(pipe, args)
    options = {k: v for k, v in (("num_inference_steps", args.steps),
                                 ("guidance_scale", args.guidance_scale), ("eta", args.eta),
                                 ("sampler", args.sampler), ("truncation", args.truncation))
               if k in accepted and v is not None}
    if args.truncation is not None and "truncation" not in accepted:
        raise SystemExit(f"error: --truncation is for GAN pipelines; {type(pipe).__name__} has none")
    options.update(_decoding_options(pipe, args))
    prompts = args.prompt
    takes_text = getattr(pipe, "takes_text", False)
    if prompts and not takes_text:
        raise SystemExit(f"error: --prompt needs a text-conditional model; {model!r} has no text "
                         f"encoder (use --classes)")
    if takes_text and not prompts and pipe.num_classes is None:
        raise SystemExit(f"error: {model!r} is a text-to-image model: pass --prompt "
                         f"(repeatable), e.g. --prompt \"a photo of a sneaker\" --prompt \"a dress\"")
    if args.negative_prompt is not None and not takes_text:
        raise SystemExit("error: --negative-prompt needs a text-conditional model")
    try:
        classes = [] if prompts and args.classes == "all" else _parse_classes(args.classes, pipe)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if prompts and classes and len(classes) != len(prompts):
        raise SystemExit(f"error: --classes and --prompt pair up one to one: got {len(classes)} "
                         f"classes and {len(prompts)} prompts")
    labels = classes or None
    rows = len(prompts) if prompts else len(classes)
    n = args.per_class * max(1, rows)
    seeds = [args.seed + i for i in range(n)]
    if prompts and args.negative_prompt is not None:
        options["negative_prompt"] = args.negative_prompt
    images = []
    nfe = 0
    for lo in range(0, n, args.batch_size):
        chunk = slice(lo, min(n, lo + args.batch_size))
        rows_of_chunk = [i // args.per_class for i in range(chunk.start, chunk.stop)]
        batch_labels = [labels[r] for r in rows_of_chunk] if labels is not None else None
        batch_text = {"prompt": [prompts[r] for r in rows_of_chunk]} if prompts else {}
        try:
            out = pipe(class_labels=batch_labels,
                       num_images_per_prompt=1 if rows else chunk.stop - chunk.start,
                       output_type="pt", **options, **batch_text,
                       generator=[torch.Generator().manual_seed(s) for s in seeds[chunk]])
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        images.append(out.images)
        nfe = out.nfe
    images = torch.cat(images)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        save_image(make_grid(images, nrow=args.per_class if rows else
                             int(len(images) ** 0.5 + 0.999), padding=2, pad_value=1.0), args.out)
        per_row = " a row per prompt" if prompts else " a row per class" if rows else ""
        print(f"wrote {args.out} ({len(images)} images{',' if per_row else ''}{per_row})")
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        names = pipe.config.class_names or []
        for i, img in enumerate(images):
            if prompts:
                stem = f"{_slug(prompts[i // args.per_class])[:60]}_{seeds[i]:06d}"
            elif labels is not None:
                c = labels[i // args.per_class]
                stem = f"{_slug(names[c]) if c < len(names) else f'class{c}'}_{seeds[i]:06d}"
            else:
                stem = f"image_{seeds[i]:06d}"
            save_image(img, out_dir / f"{stem}.png")
        print(f"wrote {len(images)} PNG files to {out_dir}")
    if "num_inference_steps" in options:
        sampler = args.sampler or sampler_name(pipe)
        print(f"sampler={sampler} steps={args.steps} NFE={nfe} guidance_scale="
              f"{args.guidance_scale} seed={args.seed} time={time.time() - start:.1f}s")
    else:
        decoding = ""
        if hasattr(pipe, "decoding_settings"):  # the setting actually used (saved + flags)
            decoding = " " + " ".join(f"{k}={v}" for k, v in pipe.decoding_settings(
                **{k: v for k, v in options.items() if k != "use_cache"}).items())
        print(f"{type(pipe).__name__} NFE={nfe}{decoding} seed={args.seed} "
              f"time={time.time() - start:.1f}s")
    return 0


def _check_sampler_name(name) -> None:
    """``--sampler`` unset or a registered name, else a CLI error listing the names."""
    from samplers import list_samplers

    if name is not None and name not in list_samplers():
        raise SystemExit(f"error: unknown sampler {name!r}; choose one of {list_samplers()}")


def _check_run_sizes(args) -> None:
    if args.num_samples < 2 or args.batch_size < 1 or args.shard_size < 1:
        raise SystemExit("error: --num-samples must be >= 2, --batch-size and --shard-size >= 1")


def cmd_synthesize(args) -> int:
    import shlex

    import torch

    from diffusion.paths import default_model_path
    from diffusion.pipelines.loading import load_pipeline
    from diffusion.evaluation.synthesize import synthesize
    from diffusion.data.datasets import FASHION_MNIST_CLASSES

    _check_sampler_name(args.sampler)
    class_prompts = _class_prompts(args.prompts)
    try:
        pipe = load_pipeline(args.model or default_model_path(), device=args.device,
                             quiet=args.quiet)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    _default_guidance(pipe, args)
    # The named prompt sets are Fashion-MNIST's: their classes name the folders.
    names = FASHION_MNIST_CLASSES if args.prompts in ("held-out", "training") else None
    command = getattr(args, "command_line", None)
    try:
        summary = synthesize(
            pipe, args.out, args.per_class, class_prompts=class_prompts, class_names=names,
            batch_size=args.batch_size, seed=args.seed, sampler=args.sampler,
            num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
            pipeline_kwargs=_decoding_options(pipe, args) or None,
            autocast_dtype=torch.bfloat16 if args.bf16 else None, progress=not args.quiet,
            overwrite=args.overwrite,
            extra_info={"command": "python -m diffusion " + shlex.join(command)} if command else None)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {summary['n']} images ({summary['num_classes']} classes x {args.per_class}, "
          f"NFE={summary['nfe']}) to {summary['folder']} with metadata.jsonl and synthesis.json "
          f"in {summary['seconds']:.1f}s")
    return 0


def _add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """Options of autoregressive (VQ-VAE + prior) pipelines; unset ones take the model's saved
    decoding setting."""
    p.add_argument("--temperature", type=float, default=None,
                   help="AR pipelines: softmax temperature (0 = greedy; default: the model's)")
    p.add_argument("--top-k", type=int, default=None,
                   help="AR pipelines: keep the k most likely tokens (0 = off; default: the model's)")
    p.add_argument("--top-p", type=float, default=None,
                   help="AR pipelines: nucleus threshold in (0, 1] (1 = off; default: the model's)")
    p.add_argument("--num-beams", type=int, default=None,
                   help="AR pipelines: beam search with this many beams (deterministic)")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="AR pipelines: recompute every token each step (same tokens, slower)")


def _decoding_options(pipe, args) -> dict:
    """The AR decoding options given on the command line, checked against ``pipe``'s call."""
    import inspect

    given = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                               ("top_p", args.top_p), ("num_beams", args.num_beams),
                               ("use_cache", False if args.no_kv_cache else None))
             if v is not None}
    accepted = set(inspect.signature(pipe.__call__).parameters)
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise SystemExit(f"error: {', '.join('--' + k.replace('_', '-') for k in unknown)}: only "
                         f"autoregressive pipelines take this; {type(pipe).__name__} does not")
    return given


def _default_guidance(pipe, args) -> None:
    """``--guidance-scale`` left unset: 2.0 for diffusion pipelines (the shipped model's setting);
    others keep ``None`` (an AR pipeline then uses its saved decoding setting)."""
    import inspect

    if args.guidance_scale is None and "num_inference_steps" in inspect.signature(pipe.__call__).parameters:
        args.guidance_scale = 2.0


def _add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="pipeline folder (save_pretrained); default: the shipped Fashion-MNIST model")


def _add_run_arguments(p: argparse.ArgumentParser, batch_size: int) -> None:
    """Guidance, seeds and batch size of a run of images (evaluate, sweep, compare, synthesize)."""
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="guidance scale (default: 2.0 for diffusion; the saved setting for AR)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed+i, class i %% K (default 0)")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"images per pipeline call (default {batch_size})")


def _add_eval_arguments(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        _add_model_argument(p)
    p.add_argument("--metrics", default="fid,kid,precision,recall,is,accuracy",
                   help="comma-separated subset of fid,kid,precision,recall,is,accuracy")
    p.add_argument("--num-samples", type=int, default=2000, help="images to generate (default 2000)")
    _add_run_arguments(p, batch_size=250)
    p.add_argument("--features", default="classifier", choices=["classifier", "inception"],
                   help="feature network for FID/KID/precision/recall (default: the shipped "
                        "Fashion-MNIST classifier's 128-d penultimate features)")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 FID weights file (weights-inception-2015-12-05-"
                        "6726825d.pth) for --features inception; never downloaded")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="reference dataset: fashion-mnist (default) or image-folder (your class "
                        "sub-folders under --dataset-root, scored with --classifier)")
    p.add_argument("--dataset-root", default=None, help="folder of the dataset files")
    p.add_argument("--classifier", default=None, metavar="DIR",
                   help="a classifier folder trained with `python -m training` (objective "
                        "classifier) whose features and predictions score the images, instead of "
                        "the shipped Fashion-MNIST one; required with --dataset image-folder")
    p.add_argument("--reference-split", default="test", help="reference split (default test)")
    p.add_argument("--reference-num-samples", type=int, default=None,
                   help="real images for the reference statistics (default: the whole split)")
    p.add_argument("--cache-dir", default=None,
                   help="cache of reference features and generated samples (default "
                        "$DIFFUSION_CENTRIC_CACHE or ~/.cache/diffusion-centric)")
    p.add_argument("--no-cache", action="store_true", help="cache nothing on disk")
    p.add_argument("--shard-size", type=int, default=500,
                   help="images per cached shard, the unit of resume and of the split across "
                        "processes (default 500; part of the cache key)")
    p.add_argument("--bf16", action="store_true", help="sample under bfloat16 autocast")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--prompts", default=None, metavar="SET",
                   help="text-to-image models: the prompts per class; 'held-out' (Fashion-MNIST "
                        "paraphrases never trained on), 'training' (the training captions) or a "
                        "JSON file holding one list of prompts per class; image i gets class "
                        "i %% K's prompts in turn and is scored against that class")
    _add_decoding_arguments(p)


def _eval_setup(args):
    """(pipeline, accelerator or None, evaluate keyword arguments) from the shared arguments."""
    import os

    from diffusion.paths import default_model_path
    from diffusion.pipelines.loading import load_pipeline

    _check_run_sizes(args)
    if args.features == "inception" and not args.inception_weights:
        raise SystemExit("error: --features inception needs --inception-weights PATH (a local copy "
                         "of weights-inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.device == "cpu")
    if getattr(args, "real", None):
        from diffusion.evaluation.real import RealImagesPipeline
        from diffusion.data import load_dataset

        try:
            kwargs = _eval_kwargs(args, accelerator)
            real = kwargs["dataset"] if args.dataset == "image-folder" else \
                load_dataset(args.dataset, split=args.real, root=args.dataset_root)
            return RealImagesPipeline(real, seed=args.seed), accelerator, kwargs
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}")
    try:
        pipe = load_pipeline(args.model or default_model_path(),
                             device=str(accelerator.device) if accelerator else args.device,
                             quiet=args.quiet)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    _default_guidance(pipe, args)
    kwargs = _eval_kwargs(args, accelerator)
    kwargs["pipeline_kwargs"] = _decoding_options(pipe, args) or None
    kwargs["class_prompts"] = _class_prompts(args.prompts)
    if getattr(pipe, "takes_text", False) and pipe.num_classes is None and args.prompts is None:
        raise SystemExit("error: a text-to-image model is evaluated on prompts: pass --prompts "
                         "held-out|training (Fashion-MNIST caption sets) or a JSON file with one "
                         "list of prompts per class")
    return pipe, accelerator, kwargs


def _class_prompts(spec):
    """``--prompts``: None, a named Fashion-MNIST caption set, or a JSON file of K prompt lists."""
    import json

    from diffusion.data.captions import (FASHION_MNIST_HELD_OUT_PROMPTS,
                                         FASHION_MNIST_TRAINING_PROMPTS)

    if spec is None:
        return None
    named = {"held-out": FASHION_MNIST_HELD_OUT_PROMPTS, "training": FASHION_MNIST_TRAINING_PROMPTS}
    if spec in named:
        return [list(p) for p in named[spec]]
    if not Path(spec).is_file():
        raise SystemExit(f"error: --prompts {spec!r} is neither 'held-out', 'training' nor a JSON "
                         f"file")
    try:
        return json.loads(Path(spec).read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --prompts {spec}: not JSON ({e})")


def _reference_data(args):
    """``(feature network, reference dataset, split)`` from ``--classifier`` / ``--dataset``: an
    image folder is loaded whole at the size and channels of the classifier trained on it (the
    shipped classifier knows only Fashion-MNIST)."""
    from diffusion.data import load_dataset

    features = args.features
    if args.classifier:
        from diffusion.evaluation.features import ClassifierFeatures

        try:
            features = ClassifierFeatures(path=args.classifier)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: --classifier: {e}")
    if args.dataset != "image-folder":
        return features, args.dataset, args.reference_split
    if not args.dataset_root or not args.classifier:
        raise SystemExit("error: --dataset image-folder needs --dataset-root DIR (class "
                         "sub-folders) and --classifier DIR (a classifier trained on that folder, "
                         "whose features score it: python -m training --config "
                         "training/configs/image_folder_classifier.yaml data.root=DIR)")
    size = features.image_size[0] if features.image_size else None
    if size is None:
        raise SystemExit(f"error: --classifier {args.classifier}: its training_config.yaml does not "
                         f"state data.image_size, needed to load the image folder")
    try:
        dataset = load_dataset("image-folder", root=args.dataset_root, image_size=size,
                               channels=features.in_channels[0])
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    return features, dataset, "all"


def _eval_kwargs(args, accelerator) -> dict:
    import torch

    cache_dir = None if args.no_cache else (args.cache_dir or "default")
    real = getattr(args, "real", None)
    features, dataset, split = _reference_data(args)
    return dict(metrics=args.metrics, num_samples=args.num_samples, batch_size=args.batch_size,
                guidance_scale=None if real else args.guidance_scale, seed=args.seed,
                dataset=dataset, dataset_root=args.dataset_root, feature_network=features,
                inception_weights=args.inception_weights, reference_split=split,
                reference_num_samples=args.reference_num_samples, cache_dir=cache_dir,
                autocast_dtype=torch.bfloat16 if args.bf16 else None, accelerator=accelerator,
                progress=not args.quiet, shard_size=args.shard_size)


_TABLE = (("n", "{}"), ("generated", "{}"), ("nfe", "{}"), ("fid", "{:.3f}"), ("kid", "{:.5f}"), ("kid_std", "{:.5f}"),
          ("precision", "{:.3f}"), ("recall", "{:.3f}"), ("inception_score", "{:.3f}"),
          ("accuracy", "{:.4f}"), ("cas", "{:.4f}"), ("cas_real_accuracy", "{:.4f}"),
          ("cas_ratio", "{:.3f}"), ("seconds_per_image", "{:.4f}"),
          ("peak_memory_bytes", "{:,}"), ("feature_network", "{}"),
          ("feature_description", "{}"), ("reference_dataset", "{}"), ("reference_split", "{}"),
          ("reference_n", "{}"), ("hardware", "{}"))


def _print_table(result: dict) -> None:
    for key, fmt in _TABLE:
        if result.get(key) is not None:
            print(f"  {key:20s} {fmt.format(result[key])}")


def cmd_evaluate(args) -> int:
    import json

    from diffusion.evaluation import evaluate

    pipe, accelerator, kwargs = _eval_setup(args)
    call = {} if args.real else dict(sampler=args.sampler, num_inference_steps=args.steps)
    try:
        result = evaluate(pipe, **call, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    if args.real:
        result["sampler"] = f"real {args.real} images ({args.dataset}; floor)"
    if args.cas and (accelerator is None or accelerator.is_main_process):
        from diffusion.evaluation.cas import pipeline_cas
        from diffusion.evaluation.sampling import pipeline_call_kwargs

        cas = pipeline_cas(pipe, args.num_samples, seed=args.seed, batch_size=args.batch_size,
                           call_kwargs=pipeline_call_kwargs(  # as evaluate() passed them
                               pipe, kwargs.get("pipeline_kwargs"), **call,
                               guidance_scale=kwargs["guidance_scale"]),
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
        print(f"{result['pipeline']} sampler={result['sampler']} steps={result['num_inference_steps']} "
              f"guidance_scale={result['guidance_scale']}{prompts} seed={result['seed']} "
              f"dtype={result['autocast_dtype'] or 'float32'}")
    _print_table(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


def cmd_sweep(args) -> int:
    import json

    from diffusion.evaluation.sweep import plot_sweep, sweep, write_csv
    from samplers import list_samplers

    pipe, accelerator, kwargs = _eval_setup(args)
    samplers = list_samplers() if args.samplers == "all" else args.samplers.split(",")
    steps = [int(v) for v in args.steps.split(",")] if args.steps else None
    nfe = [int(v) for v in args.nfe.split(",")] if args.nfe else None
    reference = None
    if args.reference:
        name, _, n = args.reference.partition(":")
        reference = (name, int(n or 250))
    try:
        rows = sweep(pipe, samplers, steps=steps, nfe=nfe, reference=reference, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
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


def cmd_compare(args) -> int:
    import json
    import shlex

    from diffusion.evaluation.compare import compare, plot_compare, write_markdown
    from diffusion.evaluation.sweep import write_csv

    _check_run_sizes(args)
    given = [f"--{k.replace('_', '-')}" for k in ("temperature", "top_k", "top_p", "num_beams")
             if getattr(args, k) is not None]
    if given:
        raise SystemExit(f"error: {', '.join(given)}: compare uses each model's saved decoding "
                         f"setting; evaluate one model with `evaluate` to vary it")
    if not str(args.out).endswith(".md"):
        raise SystemExit(f"error: --out must name a Markdown file (.md), got {args.out!r}")
    kwargs = _eval_kwargs(args, None)
    kwargs.pop("accelerator")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        rows = compare(args.models, samplers=args.samplers.split(",") if args.samplers else None,
                       steps=[int(n) for n in args.steps.split(",")] if args.steps else None,
                       cas=args.cas, cas_steps=args.cas_steps, batch_sizes=batch_sizes,
                       measure_memory=not args.no_memory, device=args.device,
                       class_prompts=_class_prompts(args.prompts), **kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    if args.dataset == "image-folder":  # name the folder, not the hash of its pixels
        for row in rows:
            row["reference_dataset"] = f"image folder {args.dataset_root}"
    out = Path(args.out)
    folder = out.with_suffix("")
    write_csv(rows, folder / "compare.csv")
    (folder / "compare.json").write_text(json.dumps(rows, indent=2, default=str))
    metric = "fid" if "fid" in args.metrics.split(",") else None
    plots = plot_compare(rows, folder, metric=metric) if metric else []
    command = "python -m diffusion " + shlex.join(args.command_line)
    write_markdown(rows, out, command=command, plots=plots)
    print(f"wrote {out}, {folder / 'compare.csv'}, {folder / 'compare.json'}"
          + "".join(f", {p}" for p in plots))
    return 0


def cmd_samplers(args) -> int:
    from samplers import list_samplers, sampler_spec

    for name in list_samplers():
        spec = sampler_spec(name)
        kind = "stochastic" if spec.stochastic else "deterministic"
        print(f"{name:16s} {spec.scheduler_class.__name__:34s} {kind:13s} {spec.source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion",
                                     description="Generate, evaluate and sweep image generators.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a grid (and/or per-image files)",
                       description="Generate images; by default a 10x10 grid (a row per class) "
                                   "from the shipped Fashion-MNIST model.")
    _add_model_argument(g)
    g.add_argument("--classes", default="all",
                   help="comma-separated class ids or names (e.g. 0,7 or Sneaker,Bag), or 'all'")
    g.add_argument("--prompt", action="append", default=None,
                   help="text prompt for a text-to-image model; repeat for several (a grid row "
                        "each); with --classes on a class+text model they pair up one to one")
    g.add_argument("--negative-prompt", default=None,
                   help="replaces the empty prompt in classifier-free guidance (text models)")
    g.add_argument("--per-class", "--per-prompt", dest="per_class", type=int, default=10,
                   help="images per class or per prompt (default 10)")
    g.add_argument("--sampler", default=None,
                   help="sampler name (see `python -m diffusion samplers`); default: the model's "
                        "own scheduler (dpmpp-2m for the shipped class model)")
    g.add_argument("--steps", type=int, default=20, help="num_inference_steps (default 20)")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale; 1 disables guidance (default 2.0 for "
                        "diffusion; AR: the model's saved setting)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    g.add_argument("--truncation", type=float, default=None,
                   help="GAN pipelines: resample latent components beyond this (default: none)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed+i (default 0)")
    g.add_argument("--batch-size", type=int, default=100, help="images per forward batch")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--out", default="samples/grid.png", help="grid PNG path ('' to skip)")
    g.add_argument("--out-dir", default=None, help="also write one PNG per image here")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_decoding_arguments(g)
    g.set_defaults(func=cmd_generate)
    y = sub.add_parser("synthesize", help="export a labelled synthetic image-folder dataset",
                       description="Generate --per-class images of every class and write them to "
                                   "--out as <id>_<class>/*.png with metadata.jsonl and "
                                   "synthesis.json: a dataset torchvision ImageFolder, Hugging "
                                   "Face datasets (imagefolder) and diffusion.data.datasets read as it is.")
    _add_model_argument(y)
    y.add_argument("--per-class", type=int, required=True, help="images per class")
    y.add_argument("--out", required=True, help="dataset folder to create (absent or empty)")
    y.add_argument("--sampler", default=None,
                   help="sampler name (default: the model's own scheduler)")
    y.add_argument("--steps", type=int, default=20, help="num_inference_steps (default 20)")
    _add_run_arguments(y, batch_size=100)
    y.add_argument("--bf16", action="store_true", help="sample under bfloat16 autocast")
    y.add_argument("--prompts", default=None, metavar="SET",
                   help="text-to-image models: the prompts per class: 'held-out', 'training' "
                        "(Fashion-MNIST caption sets) or a JSON file of one list per class")
    y.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier export")
    y.add_argument("--device", default="cpu", help="torch device (default cpu)")
    y.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_decoding_arguments(y)
    y.set_defaults(func=cmd_synthesize)
    e = sub.add_parser("evaluate", help="FID, KID, precision/recall, IS, accuracy (and CAS)",
                       description="Generate --num-samples images and score them against a real "
                                   "split; prints a table and writes JSON (--out).")
    _add_eval_arguments(e)
    e.add_argument("--sampler", default=None,
                   help="sampler name (default: the model's own scheduler)")
    e.add_argument("--steps", type=int, default=20, help="num_inference_steps (default 20)")
    e.add_argument("--real", default=None, metavar="SPLIT",
                   help="score real images of SPLIT (e.g. train) instead of a model: the floor "
                        "every model is measured against")
    e.add_argument("--cas", action="store_true",
                   help="also CAS: train the evaluation classifier on the generated images and on "
                        "as many real ones, test both on the real test split (minutes)")
    e.add_argument("--cas-steps", type=int, default=None,
                   help="classifier training steps for --cas (default: the shipped config's)")
    e.add_argument("--out", default=None, help="JSON file for the result")
    e.set_defaults(func=cmd_evaluate)
    w = sub.add_parser("sweep", help="quality vs NFE / seconds of several samplers: CSV + plots",
                       description="Evaluate every sampler at every step count (--steps) or NFE "
                                   "budget (--nfe); writes sweep.csv, sweep.json and FID-vs-NFE "
                                   "and FID-vs-seconds plots to --out.")
    _add_eval_arguments(w)
    w.add_argument("--samplers", default="ddim,dpmpp-2m,unipc,euler,heun",
                   help="comma-separated sampler names, or 'all'")
    group = w.add_mutually_exclusive_group(required=True)
    group.add_argument("--steps", default=None, help="comma-separated num_inference_steps")
    group.add_argument("--nfe", default=None, help="comma-separated NFE budgets")
    w.add_argument("--reference", default=None,
                   help="a reference row SAMPLER:STEPS drawn as a dashed line, e.g. ddpm:250")
    w.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    w.set_defaults(func=cmd_sweep)
    c = sub.add_parser("compare", help="every model side by side: quality, speed, memory, "
                                       "parameters, training cost (Markdown + CSV + plots)",
                       description="Evaluate every --models folder (diffusion at each --samplers x "
                                   "--steps; GAN and VQ-VAE + prior with their saved settings) on "
                                   "the same data and metrics, time them on this machine, and "
                                   "write --out (Markdown, the command above the table) with "
                                   "compare.csv, compare.json and plots beside it.")
    c.add_argument("--models", nargs="+", required=True, metavar="DIR",
                   help="model folders (save_pretrained), any family")
    _add_eval_arguments(c, model=False)
    c.add_argument("--samplers", default=None,
                   help="diffusion models: comma-separated sampler names (default: each model's own)")
    c.add_argument("--steps", default=None,
                   help="diffusion models: comma-separated num_inference_steps (default 20)")
    c.add_argument("--batch-sizes", default="1,16,64,256",
                   help="batch sizes timed for throughput (default 1,16,64,256)")
    c.add_argument("--cas", action="store_true", help="also CAS per row (trains a classifier each)")
    c.add_argument("--cas-steps", type=int, default=None,
                   help="classifier steps for --cas (default: the shipped config's)")
    c.add_argument("--no-memory", action="store_true",
                   help="skip the fresh-process peak-memory measurement on CPU")
    c.add_argument("--out", default="runs/compare.md",
                   help="Markdown table; CSV, JSON and plots go to the folder of the same name "
                        "(default runs/compare.md -> runs/compare/)")
    c.set_defaults(func=cmd_compare, metrics="fid,kid,precision,recall,accuracy")
    s = sub.add_parser("samplers", help="list the registered samplers")
    s.set_defaults(func=cmd_samplers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    steps = getattr(args, "steps", 1)
    if getattr(args, "per_class", 1) < 1 or (isinstance(steps, int) and steps < 1) or \
            getattr(args, "batch_size", 1) < 1:
        raise SystemExit("error: --per-class, --steps and --batch-size must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
