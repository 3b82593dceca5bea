"""`vidlab bench model fit`: training-step speed and peak memory of a model at a given config.

One step = forward of both towers, NormSoftmax loss, backward, AdamW step, on synthetic inputs of the
config's shape (data loading is `vidlab bench data`'s business). On CUDA, peak memory is the allocator's
peak; on the CPU it is the peak RSS of a fresh process running only the benchmark.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from vidlab.bench.common import markdown_table, run_isolated
from vidlab.bench.steps import check_device, time_training_steps


@dataclass(frozen=True)
class ModelBenchResult:
    model: str
    device: str
    precision: str
    batch_size: int
    num_frames: int
    image_size: int
    grad_checkpointing: bool
    params_m: float
    step_ms: float
    clips_per_s: float
    peak_mem_mib: float


def fit_step_benchmark(
    model: str, *, batch_size: int, num_frames: int, steps: int, warmup: int, device: str, precision: str,
    grad_checkpointing: bool, text_length: int = 32, overrides: dict[str, Any] | None = None,
) -> ModelBenchResult:
    """Mean step time over `steps` timed steps, after `warmup` untimed ones."""
    from vidlab.losses.contrastive import cosine_similarity_matrix, norm_softmax_loss
    from vidlab.models import create_model, model_config

    check_device(device, precision)
    overrides = {"video.num_frames": num_frames, **(overrides or {})}
    cfg = model_config(model)
    net = create_model(model, **overrides).to(device).train()
    net.set_grad_checkpointing(grad_checkpointing)
    size = int(OmegaConf.select(cfg, "video.img_size"))
    vocab = int(OmegaConf.select(cfg, "text.hf_config.vocab_size"))
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(batch_size, num_frames, 3, size, size, generator=gen).to(device)
    ids = torch.randint(1, vocab, (batch_size, text_length), generator=gen).to(device)
    mask = torch.ones_like(ids)
    def loss() -> torch.Tensor:
        text, video = net(frames, ids, mask)
        return norm_softmax_loss(cosine_similarity_matrix(text.float(), video.float()))

    seconds, peak = time_training_steps(loss, net.parameters(), steps=steps, warmup=warmup, device=device, precision=precision)
    return ModelBenchResult(
        model, device, precision, batch_size, num_frames, size, grad_checkpointing,
        sum(p.numel() for p in net.parameters()) / 1e6, 1000 * seconds, batch_size / seconds, peak,
    )


def run_fit_benchmark(**kwargs: Any) -> ModelBenchResult:
    """On the CPU, in a fresh process so that its peak RSS is the benchmark's own."""
    if kwargs["device"].startswith("cuda"):
        return fit_step_benchmark(**kwargs)
    result, peak_rss = run_isolated(fit_step_benchmark, kwargs, preload=["vidlab.models"])
    return ModelBenchResult(**{**asdict(result), "peak_mem_mib": peak_rss})


def render(results: list[ModelBenchResult]) -> str:
    headers = ("model", "device", "precision", "batch", "frames", "px", "grad ckpt", "params M", "step ms",
               "clips/s", "peak MiB")
    rows = [(r.model, r.device, r.precision, r.batch_size, r.num_frames, r.image_size, r.grad_checkpointing,
             f"{r.params_m:.1f}", f"{r.step_ms:.1f}", f"{r.clips_per_s:.2f}", f"{r.peak_mem_mib:.0f}") for r in results]
    note = ("One training step: both towers forward, NormSoftmax loss, backward, AdamW; synthetic inputs. "
            "Peak MiB: CUDA allocator peak on a GPU, peak RSS of a fresh process on the CPU.")
    return markdown_table(headers, rows, right_align_from=3) + "\n\n" + note + "\n"
