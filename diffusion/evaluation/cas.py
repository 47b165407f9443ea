"""Classification Accuracy Score (CAS; Ravuri & Vinyals 2019, "Classification Accuracy Score for
Conditional Generative Models", NeurIPS, arXiv:1905.10887).

Train a classifier on N generated ``(image, label)`` pairs only, test it on the real test split, and
report its accuracy beside that of the same classifier trained on N real training images. A
generator that captures every class's whole distribution scores a ratio near 1; one that draws a
few convincing modes per class (high conditional accuracy, low diversity) scores well below 1.

The classifier is the architecture and recipe of the shipped evaluation classifier
(``training/configs/fashion_mnist_classifier.yaml``: 2,500 steps at batch 128, bf16 autocast; 440 s
with one torch thread on a shared 2-core machine when it was shipped), trained through the
project's one loop (:func:`training.loop.train` with an in-memory dataset). Both classifiers of a
CAS start from the same seed, take the same number of steps on the same number of images with the
same class counts, and are tested in eval mode in fp32 on the same real test images, so the
training data is the only difference between them.

Example::

    >>> from diffusion import DiffusionImagePipeline, default_model_path
    >>> from diffusion.evaluation.sampling import generate_samples
    >>> from diffusion.evaluation.cas import classification_accuracy_score
    >>> pipe = DiffusionImagePipeline.from_pretrained(default_model_path())         # doctest: +SKIP
    >>> run = generate_samples(pipe, 10_000, call_kwargs=dict(num_inference_steps=20),
    ...                        cache_dir="runs/samples")                             # doctest: +SKIP
    >>> score = classification_accuracy_score(run.images, run.labels)               # doctest: +SKIP
    >>> print(f"CAS {score['cas']:.3f} vs real {score['real_accuracy']:.3f}")       # doctest: +SKIP
"""

from __future__ import annotations

import random
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from diffusion.evaluation.features import ArrayLike, to_unit_range
from samplers.checks import check_int

PathLike = Union[str, Path]


def default_config_path() -> Path:
    """The shipped evaluation classifier's training config, found beside the installed
    ``training`` package (not relative to the working directory)."""
    import training  # upward edge: CAS trains a classifier with training's loop and config

    return Path(training.__file__).resolve().parent / "configs" / "fashion_mnist_classifier.yaml"


def _load_classifier_config(config: Optional[PathLike], overrides: Sequence[str],
                            max_steps: Optional[int], seed: int):
    """Config file <- CAS defaults (no mid-run evaluations or checkpoints: they do not change the
    trained weights, only cost time) <- ``overrides`` <- ``max_steps`` / ``seed``. Training always
    starts fresh (``train.resume=null``) on all the images given (``data.subset=null``)."""
    from training.config import load_config  # upward edge: CAS trains with the training loop

    max_steps = check_int("max_steps", max_steps, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    path = Path(config) if config is not None else default_config_path()
    cfg = load_config(path, ["train.sample_every=0", "train.checkpoint_every=0", *overrides,
                             *([f"train.max_steps={max_steps}"] if max_steps is not None else []),
                             f"train.seed={seed}"])
    if cfg.train.objective != "classifier":
        raise ValueError(f"{path} trains objective {cfg.train.objective!r}; CAS needs a "
                         f"'classifier' config (default: {default_config_path()})")
    return replace(cfg, train=replace(cfg.train, resume=None),
                   data=replace(cfg.data, subset=None)), path


def _check_shape(images: torch.Tensor, cfg, what: str, min_count: int = 1) -> None:
    """``images`` must be ``(N, data.channels, data.image_size, data.image_size)``, N >= min_count."""
    d = cfg.data
    if tuple(images.shape[1:]) != (d.channels, d.image_size, d.image_size):
        raise ValueError(f"{what} are {tuple(images.shape)}; the classifier config needs "
                         f"(N, {d.channels}, {d.image_size}, {d.image_size})")
    if len(images) < min_count:
        raise ValueError(f"{len(images)} {what} given; need at least {min_count}"
                         + (" (one batch, train.batch_size)" if min_count > 1 else ""))


def _model_range(images: ArrayLike, input_range: str, cfg) -> torch.Tensor:
    """float32 ``(N, C, H, W)`` in [-1, 1] (what the classifier sees), checked against ``cfg``."""
    x = to_unit_range(images, input_range) * 2 - 1  # k/255 * 2 - 1 == k/127.5 - 1 exactly
    _check_shape(x, cfg, "images", cfg.train.batch_size)
    return x.cpu()


def _checked_labels(labels, n: Optional[int], num_classes: int, what: str = "labels") -> torch.Tensor:
    """int64 ``(n,)`` (any length if ``n`` is None) in ``[0, num_classes)``, or ValueError."""
    if labels is None:
        raise ValueError("CAS needs class labels (an unconditional pipeline's samples have none)")
    y = torch.from_numpy(labels) if isinstance(labels, np.ndarray) else labels
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(labels).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what} must be integer class ids (int64), got dtype {y.dtype}")
    if y.ndim != 1 or len(y) < 1 or (n is not None and len(y) != n):
        raise ValueError(f"{what} must have shape ({n if n is not None else 'N'},) (one per image), "
                         f"got {tuple(y.shape)}")
    y = y.to(torch.int64).cpu()
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"{what} must lie in [0, {num_classes}) for {num_classes} classes, got min "
                         f"{int(y.min())}, max {int(y.max())}")
    return y


