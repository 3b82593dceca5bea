"""`vidlab eval CONFIG|RUN|CHECKPOINT [KEY=VALUE ...]`: the recipe's evaluation protocol, printed with its numbers.

TARGET is a training config (weights from eval.checkpoint=PATH), a run folder (its final weights), a
stage's model folder or a .ckpt inside a run. Overrides change the protocol, e.g. eval.split=val,
eval.sliding_window_stride=4, eval.offload_embeddings=true.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import add_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a trained model (retrieval, ...)", description=__doc__)
    parser.add_argument("target", type=Path, help="config YAML, run folder, model folder or .ckpt")
    add_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.engine.runner import evaluate

    evaluate(args.target, args.overrides)
    return 0
