"""`vidlab demo`: the README's main job, end to end on ShapesBench.

Generates ShapesBench (when missing), trains Frozen in Time with its 1 -> 4-frame curriculum (text tower
all-MiniLM-L6-v2), evaluates text-to-video and video-to-text retrieval on the test split after every
stage, overall and on the temporal captions (those one frame cannot match), and writes a run report:
RUN/report.html with the metrics table, the training curves and the top-5 test videos of a few text
queries for each stage. The metrics table and the report's path are printed at the end.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vidlab.cli._group import add_overrides

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

    from vidlab.data.formats import MediaRecord

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fit" / "demo.yaml"
# pairs that differ only in time (one frame cannot tell them apart), worded as ShapesBench captions are,
# and one appearance query that a single frame answers
QUERIES = (
    "a red square moves left",
    "a red square moves right",
    "a pink triangle spins clockwise",
    "a pink triangle spins anticlockwise",
    "a green circle grows",
    "a green circle shrinks",
    "a yellow star",
)
TOP_K = 5


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train + evaluate FiT on ShapesBench and write an HTML report (the README's main job)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config (default: configs/fit/demo.yaml)")
    parser.add_argument("--data", type=Path, default=None, help="ShapesBench folder, generated when missing (default: the config's data.root)")
    parser.add_argument("--out", type=Path, default=None, help="runs folder; the run goes to OUT/NAME/TIMESTAMP (default: the config's output_dir)")
    add_overrides(parser)
    parser.set_defaults(func=run)


def retrieve(stage_cfg: DictConfig, model_dir: Path, queries: Sequence[str], k: int = TOP_K) -> list[tuple[str, list[tuple[int, float]]]]:
    """(query, [(test record index, cosine score)] best first) with the stage's final weights.

    Videos are embedded as the evaluation embeds them (the recipe's eval set and eval step), so the
    thumbnails show what the metrics table scores.
    """
    import torch

    from vidlab.engine.data import eval_loader
    from vidlab.engine.recipe import get_recipe

    recipe = get_recipe(stage_cfg)
    model, _ = recipe.build_model(model_dir)
    model.eval()
    eval_set = recipe.eval_set(stage_cfg.eval.split)
    loader = eval_loader(
        eval_set.dataset, eval_set.batch_size, eval_set.collate,
        num_workers=stage_cfg.data.num_workers, worker_timeout=stage_cfg.data.worker_timeout,
    )
    video_embeds, video_index = [], []
    with torch.inference_mode():
        for batch in loader:
            rows = recipe.eval_step(model, batch)
            video_embeds.append(rows["video_embeds"].cpu())
            video_index.append(rows["video_index"].cpu())
        tokens = eval_set.collate.tokenize(list(queries))
        text_embeds = model.encode_text(tokens["input_ids"], tokens["attention_mask"], normalize=True).float()
    scores = text_embeds @ torch.cat(video_embeds).T
    index = torch.cat(video_index)
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return [
        (query, [(int(index[j]), float(s)) for s, j in zip(values.tolist(), positions.tolist())])
        for query, values, positions in zip(queries, top.values, top.indices)
    ]


def _shown_caption(record: MediaRecord) -> str:
    """The record's first temporal caption (what the temporal queries are about), else its first caption."""
    flags = list(record.extra.get("temporal") or [])
    return next((c for c, f in zip(record.captions, flags) if f), record.captions[0] if record.captions else "")


def _middle_frame(path: Path) -> torch.Tensor:
    from vidlab.io import probe, read_frames

    return read_frames(path, [probe(path).num_frames // 2])[0]


def run(args: argparse.Namespace) -> int:
    from vidlab.data.shapesbench import generate
    from vidlab.engine.config import load_train_config, resolve_stages
    from vidlab.engine.recipe import get_recipe
    from vidlab.engine.report import QueryResult, RetrievedVideo, format_metrics_table, write_report
    from vidlab.engine.runner import MODEL_DIR, train

    started = time.perf_counter()
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    cfg = load_train_config(args.config, overrides)
    source = cfg.data.shapesbench
    if source is not None:
        print(f"[1/4] ShapesBench {source.size} in {cfg.data.root}")
        generate(cfg.data.root, source.size, source.seed)
    print(f"[2/4] training {cfg.name}: stages {', '.join(s.dirname for s in resolve_stages(cfg))}, "
          f"evaluating {cfg.eval.split} after each")
    cfg.eval.every_stage = True  # the report compares the curriculum's stages
    result = train(cfg)

    print(f"[3/4] text queries: top-{TOP_K} {cfg.eval.split} videos per stage")
    queries: list[QueryResult] = []
    frames: dict[Path, torch.Tensor] = {}
    for stage in resolve_stages(cfg):
        records = get_recipe(stage.config).eval_set(cfg.eval.split).dataset.records
        for query, hits in retrieve(stage.config, result.run_dir / stage.dirname / MODEL_DIR, QUERIES):
            videos = [RetrievedVideo(Path(records[i].path), _shown_caption(records[i]), score) for i, score in hits]
            queries.append(QueryResult(stage.name, query, videos))
            for video in videos:
                if video.path not in frames:
                    frames[video.path] = _middle_frame(video.path)

    print("[4/4] report")
    table = format_metrics_table(result.stage_metrics)
    seconds = time.perf_counter() - started
    notes = [f"config: {args.config.name}; run folder: {result.run_dir}; demo wall time {seconds:.0f} s (training {result.wall_time_s:.0f} s)"]
    report = write_report(result.run_dir, result.stage_dirs, result.stage_metrics, queries, frames, f"vidlab demo: {cfg.name}", notes)
    print(f"\n{cfg.eval.split} retrieval per stage (R@K in %):\n{table}\n")
    print(f"report: {report}")
    print(f"demo finished in {seconds:.0f} s")
    return 0
