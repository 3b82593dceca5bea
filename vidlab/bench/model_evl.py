"""`vidlab bench model evl`: training-step speed and peak memory of EVL with a frozen vs a fine-tuned backbone.

One step = forward of the backbone and the decoder, cross-entropy, backward, AdamW step over the trainable
parameters, on synthetic clips of the config's shape (data loading is `vidlab bench data`'s business). A
frozen backbone runs without autograd in the benchmark's precision (`32`: float32, `bf16`: bfloat16,
`fp16`: float16, the official `freeze_fp16`), LayerNorms in float32; a fine-tuned one is float32 weights
under autocast. Peak memory: the CUDA allocator's peak on a GPU; on the CPU the peak RSS of a fresh process
running only that row (`vidlab.bench.common.run_isolated`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vidlab.bench.common import BenchError, format_ratio, markdown_table, run_isolated
from vidlab.bench.model import ModelBenchResult
from vidlab.bench.steps import check_device, time_training_steps

BACKBONE_MODES = {"frozen": True, "fine-tuned": False}
FROZEN_BACKBONE_DTYPES = {"32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class EvlBenchResult(ModelBenchResult):
    backbone: str  # frozen | fine-tuned
    trainable_params_m: float


def evl_step_benchmark(
    model: str, *, backbone: str, batch_size: int, num_frames: int, steps: int, warmup: int, device: str,
    precision: str, overrides: dict[str, Any] | None = None,
) -> EvlBenchResult:
    """Mean step time over `steps` timed steps, after `warmup` untimed ones, with the backbone `frozen` or
    `fine-tuned` (random weights: speed does not depend on them)."""
    from vidlab.models import create_model, model_config

    check_device(device, precision)
    if backbone not in BACKBONE_MODES:
        raise BenchError(f"backbone must be one of {', '.join(BACKBONE_MODES)}, got {backbone!r}")
    frozen = BACKBONE_MODES[backbone]
    settings = {
        "num_frames": num_frames,
        "backbone.weights": None,
        "backbone.freeze": frozen,
        "backbone.dtype": FROZEN_BACKBONE_DTYPES[precision] if frozen else "float32",
        **(overrides or {}),
    }
    cfg = model_config(model)
    net = create_model(model, **settings).to(device).train()
    size, num_classes = int(cfg.backbone.image_size), int(cfg.num_classes)
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(batch_size, num_frames, 3, size, size, generator=gen).to(device)
    labels = torch.randint(num_classes, (batch_size,), generator=gen).to(device)
    seconds, peak = time_training_steps(
        lambda: torch.nn.functional.cross_entropy(net(clips).float(), labels), net.parameters(),
        steps=steps, warmup=warmup, device=device, precision=precision,
    )
    return EvlBenchResult(
        model=model, device=device, precision=precision, batch_size=batch_size, num_frames=num_frames,
        image_size=size, grad_checkpointing=False, params_m=sum(p.numel() for p in net.parameters()) / 1e6,
        step_ms=1000 * seconds, clips_per_s=batch_size / seconds, peak_mem_mib=peak, backbone=backbone,
        trainable_params_m=sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6,
    )


def run_evl_benchmark(**kwargs: Any) -> EvlBenchResult:
    """On the CPU, in a fresh process so that its peak RSS is the benchmark's own."""
    if kwargs["device"].startswith("cuda"):
        return evl_step_benchmark(**kwargs)
    result, peak_rss = run_isolated(evl_step_benchmark, kwargs, preload=["vidlab.models"])
    return EvlBenchResult(**{**asdict(result), "peak_mem_mib": peak_rss})


def render(results: list[EvlBenchResult]) -> str:
    """One row per backbone mode; the last column compares each row's clips/s with the first row's."""
    headers = ("model", "backbone", "device", "precision", "batch", "frames", "px", "params M", "trainable M",
               "step ms", "clips/s", "peak MiB", "speed vs first")
    first = results[0].clips_per_s if results else None
    rows = [(r.model, r.backbone, r.device, r.precision, r.batch_size, r.num_frames, r.image_size, f"{r.params_m:.1f}",
             f"{r.trainable_params_m:.2f}", f"{r.step_ms:.1f}", f"{r.clips_per_s:.2f}", f"{r.peak_mem_mib:.0f}",
             format_ratio(r.clips_per_s, first)) for r in results]
    note = ("One training step: backbone + decoder forward, cross-entropy, backward, AdamW over the trainable "
            "parameters; synthetic clips. A frozen backbone runs without autograd in the row's precision. "
            "Peak MiB: CUDA allocator peak on a GPU, peak RSS of a fresh process on the CPU.")
    return markdown_table(headers, rows, right_align_from=4) + "\n\n" + note + "\n"


__all__ = ["EvlBenchResult", "evl_step_benchmark", "render", "run_evl_benchmark"]
