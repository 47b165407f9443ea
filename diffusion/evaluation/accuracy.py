"""Conditional accuracy of a class-conditional generator under an independent classifier.

Conditional accuracy is the fraction of generated images that an independent classifier assigns to
the class they were generated for (the "classification accuracy" used e.g. by Ho & Salimans 2022 to
show the effect of guidance). It measures conditioning, not diversity: report it beside FID/KID.
:func:`conditional_accuracy` is :func:`~diffusion.evaluation.evaluator.evaluate` with
``metrics=("accuracy",)`` and no cache, returned in a short form: one code path computes the
figure (:func:`~diffusion.evaluation.scores.conditional_accuracy_from_logits`).

Example::

    >>> from diffusion import DiffusionImagePipeline, default_model_path
    >>> from diffusion.evaluation.accuracy import conditional_accuracy
    >>> from diffusion.models.classifier import load_classifier
    >>> pipe = DiffusionImagePipeline.from_pretrained(default_model_path())      # doctest: +SKIP
    >>> conditional_accuracy(pipe, load_classifier(), num_samples=100)["accuracy"]  # doctest: +SKIP
    0.97
"""

from __future__ import annotations

from typing import Optional

import torch

from diffusion.evaluation.evaluator import evaluate
from diffusion.models.classifier import ImageClassifier


def conditional_accuracy(pipe, classifier: ImageClassifier, num_samples: int = 1000,
                         sampler: Optional[str] = None, num_inference_steps: int = 20,
                         guidance_scale: float = 2.0, batch_size: int = 250, seed: int = 0,
                         autocast_dtype: Optional[torch.dtype] = None) -> dict:
    """Generate ``num_samples`` images, classes cycling ``0, 1, ..., K-1, 0, ...``, and classify.

    Image ``i`` has class ``i % K`` and its own generator seeded ``seed + i``, so the figure does
    not depend on ``batch_size``. Images are rounded to uint8 before classification, exactly as in
    :func:`diffusion.evaluation.evaluate` (this is its ``"accuracy"`` metric).

    Args:
        pipe: a class-conditional pipeline with the shared call signature.
        classifier: takes float ``(B, C, H, W)`` in [-1, 1].
        autocast_dtype: e.g. ``torch.bfloat16`` to sample under CPU/GPU autocast (faster on CPU).

    Returns:
        ``{"accuracy": float in [0, 1], "per_class": list of K floats, "n": int, "nfe": int,
        "seconds_per_image": float, ...settings}``.

    Raises:
        ValueError: ``num_samples`` < 2, or an unconditional pipeline.
    """
    if getattr(pipe, "num_classes", None) is None:
        raise ValueError("conditional accuracy needs a class-conditional pipeline")
    r = evaluate(pipe, metrics=("accuracy",), num_samples=num_samples, batch_size=batch_size,
                 sampler=sampler, num_inference_steps=num_inference_steps,
                 guidance_scale=guidance_scale, seed=seed, classifier=classifier, cache_dir=None,
                 autocast_dtype=autocast_dtype, progress=False,
                 shard_size=max(batch_size, 500))
    return {
        "accuracy": r["accuracy"], "per_class": r["per_class_accuracy"], "n": r["n"],
        "nfe": r["nfe"], "sampler": r["sampler"], "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale, "seconds_per_image": r["seconds_per_image"],
    }