def _real_split(cfg, split: str):
    from diffusion.data import load_dataset

    d = cfg.data
    return load_dataset(d.name, split=split, root=d.root, image_size=d.image_size, channels=d.channels)


def _checked_test(test, cfg):
    """The test set: ``test`` or the real ``cfg.data.eval_split`` (Fashion-MNIST: 10,000 images)."""
    test = _real_split(cfg, cfg.data.eval_split) if test is None else test
    _check_shape(test.images, cfg, "test images")
    return test


@contextmanager
def _caller_state_kept():
    """The loop reseeds Python's, NumPy's and torch's global RNGs (accelerate ``set_seed``) and sets
    torch's thread count; give the caller theirs back afterwards."""
    py_state, np_state, threads = random.getstate(), np.random.get_state(), torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_num_threads(threads)


@contextmanager
def _no_training_bar():
    """The loop's tqdm bar disabled (``training.loop.train`` has no progress flag of its own)."""

    import training.loop as loop  # upward edge: CAS trains a classifier with the one loop

    bar = loop.tqdm

    def hidden(*args, **kwargs):  # the loop passes disable=... itself: override it
        return bar(*args, **{**kwargs, "disable": True})

    loop.tqdm = hidden
    try:
        yield
    finally:
        loop.tqdm = bar


def planned_steps(max_steps: Optional[int] = None) -> int:
    """The optimizer steps each CAS training runs: ``max_steps``, else the config's (2,500)."""
    return _load_classifier_config(None, (), max_steps, 0)[0].train.max_steps


def _fit_and_test(cfg, dataset, test, output_dir: Optional[PathLike], device,
                  progress: bool = True) -> dict:
    """Train on ``dataset`` with :func:`training.loop.train`, then test the exported classifier."""
    from diffusion.models.classifier import ImageClassifier
    from training.loop import train  # upward edge: CAS trains a classifier with the one loop

    keep = output_dir is not None
    with nullcontext(output_dir) if keep else tempfile.TemporaryDirectory(prefix="cas-") as out:
        run_cfg = replace(cfg, train=replace(cfg.train, output_dir=str(out)))
        with _caller_state_kept(), nullcontext() if progress else _no_training_bar():
            final = train(run_cfg, dataset=dataset)
        classifier = ImageClassifier.from_pretrained(final)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pred = classifier.to(device).predict(test.images)  # eval mode, fp32
    k = len(dataset.class_names)
    correct = (pred == test.labels).to(torch.float64)
    hits = torch.bincount(test.labels, weights=correct, minlength=k)[:k]
    counts = torch.bincount(test.labels, minlength=k)[:k]
    return {"accuracy": correct.mean().item(),
            "per_class": [h / c if c else float("nan") for h, c in zip(hits.tolist(), counts.tolist())],
            "classifier_dir": str(final) if keep else None}


