"""`vidlab bench model singularity`: training-step cost with 1 vs 4 frames, and the test-time cost of ITM
re-ranking the top-k (k = 16, 128) against contrastive-only scoring, side by side in one run.

CPU default: the tiny config (singularity-tiny), batch 8, 256 videos x 256 texts. On a GPU, e.g.
`vidlab bench model singularity --model singularity-retrieval --batch-size 32 --device cuda --precision bf16
--videos 1000 --texts 1000` (ViT-B/16-size BEiT + BERT-base at 224 px; MSR-VTT 1k-sized test set).
"""

from __future__ import annotations

import argparse

from vidlab.cli._group import at_least


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "singularity", help="Singularity training-step and ITM re-ranking cost", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="singularity-tiny", help="registered model name or YAML (default: singularity-tiny)")
    parser.add_argument(
        "--frames", nargs="*", default=["1", "4"], metavar="N[t]",
        help="training setups: frame counts, 't' adding the temporal embeddings + temporal encoder, e.g. 1 4 4t "
        "(default: 1 4; none: skip training)",
    )
    parser.add_argument("--task", default="pretrain", choices=("pretrain", "retrieval"), help="losses of the training step (default: pretrain = ITC+ITM+MLM)")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--steps", type=at_least(1), default=5, help="timed training steps (default: 5)")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="untimed training steps first (default: 2)")
    parser.add_argument(
        "--k", type=int, nargs="*", default=[16, 128],
        help="re-ranked candidates per query (default: 16 128); an ITC-only row comes with them; --k with no value skips the test-time rows",
    )
    parser.add_argument("--videos", type=at_least(1), default=256, help="test videos (default: 256)")
    parser.add_argument("--texts", type=at_least(1), default=256, help="test texts (default: 256)")
    parser.add_argument("--test-frames", type=at_least(1), default=4, help="test frames per video, one memory (default: 4)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="32", choices=("32", "bf16", "fp16"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.bench.model_singularity import render, run_singularity_benchmark

    train, rerank = run_singularity_benchmark(
        args.model, train_setups=args.frames, ks=args.k, batch_size=args.batch_size,
        steps=args.steps, warmup=args.warmup, device=args.device, precision=args.precision, task=args.task,
        num_videos=args.videos, num_texts=args.texts, num_frames_test=args.test_frames,
    )
    print(render(train, rerank), end="")
    return 0
