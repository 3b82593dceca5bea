"""`vidlab bench model evl`: training-step time, clips/s, trainable parameters and peak memory of EVL with a
frozen and with a fine-tuned CLIP backbone, side by side in one run.

CPU default: the tiny config (evl-tiny, 4 frames at 32 px), batch 8. On a GPU, e.g. `vidlab bench model evl
--model evl-vit-b16-8x16 --frames 8 --batch-size 32 --device cuda --precision bf16` (ViT-B/16, 8 frames,
224 px; the official global batch of 256 is 8 GPUs x 32).
"""

from __future__ import annotations

import argparse

from vidlab.cli._group import at_least

# vidlab.bench.model_evl.BACKBONE_MODES, spelt out so that `vidlab --help` does not import torch
BACKBONE_MODES = ("frozen", "fine-tuned")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evl", help="EVL training-step speed and memory, frozen vs fine-tuned backbone", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="evl-tiny", help="registered EVL model name or YAML (default: evl-tiny)")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--frames", type=at_least(1), default=None, help="frames per clip (default: the model's)")
    parser.add_argument("--steps", type=at_least(1), default=5, help="timed steps (default: 5)")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="32", choices=("32", "bf16", "fp16"))
    parser.add_argument(
        "--backbone", nargs="+", choices=BACKBONE_MODES, default=list(BACKBONE_MODES),
        help="backbone modes to measure (default: frozen fine-tuned)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.bench.model_evl import render, run_evl_benchmark
    from vidlab.models import model_config

    frames = args.frames if args.frames is not None else int(model_config(args.model).num_frames)
    results = [
        run_evl_benchmark(
            model=args.model, backbone=mode, batch_size=args.batch_size, num_frames=frames, steps=args.steps,
            warmup=args.warmup, device=args.device, precision=args.precision,
        )
        for mode in args.backbone
    ]
    print(render(results), end="")
    return 0