def matched_real_subset(real, labels: torch.Tensor, *, n: Optional[int] = None, seed: int = 0):
    """A seeded subset of ``real`` with the class proportions of ``labels``.

    With ``n=None`` it has exactly ``labels``' class counts (class-balanced when ``labels`` cycle
    through the classes, as the sample cache's do); otherwise ``n`` images split by largest
    remainders of ``n * count_c / len(labels)``. Images are taken in the order of one
    ``torch.randperm(len(real))`` drawn from ``seed``, so the same arguments give the same subset
    in the same order.

    Args:
        real: a :class:`diffusion.data.datasets.TensorImageDataset` (e.g. the Fashion-MNIST train split).
        labels: int64 ``(N,)`` class ids in ``[0, real.num_classes)``.
        n: subset size (default ``N``).
        seed: seed of the permutation.

    Returns:
        a ``TensorImageDataset`` of ``n`` images (float ``(n, C, H, W)`` in [-1, 1]).

    Raises:
        ValueError: ``n`` outside ``[1, len(real)]``, or a class with fewer real images than it
            needs.

    Example::

        >>> from diffusion.data.datasets import fashion_mnist
        >>> train = fashion_mnist("train")                                          # doctest: +SKIP
        >>> sub = matched_real_subset(train, torch.arange(1000) % 10, seed=0)       # doctest: +SKIP
        >>> torch.bincount(sub.labels).tolist()                                     # doctest: +SKIP
        [100, 100, 100, 100, 100, 100, 100, 100, 100, 100]
    """
    from diffusion.data.datasets import TensorImageDataset

    k = real.num_classes
    labels = _checked_labels(labels, None, k)
    counts = torch.bincount(labels, minlength=k)
    n = len(labels) if n is None else n
    if not 1 <= n <= len(real):
        raise ValueError(f"n must be in [1, {len(real)}] (the real images available), got {n}")
    quota = counts.to(torch.float64) * n / len(labels)
    target = quota.floor().to(torch.int64)
    order = torch.argsort(quota - target, descending=True, stable=True)  # largest remainders first
    target[order[: n - int(target.sum())]] += 1
    available = torch.bincount(real.labels, minlength=k)
    short = [(c, int(t), int(a)) for c, (t, a) in enumerate(zip(target, available)) if t > a]
    if short:
        raise ValueError(f"not enough real images per class for n={n}: (class, needed, available) "
                         f"{short}")
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    y = real.labels[perm]
    rank = torch.nn.functional.one_hot(y, k).cumsum(0).gather(1, y[:, None])[:, 0] - 1  # within class
    idx = perm[rank < target[y]]
    return TensorImageDataset(real.images[idx], real.labels[idx], real.class_names)


