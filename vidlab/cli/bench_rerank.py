"""`vidlab bench rerank`: the test-time cost of Singularity's ITM re-ranking of the top-k (k = 16, 128) against
contrastive-only scoring, side by side in one run.

CPU default: the tiny config (singularity-tiny), 256 videos x 256 texts. On a GPU, e.g.
`vidlab bench rerank --model singularity-retrieval --device cuda --precision bf16 --videos 1000 --texts 1000`
(ViT-B/16-size BEiT + BERT-base at 224 px; an MSR-VTT 1k-sized test set).
"""

from __future__ import annotations

import argparse

from vidlab.cli._group import at_least


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "rerank", help="Singularity's ITM re-ranking cost against ITC only", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="singularity-tiny", help="registered model name or YAML (default: singularity-tiny)")
    parser.add_argument("--k", type=at_least(1), nargs="+", default=[16, 128], help="re-ranked candidates per query (default: 16 128)")
    parser.add_argument("--videos", type=at_least(1), default=256, help="test videos (default: 256)")
    parser.add_argument("--texts", type=at_least(1), default=256, help="test texts (default: 256)")
    parser.add_argument("--test-frames", type=at_least(1), default=4, help="test frames per video, one memory (default: 4)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="32", choices=("32", "bf16", "fp16"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.bench.rerank import render, run_rerank_benchmark

    rows = run_rerank_benchmark(
        args.model, ks=args.k, num_videos=args.videos, num_texts=args.texts, num_frames=args.test_frames,
        device=args.device, precision=args.precision,
    )
    print(render(rows), end="")
    return 0
