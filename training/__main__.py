"""``python -m training --config FILE [section.key=value ...]`` (also under ``accelerate launch -m``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a model from a YAML config with key=value overrides. Works the same "
                    "under `accelerate launch -m training ...` and `torchrun -m training ...`.",
        epilog="example: python -m training --config training/configs/fashion_mnist_quick.yaml "
               "train.max_steps=200 train.output_dir=runs/try")
    parser.add_argument("--config", help="YAML config file (see training/configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=500")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.config import load_config, to_yaml

    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    from training.loop import train

    out = train(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
