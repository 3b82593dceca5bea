"""`vidlab tokenize`: videos -> VIMPAC token stores (the official video2token, through vidlab's reader).

Reads a labelled list (`<relpath> <label>`, the official mmaction `*_videos.txt`, or any labelled vidlab format),
cuts each video's frames as the official extractor does (fps, short side, crop, flip), tokenizes them with a
frame tokenizer (the DALL-E `encoder.pkl`, or the model/ folder of a vidlab `vqvae` run) and writes the official
LMDB folders `{model_type}_{dset}_{split}_fps{F}_hflip{0|1}_{short}{crop}{size}` under --out: one for
`--views pretrain`, the 12 (6 with --no-flip) crop/flip sets of fine-tuning for `train`, the 3 test crops for
`test`. Rerun the same command to continue a killed run; unreadable videos are listed, not fatal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidlab.cli._group import at_least


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenize", help="videos -> VIMPAC token stores (LMDB)", description=__doc__)
    parser.add_argument("annotations", help="labelled video list, relative to --root (e.g. annotations/motion_train.txt)")
    parser.add_argument("--root", type=Path, default=Path("."), help="data root: annotations and media are relative to it")
    parser.add_argument("--format", default="evl", help="annotation format (default: evl, '<relpath> <label>' lines)")
    parser.add_argument("--media-root", help="video folder relative to --root (default: --root); keys are paths under it")
    parser.add_argument("--tokenizer", required=True, help="DALL-E encoder.pkl or a vidlab vqvae model folder")
    parser.add_argument("--out", type=Path, required=True, help="token root: the store folders are made under it")
    parser.add_argument("--dset", required=True, help="dataset name in the folder names (ucf101, k400, shapes, ...)")
    parser.add_argument("--split", required=True, help="split name in the folder names (train, val, train_test, ...)")
    parser.add_argument("--views", choices=("pretrain", "train", "test"), default="pretrain",
                        help="pretrain: centre crop; train: crop/flip augmentation sets; test: 3 crops (default: pretrain)")
    parser.add_argument("--fps", type=float, default=2.0, help="frames per second kept (official: 2 pretrain, 16 fine-tune)")
    parser.add_argument("--frame-size", type=at_least(8), default=128, help="crop size, = short side of the main sets")
    parser.add_argument("--no-flip", action="store_true", help="no flipped training sets (SSv2, direction labels)")
    parser.add_argument("--model-type", help="folder-name prefix (default: dalle for the DALL-E encoder, else vq)")
    parser.add_argument("--workers", type=at_least(0), default=2, help="decoding worker processes (default: 2)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="frames per tokenizer call (default: 32)")
    parser.add_argument("--device", default="cpu", help="tokenizer device (default: cpu)")
    parser.add_argument("--backend", help="video decoding backend (default: vidlab's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidlab.data.formats import read_source
    from vidlab.data.tokenize import split_stores, tokenize_videos
    from vidlab.models.dalle_encoder import DalleEncoder
    from vidlab.models.vq_tokenizer import load_tokenizer

    records = read_source(args.root, args.annotations, args.format, args.media_root, where="tokenize")
    videos = [(r.path, -1 if r.label is None else int(r.label)) for r in records]
    tokenizer = load_tokenizer(args.tokenizer, args.device)
    model_type = args.model_type or ("dalle" if isinstance(tokenizer, DalleEncoder) else "vq")
    stores = split_stores(args.out, model_type, args.dset, args.split, args.views, args.fps, args.frame_size, not args.no_flip)
    summary = tokenize_videos(
        videos, args.root / (args.media_root or ""), stores, lambda frames: tokenizer.tokenize(frames, args.batch_size),
        workers=args.workers, progress=not args.no_progress, backend=args.backend, settings={"tokenizer": str(args.tokenizer)},
    )
    print(f"tokenized {len(videos)} videos into {len(stores)} store(s) under {args.out}: {summary.written} entries written, "
          f"{summary.skipped} already there, {len(summary.failed)} unreadable")
    for path, reason in summary.failed[:10]:
        print(f"  unreadable: {path}: {reason}")
    if summary.failed:
        print(f"  (every store lists its unreadable videos in err_filepaths.txt)")
    return 0
