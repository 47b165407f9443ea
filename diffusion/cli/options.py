"""Every flag that more than one command takes, defined once, beside the helper that reads it.

A command builds its parser from these ``add_*`` functions in its ``--help`` order, passing at
most its own ``help`` wording (and a run size's default); name, type and action stay here. Flags
of one command live in its module, as does ``--out``, each command's own product. Readers turn a
bad value into ``SystemExit("error: ...")``.

Example::

    >>> p = argparse.ArgumentParser(); add_sampler(p); add_steps(p)
    >>> p.parse_args(["--steps", "5"]).steps
    5
"""

from __future__ import annotations

import argparse
import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from samplers.checks import check_int

PROMPTS_HELP = ("text-to-image models: the prompts per class; 'held-out' (Fashion-MNIST "
                "paraphrases never trained on), 'training' (the training captions) or a JSON file "
                "holding one list of prompts per class; image i gets class i %% K's prompts in "
                "turn and is scored against that class")


@contextmanager
def exit_on(*errors: type, prefix: str = "") -> Iterator[None]:
    """Re-raise ``errors`` from the block as ``SystemExit("error: {prefix}{e}")``: a user error
    the shell prints as one line, not a traceback."""
    try:
        yield
    except errors as e:
        raise SystemExit(f"error: {prefix}{e}") from e


def check_at_least(**lows: tuple) -> None:
    """``SystemExit("error: --flag must be >= low, got value")`` for the first ``name=(value,
    low)`` that is not an int >= low (``name`` is the flag's dest: ``batch_size``)."""
    for name, (value, low) in lows.items():
        try:
            check_int(name, value, low=low)
        except ValueError as e:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= {low}, "
                             f"got {value!r}") from e


def int_list(text: str) -> list[int]:
    """argparse type of a comma list of ints >= 1: ``"5,10,20"`` -> ``[5, 10, 20]``; a bad item
    is an ``argparse.ArgumentTypeError`` naming it (argparse adds the flag)."""
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} in {text!r} is not an integer (give a comma list such as 5,10,20)")
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} in {text!r} must be >= 1")
        values.append(value)
    return values


def sampler_steps(text: str) -> tuple:
    """argparse type of ``SAMPLER:STEPS`` (``STEPS`` default 250): ``"ddpm:250"`` -> ``("ddpm",
    250)``."""
    name, _, n = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: give SAMPLER:STEPS, e.g. ddpm:250")
    try:
        (steps,) = int_list(n or "250")
    except (argparse.ArgumentTypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: STEPS {n!r} is not an integer >= 1 (give "
                                         f"SAMPLER:STEPS, e.g. ddpm:250)")
    return name, steps


# --- the model and where it runs ----------------------------------------------------------------
def add_dataset_root(p: argparse.ArgumentParser, help: str = "folder of the dataset files") -> None:
    p.add_argument("--dataset-root", default=None, help=help)


def add_classifier(p: argparse.ArgumentParser,
                   help: str = "a classifier folder trained with `python -m training` (objective "
                               "classifier) whose features and predictions score the images, "
                               "instead of the shipped Fashion-MNIST one; required with --dataset "
                               "image-folder") -> None:
    p.add_argument("--classifier", default=None, metavar="DIR", help=help)


def add_model(p: argparse.ArgumentParser, help: str = "pipeline folder (save_pretrained); "
                                                      "default: the shipped Fashion-MNIST model"
              ) -> None:
    p.add_argument("--model", default=None, help=help)


def load_model(model, device: str, quiet: bool):
    """``load_pipeline(model or the shipped model)``; a missing or unknown folder exits."""
    from diffusion.paths import default_model_path
    from diffusion.pipelines.loading import load_pipeline

    with exit_on(FileNotFoundError, ValueError):
        return load_pipeline(model or default_model_path(), device=device, quiet=quiet)


def available_devices() -> list[str]:
    """The torch devices this machine has: ``cpu``, then ``cuda:0..`` and ``mps`` if present."""
    import torch

    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())
                       if torch.cuda.is_available()]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def device(text: str) -> str:
    """argparse type of ``--device``: a device this machine has, else an error listing them
    (before any model is loaded, instead of the driver's RuntimeError)."""
    if text == "cpu":
        return text
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; this machine has "
                                         f"{', '.join(available_devices())}")
    have = available_devices()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; "
                                         f"available devices: {', '.join(have)}")
    if dev.type == "cuda" and dev.index is not None and f"cuda:{dev.index}" not in have:
        raise argparse.ArgumentTypeError(f"{text!r}: no such GPU; available devices: "
                                         f"{', '.join(have)}")
    if dev.type == "mps" and "mps" not in have:
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; "
                                         f"available devices: {', '.join(have)}")
    return text


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", type=device,
                   help="torch device: cpu (default), cuda, cuda:N or mps, if this machine has it")


