"""`vidlab bench model fit`: training-step time, clips/s and peak memory of a FiT model.

CPU default: the tiny config. On a GPU, e.g. `vidlab bench model fit --model fit-base-p16-224 --frames 4
--batch-size 32 --device cuda --precision bf16` (the issue's ViT-B/16, 4 frames, 224 px setting).
"""

from __future__ import annotations

import argparse

from vidlab.cli._group import at_least


def register(subparsers) -> None:
    parser = subparsers.add_parser("fit", help="Frozen in Time training-step speed and memory", description=__doc__)
    parser.add_argument("--model", default="fit-tiny", help="registered model name or YAML (default: fit-tiny)")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--frames", type=at_least(1), default=4)
    parser.add_argument("--steps", type=at_least(1), default=5, help="timed steps (default: 5)")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="32", choices=("32", "bf16", "fp16"))
    parser.add_argument(
        "--grad-checkpointing", choices=("off", "on", "both"), default="both",
        help="activation checkpointing of the vision blocks; 'both' measures the two side by side",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.bench.model import render, run_fit_benchmark

    modes = {"off": [False], "on": [True], "both": [False, True]}[args.grad_checkpointing]
    results = [
        run_fit_benchmark(
            model=args.model, batch_size=args.batch_size, num_frames=args.frames, steps=args.steps,
            warmup=args.warmup, device=args.device, precision=args.precision, grad_checkpointing=ckpt,
        )
        for ckpt in modes
    ]
    print(render(results), end="")
    return 0