def train_classifier(images: ArrayLike, labels, *, input_range: str = "uint8",
                     config: Optional[PathLike] = None, overrides: Sequence[str] = (),
                     max_steps: Optional[int] = None, seed: int = 0,
                     output_dir: Optional[PathLike] = None, test=None,
                     class_names: Optional[Sequence[str]] = None, device=None) -> dict:
    """Train the evaluation classifier on ``images`` only; return its accuracy on the real test split.

    Args:
        images: ``(N, C, H, W)``: uint8 in [0, 255] (what the sample cache stores) with
            ``input_range="uint8"``, or float in [0, 1] / [-1, 1] with ``"0,1"`` / ``"-1,1"``.
            Tensor or numpy array. ``N`` must be at least one batch (``train.batch_size``).
        labels: int64 ``(N,)`` class ids in ``[0, K)`` (any integer dtype is accepted).
        input_range: ``"uint8"``, ``"0,1"`` or ``"-1,1"``; see
            :func:`diffusion.evaluation.features.to_unit_range`.
        config: a classifier training config (YAML); default :func:`default_config_path`.
        overrides: ``"section.key=value"`` strings applied after the config (e.g. smaller
            ``classifier.channels`` in tests).
        max_steps: optimizer steps; ``None``: the config's (2,500 by default).
        seed: training seed (initial weights, batch order, augmentation, dropout).
        output_dir: where the run (checkpoint, TensorBoard log, exported classifier under
            ``final/``) is kept; default a temporary folder, deleted afterwards.
        test: a :class:`diffusion.data.datasets.TensorImageDataset` to test on; default the real
            ``data.eval_split`` of the config's dataset (Fashion-MNIST test, 10,000 images).
        class_names: names of the ``K`` classes; default ``test.class_names``.
        device: where the trained classifier is tested; default CUDA if available, else CPU.

    Returns:
        ``{"accuracy": float in [0, 1], "per_class": K floats (NaN for a class absent from the
        test set), "class_names", "n_train": N, "n_test", "max_steps", "seed", "config": path,
        "classifier_dir": exported classifier folder or None, "seconds": wall time}``.

    Raises:
        ValueError: bad ``input_range``, dtype, value range, shape (not ``(N, data.channels,
            data.image_size, data.image_size)``), fewer images than one batch, labels not int
            ``(N,)`` in ``[0, K)``, ``max_steps`` < 1, or a config that is not a classifier's -
            all before any training.
        TypeError: ``images`` or ``labels`` neither tensor nor numpy array.

    The loop keeps accelerate's process-wide state: all trainings of one process must use the same
    ``train.mixed_precision`` (the config's is bf16).

    Example::

        >>> from diffusion.data.datasets import fashion_mnist
        >>> real = fashion_mnist("train").subset(1000, seed=0)                       # doctest: +SKIP
        >>> uint8 = ((real.images + 1) * 127.5).round().to(torch.uint8)            # doctest: +SKIP
        >>> train_classifier(uint8, real.labels, max_steps=200)["accuracy"]         # doctest: +SKIP
        0.78
    """
    from diffusion.data.datasets import TensorImageDataset

    start = time.perf_counter()
    cfg, path = _load_classifier_config(config, overrides, max_steps, seed)
    x = _model_range(images, input_range, cfg)
    test = _checked_test(test, cfg)
    class_names = list(test.class_names if class_names is None else class_names)
    y = _checked_labels(labels, len(x), len(class_names))
    _checked_labels(test.labels, len(test), len(class_names), "test labels")
    result = _fit_and_test(cfg, TensorImageDataset(x, y, class_names), test, output_dir, device)
    return {"accuracy": result["accuracy"], "per_class": result["per_class"],
            "class_names": class_names, "n_train": len(x), "n_test": len(test),
            "max_steps": cfg.train.max_steps, "seed": seed, "config": str(path),
            "classifier_dir": result["classifier_dir"], "seconds": time.perf_counter() - start}