def add_quiet(p: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    p.add_argument("--quiet", action="store_true", help=help)


def add_bf16(p: argparse.ArgumentParser, help: str = "sample under bfloat16 autocast") -> None:
    p.add_argument("--bf16", action="store_true", help=help)


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision {auto,bf16,fp32}`` (the pipelines' ``precision=``) and ``--bf16``, its alias
    for ``--precision bf16``; read them with :func:`precision_from_args`."""
    from diffusion.precision import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="network precision: auto (bf16 where the device computes bf16 natively, "
                        "else fp32), bf16 or fp32 (default: the model's saved default, else auto)")
    add_bf16(p, help="same as --precision bf16")


def precision_from_args(args) -> Optional[str]:
    """``args.precision`` (``--bf16``: ``"bf16"``; ``None`` if neither is given).

    Raises:
        SystemExit: ``--bf16`` with ``--precision`` other than ``bf16``.
    """
    precision = getattr(args, "precision", None)
    if getattr(args, "bf16", False):
        if precision not in (None, "bf16"):
            raise SystemExit(f"error: --bf16 means --precision bf16; got --precision {precision} too")
        precision = "bf16"
    return precision


# --- sampling -----------------------------------------------------------------------------------
def add_sampler(p: argparse.ArgumentParser,
                help: str = "sampler name (default: the model's own scheduler)") -> None:
    p.add_argument("--sampler", default=None, help=help)


def check_sampler_name(name) -> None:
    """``--sampler`` unset or a registered name, else a CLI error listing the names."""
    from samplers import list_samplers

    if name is not None and name not in list_samplers(distilled=None):
        raise SystemExit(f"error: unknown sampler {name!r}; choose one of "
                         f"{list_samplers(distilled=None)}")


def add_samplers(p: argparse.ArgumentParser, default, help: str) -> None:
    """``--samplers a,b,c``: the samplers of a grid (sweep, compare)."""
    p.add_argument("--samplers", default=default, help=help)


#: ``--steps`` left unset on a diffusion model (the shipped model's setting).
DEFAULT_STEPS = 20


def add_steps(p: argparse.ArgumentParser) -> None:
    """``--steps N``: the step count of one run (generate, synthesize, evaluate); unset is
    ``None`` so that a family without steps can refuse it (:func:`refuse_unused`)."""
    p.add_argument("--steps", type=int, default=None,
                   help=f"diffusion models: num_inference_steps (default {DEFAULT_STEPS})")


def add_steps_list(p, help: str) -> None:
    """``--steps N,M,...``: the step counts of a grid (sweep, compare); ``p`` may be a group."""
    p.add_argument("--steps", type=int_list, default=None, help=help)


def add_guidance_scale(p: argparse.ArgumentParser, help: str = "guidance scale (default: 2.0 "
                       "for diffusion; the saved setting for AR)") -> None:
    p.add_argument("--guidance-scale", type=float, default=None, help=help)


def add_guidance(p: argparse.ArgumentParser) -> None:
    """``--guidance NAME`` and ``--guidance-option KEY=VALUE`` (repeatable): the guidance method of
    diffusion models (:mod:`samplers.guidance`)."""
    p.add_argument("--guidance", default=None, metavar="NAME",
                   help="diffusion models: guidance method (cfg, interval, apg, cfg-zero-star, "
                        "cfg++, autoguidance; see docs/samplers.md); default: the model's saved "
                        "one, else cfg")
    p.add_argument("--guidance-option", action="append", default=None, metavar="KEY=VALUE",
                   help="an option of --guidance, repeatable (e.g. sigma_lo=0.3, eta=0, "
                        "guide_model=DIR for autoguidance)")


def _option_value(text: str):
    """``"0.3"`` -> 0.3, ``"2"`` -> 2, ``"true"`` -> True, anything else stays a str (a path)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def guidance_from_args(args):
    """The method of ``--guidance`` / ``--guidance-option`` (``None`` when neither is given), built
    by :func:`samplers.build_guidance`; a bad name, option or value exits naming what is allowed."""
    from samplers import build_guidance

    name, given = getattr(args, "guidance", None), getattr(args, "guidance_option", None) or []
    if name is None:
        if given:
            raise SystemExit("error: --guidance-option needs --guidance NAME")
        return None
    options = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --guidance-option {item!r}: give KEY=VALUE, e.g. sigma_lo=0.3")
        options[key.strip()] = _option_value(value.strip())
    with exit_on(ValueError, TypeError, prefix="--guidance: "):
        return build_guidance(name, **options)


def default_guidance(pipe, args) -> None:
    """``--guidance-scale`` (and a one-run ``--steps``) left unset: 2.0 (and 20) for diffusion
    pipelines (the shipped model's setting), 1.0 (and 4) with a consistency sampler (a distilled
    student: its guidance is in its weights); others keep ``None`` (an AR pipeline then uses its
    saved decoding setting). First refuses the family flags ``pipe`` has no use for."""
    refuse_unused(pipe, args)
    if "num_inference_steps" in inspect.signature(pipe.__call__).parameters:
        from samplers import is_distilled_sampler
        from samplers.diffusion import DISTILLED_DEFAULT_STEPS

        # a distilled student's consistency sampler: guidance is in the weights; 1-4 steps
        distilled = is_distilled_sampler(getattr(args, "sampler", None) or pipe.scheduler)
        if args.guidance_scale is None:  # cfg++ takes lambda in [0, 1]: its own default
            method = guidance_from_args(args)
            args.guidance_scale = (1.0 if distilled else 2.0) if method is None \
                else method.default_guidance_scale
        if getattr(args, "steps", 0) is None and not hasattr(args, "samplers"):  # one run
            args.steps = DISTILLED_DEFAULT_STEPS if distilled else DEFAULT_STEPS


#: Flag -> the pipeline ``__call__`` argument it sets: a flag is refused for a pipeline whose
#: call does not take that argument (a GAN has no sampler; a diffusion model no top-k).
FAMILY_FLAGS = {"--sampler": "sampler", "--steps": "num_inference_steps",
                "--guidance-scale": "guidance_scale", "--guidance": "guidance",
                "--guidance-option": "guidance", "--eta": "eta",
                "--truncation": "truncation", "--temperature": "temperature", "--top-k": "top_k",
                "--top-p": "top_p", "--num-beams": "num_beams", "--no-kv-cache": "use_cache",
                "--nfe": "num_inference_steps"}


def family_of(pipe_class) -> str:
    """The family a pipeline class belongs to: its module's name (``diffusion.pipelines.gan``
    -> ``gan``)."""
    return pipe_class.__module__.rsplit(".", 1)[-1]


def _families_taking(argument: str) -> list[str]:
    import importlib

    from diffusion.pipelines.loading import PIPELINE_CLASSES

    found = []
    for target in PIPELINE_CLASSES.values():
        module, _, name = target.partition(":")
        cls = getattr(importlib.import_module(module), name)
        if argument in inspect.signature(cls.__call__).parameters and family_of(cls) not in found:
            found.append(family_of(cls))
    return found


def refuse_unused(pipe, args) -> None:
    """``SystemExit("error: --flag: only X pipelines take this; this is a Y model (Class)")`` for
    the first flag of :data:`FAMILY_FLAGS` given (not ``None``/``False``) that ``pipe``'s call
    does not take."""
    accepted = set(inspect.signature(pipe.__call__).parameters)
    for flag, argument in FAMILY_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None or value is False or argument in accepted:
            continue
        takers = " and ".join(_families_taking(argument)) or "no"
        raise SystemExit(f"error: {flag}: only {takers} pipelines take this; this is a "
                         f"{family_of(type(pipe))} model ({type(pipe).__name__})")


def add_seed(p: argparse.ArgumentParser,
             help: str = "image i uses seed+i, class i %% K (default 0)") -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def add_batch_size(p: argparse.ArgumentParser, default: int, help: str = None) -> None:
    p.add_argument("--batch-size", type=int, default=default,
                   help=help or f"images per pipeline call (default {default})")


def add_run(p: argparse.ArgumentParser, batch_size: int) -> None:
    """Guidance, seeds and batch size of a run of images (evaluate, sweep, compare, synthesize)."""
    add_guidance_scale(p)
    add_guidance(p)
    add_seed(p)
    add_batch_size(p, batch_size)


def add_per_class(p: argparse.ArgumentParser, *aliases: str, help: str, **default_or_required):
    """``--per-class N`` (generate: also ``--per-prompt``, default 10; synthesize: required)."""
    p.add_argument("--per-class", *aliases, dest="per_class", type=int, help=help,
                   **default_or_required)


# --- prompts and token decoding -----------------------------------------------------------------
def add_prompt_sets(p: argparse.ArgumentParser, help: str = PROMPTS_HELP) -> None:
    p.add_argument("--prompts", default=None, metavar="SET", help=help)


def class_prompts(spec):
    """``--prompts``: None, a named Fashion-MNIST caption set, or a JSON file of K prompt lists."""
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


def class_prompts_for(pipe, spec):
    """``--prompts`` checked against the model: prompt sets need a text-to-image model, and a
    text-only model needs them (one line each, naming what the model takes); then
    :func:`class_prompts`."""
    takes_text = getattr(pipe, "takes_text", False)
    if spec is not None and not takes_text:
        takes = "class labels" if pipe.num_classes is not None else "no condition (unconditional)"
        raise SystemExit(f"error: --prompts needs a text-to-image model; this one takes {takes}")
    if takes_text and pipe.num_classes is None and spec is None:
        raise SystemExit("error: a text-to-image model needs prompts: pass --prompts "
                         "held-out|training (Fashion-MNIST caption sets) or a JSON file with one "
                         "list of prompts per class")
    return class_prompts(spec)


def add_decoding(p: argparse.ArgumentParser) -> None:
    """Options of autoregressive (VQ-VAE + prior) pipelines; unset ones take the model's saved
    decoding setting."""
    p.add_argument("--temperature", type=float, default=None,
                   help="AR pipelines: softmax temperature (0 = greedy; default: the model's)")
    p.add_argument("--top-k", type=int, default=None,
                   help="AR pipelines: keep the k most likely tokens (0 = off; default: the "
                        "model's)")
    p.add_argument("--top-p", type=float, default=None,
                   help="AR pipelines: nucleus threshold in (0, 1] (1 = off; default: the model's)")
    p.add_argument("--num-beams", type=int, default=None,
                   help="AR pipelines: beam search with this many beams (deterministic)")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="AR pipelines: recompute every token each step (same tokens, slower)")


#: ``--temperature`` etc.: the decoding flags that take a value (``--no-kv-cache`` is a switch).
DECODING_VALUES = ("temperature", "top_k", "top_p", "num_beams")


def decoding_options(pipe, args) -> dict:
    """The AR decoding options given on the command line, checked against ``pipe``'s call."""
    refuse_unused(pipe, args)
    given = {k: getattr(args, k) for k in DECODING_VALUES if getattr(args, k) is not None}
    if args.no_kv_cache:
        given["use_cache"] = False
    return given


def add_cas(p: argparse.ArgumentParser, help: str, steps_help: str) -> None:
    """``--cas`` and ``--cas-steps`` (evaluate, compare)."""
    p.add_argument("--cas", action="store_true", help=help)
    p.add_argument("--cas-steps", type=int, default=None, help=steps_help)


# --- scoring (evaluate, sweep, compare) ---------------------------------------------------------
def add_eval(p: argparse.ArgumentParser, model: bool = True) -> None:
    """What to score, against which real images, and how the run is cached and split."""
    if model:
        add_model(p)
    p.add_argument("--metrics", default="fid,kid,precision,recall,is,accuracy,speckle",
                   help="comma-separated subset of fid,kid,precision,recall,is,accuracy,speckle")
    p.add_argument("--num-samples", type=int, default=2000,
                   help="images to generate (default 2000)")
    add_run(p, batch_size=250)
    p.add_argument("--features", default="classifier", choices=["classifier", "inception"],
                   help="feature network for FID/KID/precision/recall (default: the shipped "
                        "Fashion-MNIST classifier's 128-d penultimate features)")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 FID weights file (weights-inception-2015-12-05-"
                        "6726825d.pth) for --features inception; never downloaded")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="reference dataset: fashion-mnist (default) or image-folder (your class "
                        "sub-folders under --dataset-root, scored with --classifier)")
    add_dataset_root(p)
    add_classifier(p)
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
    add_bf16(p)
    add_device(p)
    add_quiet(p)
    add_prompt_sets(p)
    add_decoding(p)


def check_run_sizes(args) -> None:
    check_at_least(num_samples=(args.num_samples, 2), batch_size=(args.batch_size, 1),
                   shard_size=(args.shard_size, 1))
