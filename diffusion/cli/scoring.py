"""What evaluate, sweep and compare share: the pipeline, accelerator, reference data and
``evaluate()`` keyword arguments built from the flags of :func:`options.add_eval`.

Under ``accelerate launch`` (``WORLD_SIZE`` > 1) each process generates its share of the shards
and only the main process writes results.
"""

from __future__ import annotations

import os

from diffusion.cli import options
from diffusion.cli.options import exit_on


def eval_setup(args):
    """(pipeline, accelerator or None, evaluate keyword arguments) from the shared arguments."""
    options.check_run_sizes(args)
    if args.features == "inception" and not args.inception_weights:
        raise SystemExit("error: --features inception needs --inception-weights PATH (a local copy "
                         "of weights-inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.device == "cpu")
    if getattr(args, "real", None):
        from diffusion.data import load_dataset
        from diffusion.evaluation.real import RealImagesPipeline

        with exit_on(FileNotFoundError, ValueError):
            kwargs = eval_kwargs(args, accelerator)
            real = kwargs["dataset"] if args.dataset == "image-folder" else \
                load_dataset(args.dataset, split=args.real, root=args.dataset_root)
            return RealImagesPipeline(real, seed=args.seed), accelerator, kwargs
    pipe = options.load_model(args.model, str(accelerator.device) if accelerator else args.device,
                              args.quiet)
    options.default_guidance(pipe, args)
    kwargs = eval_kwargs(args, accelerator)
    kwargs["pipeline_kwargs"] = options.decoding_options(pipe, args) or None
    kwargs["class_prompts"] = options.class_prompts_for(pipe, args.prompts)
    return pipe, accelerator, kwargs


def reference_data(args):
    """``(feature network, reference dataset, split)`` from ``--classifier`` / ``--dataset``: an
    image folder is loaded whole at the size and channels of the classifier trained on it (the
    shipped classifier knows only Fashion-MNIST)."""
    from diffusion.data import load_dataset

    features = args.features
    if args.classifier:
        from diffusion.evaluation.features import ClassifierFeatures

        with exit_on(FileNotFoundError, ValueError, prefix="--classifier: "):
            features = ClassifierFeatures(path=args.classifier)
    if args.dataset != "image-folder":
        if args.dataset_root:  # checked up front: a wrong root is never silently replaced
            with exit_on(FileNotFoundError, ValueError, prefix="--dataset-root: "):
                load_dataset(args.dataset, split=args.reference_split, root=args.dataset_root)
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
    with exit_on(FileNotFoundError, ValueError):
        dataset = load_dataset("image-folder", root=args.dataset_root, image_size=size,
                               channels=features.in_channels[0])
    return features, dataset, "all"


def eval_kwargs(args, accelerator) -> dict:
    """The keyword arguments of ``diffusion.evaluation.evaluate`` given by the eval flags."""
    import torch

    cache_dir = None if args.no_cache else (args.cache_dir or "default")
    real = getattr(args, "real", None)
    features, dataset, split = reference_data(args)
    return dict(metrics=args.metrics, num_samples=args.num_samples, batch_size=args.batch_size,
                guidance_scale=None if real else args.guidance_scale,
                guidance=None if real else options.guidance_from_args(args), seed=args.seed,
                dataset=dataset, dataset_root=args.dataset_root, feature_network=features,
                inception_weights=args.inception_weights, reference_split=split,
                reference_num_samples=args.reference_num_samples, cache_dir=cache_dir,
                autocast_dtype=torch.bfloat16 if args.bf16 else None, accelerator=accelerator,
                progress=not args.quiet, shard_size=args.shard_size)
