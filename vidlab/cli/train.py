"""`vidlab train CONFIG [KEY=VALUE ...]`: train a recipe's stages on Lightning (see docs/training.md).

Runs go to OUTPUT_DIR/NAME/TIMESTAMP with the resolved config; `resume=auto` (or a .ckpt path) goes on
from the newest checkpoint, mid-epoch included. Under torchrun or SLURM every process runs this command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import add_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model from a config (FiT, ...)", description=__doc__)
    parser.add_argument("config", type=Path, help="training config YAML, e.g. configs/fit/shapes_tiny.yaml")
    add_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.engine.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # config errors before Lightning is even imported
    from vidlab.engine.runner import train

    train(cfg)
    return 0
