"""``python -m training --config FILE [section.key=value ...]`` (also under ``accelerate launch -m``),
and ``python -m training posthoc-ema --run DIR ...`` (:mod:`training.posthoc_export`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["posthoc-ema"]:
        from training.posthoc_export import main as posthoc_main

        return posthoc_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a model from a YAML config with key=value overrides. Works the same "
                    "under `accelerate launch -m training ...` and `torchrun -m training ...`.",
        epilog="example: python -m training --config training/configs/fashion_mnist_quick.yaml "
               "train.max_steps=200 train.output_dir=runs/try. After a run with "
               "train.posthoc_ema=true: python -m training posthoc-ema --run DIR --sigma-rel 0.07 "
               "(see python -m training posthoc-ema --help)")
    parser.add_argument("--config", help="YAML config file (see training/configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of a config or start-up error (also "
                             "TRAINING_DEBUG=1)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=500")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.config import load_config, to_yaml

    debug = args.debug or os.environ.get("TRAINING_DEBUG", "") not in ("", "0")
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        if debug:
            raise
        return _user_error(e)
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    from training.loop import train

    if os.environ.get("RANK", "0") == "0":  # what is about to happen, before minutes of work
        source = args.config or "built-in defaults (no --config)"
        print(f"training {cfg.train.objective} from {source}: {cfg.train.max_steps} steps, "
              f"output_dir {cfg.train.output_dir}", flush=True)
    try:
        out = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        if debug:
            raise
        return _user_error(e)
    if os.environ.get("RANK", "0") == "0":
        print(f"exported to {out}")
    return 0


def _user_error(e: Exception) -> int:
    """One ``error: ...`` line on stderr and exit status 2 (argparse's), not a traceback."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]  # omegaconf adds key details
    print(f"python -m training: error: {first} (--debug shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
