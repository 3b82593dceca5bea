"""`vidlab demo`: the README's main job, end to end on ShapesBench.

For now it is the data smoke run of the foundation: generate ShapesBench, probe it, stream its training
split through the FiT input pipeline (sampler, decoder, transforms, DataLoader workers, bad-sample
accounting) and print the single-frame baseline table that shows which tasks need motion.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_DATA = Path("data") / "shapes_small"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the ShapesBench demo (the README's main job)", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"ShapesBench folder (default: {DEFAULT_DATA})")
    parser.add_argument("--size", default="small", choices=("tiny", "small"), help="ShapesBench size (default: small)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--batches", type=int, default=20, help="training batches to stream (default: 20)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from vidlab.bench.shapes_baselines import format_baselines, shapes_baselines
    from vidlab.data.datasets import VideoTextDataset, collate_samples
    from vidlab.data.formats import read_annotations
    from vidlab.data.quality import BadSampleTracker
    from vidlab.data.shapesbench import generate, read_manifest
    from vidlab.data.transforms import build_transform
    from vidlab.io import probe
    from vidlab.io.sampling import make_sampler

    print(f"[1/4] ShapesBench {args.size} in {args.data}")
    root = generate(args.data, size=args.size, seed=0)
    manifest = read_manifest(root)
    print(f"      {manifest.get('counts', manifest)}")

    records = read_annotations("singularity", root / "annotations" / "captions_train.json", root=root)
    print(f"[2/4] probe: {len(records)} training clips")
    infos = [probe(r.path) for r in records[:200]]
    codecs = sorted({f"{i.codec} {i.width}x{i.height}" for i in infos})
    fps = sorted({round(i.fps, 2) for i in infos})
    print(f"      first 200: {', '.join(codecs)}; fps {fps}; audio in {sum(i.has_audio for i in infos)}")

    print(f"[3/4] FiT input pipeline: 4 random frames per clip, train transforms, {args.workers} workers")
    dataset = VideoTextDataset(
        records, make_sampler("fit_rand", num_frames=4), build_transform({"preset": "fit", "size": 64}, train=True),
        num_frames=4, seed=0,
    )
    loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=args.workers, collate_fn=collate_samples)
    tracker = BadSampleTracker()
    start, clips = time.perf_counter(), 0
    for step, batch in enumerate(tracker.wrap(loader)):
        clips += len(batch["index"])
        if step + 1 >= args.batches:
            break
    seconds = time.perf_counter() - start
    print(f"      {clips} clips in {seconds:.1f} s ({clips / seconds:.1f} clips/s); batch video {tuple(batch['video'].shape)}"
          f" {batch['video'].dtype}, mean {batch['video'].float().mean():.3f}")
    print(f"      caption: {batch['caption'][0]!r}")
    print(f"      {tracker.summary()}")

    print("[4/4] single-frame baselines (a model that sees one frame cannot solve the temporal tasks)")
    print(format_baselines(shapes_baselines(root, num_threads=max(1, torch.get_num_threads()))))
    return 0