def classification_accuracy_score(synthetic_images: ArrayLike, synthetic_labels, *,
                                  input_range: str = "uint8", num_real: Optional[int] = None,
                                  seed: int = 0, max_steps: Optional[int] = None,
                                  config: Optional[PathLike] = None, overrides: Sequence[str] = (),
                                  real=None, test=None, output_dir: Optional[PathLike] = None,
                                  device=None, progress: bool = True) -> dict:
    """CAS: accuracy on the real test split of a classifier trained on synthetic images only,
    beside the same classifier trained on as many real images (Ravuri & Vinyals 2019, Sec. 3).

    Two trainings of :func:`train_classifier`'s classifier, same ``seed``, ``max_steps`` and
    config: one on the ``N`` synthetic images, one on :func:`matched_real_subset` of the real
    training split (the synthetic set's class counts, ``num_real`` images, drawn with ``seed``).

    Args:
        synthetic_images, synthetic_labels, input_range: as in :func:`train_classifier` (uint8
            ``(N, C, H, W)`` and int64 ``(N,)`` from the sample cache by default).
        num_real: real training images (default ``N``); e.g. 60,000 for the full-data baseline.
        seed: seed of both trainings and of the real subset.
        max_steps: steps of each training; ``None``: the config's (2,500, ~440 s each on 2 CPU
            cores).
        config, overrides, test, device: as in :func:`train_classifier`.
        real: the real training set (default: the config dataset's ``data.split``, Fashion-MNIST
            train, 60,000 images).
        output_dir: keep the runs in ``output_dir/synthetic`` and ``output_dir/real``.
        progress: show the training loop's progress bar.

    Returns:
        ``{"cas": synthetic-trained accuracy, "real_accuracy": real-trained accuracy, "ratio":
        cas / real_accuracy, "n": N, "n_real", "n_test", "per_class": synthetic-trained per-class
        accuracies, "real_per_class", "class_names", "max_steps", "seed", "config": path,
        "seconds": wall time of both trainings and tests}``.

    Raises:
        ValueError: as :func:`train_classifier`, or a class with fewer real images than the
            subset needs - all before any training.

    Example::

        >>> from diffusion.evaluation.cas import classification_accuracy_score
        >>> # run = diffusion.evaluation.generate_samples(pipe, 10_000, ...): uint8 images + labels
        >>> score = classification_accuracy_score(run.images, run.labels)            # doctest: +SKIP
        >>> score["cas"], score["real_accuracy"], score["ratio"]                     # doctest: +SKIP
    """
    from diffusion.data.datasets import TensorImageDataset

    start = time.perf_counter()
    cfg, path = _load_classifier_config(config, overrides, max_steps, seed)
    x = _model_range(synthetic_images, input_range, cfg)
    test = _checked_test(test, cfg)
    real = _real_split(cfg, cfg.data.split) if real is None else real
    class_names = list(real.class_names)
    y = _checked_labels(synthetic_labels, len(x), len(class_names))
    _checked_labels(test.labels, len(test), len(class_names), "test labels")
    real_subset = matched_real_subset(real, y, n=num_real, seed=seed)
    _check_shape(real_subset.images, cfg, "real images", cfg.train.batch_size)
    runs = {}
    for name, dataset in (("synthetic", TensorImageDataset(x, y, class_names)), ("real", real_subset)):
        out = None if output_dir is None else Path(output_dir) / name
        runs[name] = _fit_and_test(cfg, dataset, test, out, device, progress)
    cas, real_accuracy = runs["synthetic"]["accuracy"], runs["real"]["accuracy"]
    return {"cas": cas, "real_accuracy": real_accuracy,
            "ratio": cas / real_accuracy if real_accuracy else float("nan"),
            "n": len(x), "n_real": len(real_subset), "n_test": len(test),
            "per_class": runs["synthetic"]["per_class"], "real_per_class": runs["real"]["per_class"],
            "class_names": class_names, "max_steps": cfg.train.max_steps, "seed": seed,
            "config": str(path), "seconds": time.perf_counter() - start}


def pipeline_cas(pipe, num_samples: int, *, call_kwargs: Optional[dict] = None, seed: int = 0,
                 batch_size: int = 250, cache_dir: Optional[PathLike] = "default",
                 autocast_dtype: Optional[torch.dtype] = None, shard_size: int = 500,
                 class_prompts=None, max_steps: Optional[int] = None,
                 progress: bool = True) -> dict:
    """:func:`classification_accuracy_score` of ``num_samples`` images of ``pipe``, drawn as
    :func:`~diffusion.evaluation.evaluate` draws them (image ``i``: class ``i % K``, seed
    ``seed + i``; ``call_kwargs`` as ``evaluate`` passes them), so the images of an evaluation
    with the same settings come from the sample cache (``cache_dir/samples``; ``"default"``: the
    evaluation cache, ``None``: no cache).

    Returns:
        The dict of :func:`classification_accuracy_score` (``cas``, ``real_accuracy``,
        ``ratio``, ...).

    Raises:
        ValueError: an unconditional pipeline (CAS needs labels), or what generation raises.
    """
    from diffusion.evaluation.evaluator import default_cache_dir
    from diffusion.evaluation.sampling import generate_samples

    if cache_dir == "default":
        cache_dir = default_cache_dir()
    run = generate_samples(pipe, num_samples, seed=seed, batch_size=batch_size,
                           call_kwargs=call_kwargs or {},
                           cache_dir=None if cache_dir is None else Path(cache_dir) / "samples",
                           autocast_dtype=autocast_dtype, progress=progress,
                           shard_size=shard_size, class_prompts=class_prompts)
    if run.labels is None:
        raise ValueError("CAS needs class labels: the pipeline is unconditional")
    return classification_accuracy_score(run.images, run.labels, seed=seed, max_steps=max_steps,
                                         progress=progress)
