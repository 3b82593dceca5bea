"""`vidlab experiment singularity-direction`: can Singularity's temporal memory carry the motion direction?

In the ShapesBench experiment no Singularity variant tells a clip from its time reversal. This probe asks whether
the temporal parts can learn it when given the steps: a trained model's vision tower is frozen and its tokens
(after `vision_layernorm`, as the fusion reads them) cached for 8 frames of every directional ShapesBench clip;
readouts are then trained on the 8 motion classes (4 frames per clip: one of each pair of cached frames at
random in training, frames 1/3/5/7 at test), each scored on the test clips among all 8 classes and against the
clip's reversed motion:

- `order`: each frame's mean token, concatenated in frame order, an MLP (sees the order by construction);
- `set`: one cross-attention layer from a learned query over the 4 frames' tokens, an MLP (order-free: the
  control);
- `temporal_embed`: the same after adding temporal embeddings (zero-initialised, as official);
- `temporal`: the same after temporal embeddings and the model's temporal encoder (randomly initialised, as
  the official temporal stage starts), Singularity-temporal's memory;
- `template`: the template task itself on the frozen tower: the same temporal parts, then the model's own ITC
  and ITM (hard negatives) over the 8 template captions, with the text, fusion and heads trained on from the
  model's weights at the template task's learning rate; scored by each template caption's ITM score;
- `template_choice`: the same model path trained with cross-entropy over the 8 template captions' ITM scores
  instead: the strongest signal the template task's path can get (tells its losses from its architecture).

With `template_memory='trained'` the template readouts start instead from the `temporal` readout's temporal
embeddings and encoder, trained first in the same run on the motion classes and then frozen: a memory that already
holds the direction. Whether the template path then learns the direction tells "the fusion cannot read it" from
"the captions cannot teach the memory to hold it". `'trained_tuned'`: the same start, the memory trained on with the
template path (do the template losses keep the direction once it is there?).

With `reversal_pairs` every training batch of the template readouts holds 16 clips and their time reversals (the
picked frames in reverse order, labelled with the opposite motion): every clip meets its reversed template in its
own batch, so the template losses ask for the direction as often as they can (not part of the official recipe).
The direction readouts keep their batches, so a transplanted memory is the same with or without it.

The temporal embeddings' mean norm per frame is reported beside each score, against the tokens' own norm.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.losses.singularity import losses_of_features
from vidlab.models.singularity import Singularity, VideoFeatures, encode_across_time, init_bert_weights

DIRECTION_READOUTS = ("order", "set", "temporal_embed", "temporal")
TEMPLATE_READOUTS = ("template", "template_choice")
READOUTS = DIRECTION_READOUTS + TEMPLATE_READOUTS
TEMPLATE_MEMORIES = ("fresh", "trained", "trained_tuned")
CACHED_FRAMES = 8
TEST_FRAMES = (1, 3, 5, 7)
BATCH_SIZE = 32


@dataclass
class MotionClips:
    """A split's cached tower tokens (N, 8, L, D) and motion labels (N,)."""

    tokens: Tensor
    labels: Tensor


@torch.no_grad()
def cache_tokens(model: nn.Module, root: Path, split: str, transform: Any) -> MotionClips:
    """Every directional clip of `split` through the frozen tower at the middles of 8 equal segments."""
    from vidlab.experiments.singularity_shapes import motion_labels
    from vidlab.io.probe import probe
    from vidlab.io.video import read_frames

    tokens, labels = [], []
    for video, label in motion_labels(root, split):
        path = root / video
        bounds = np.linspace(0, probe(path).num_frames, CACHED_FRAMES + 1)
        frames = read_frames(path, ((bounds[:-1] + bounds[1:]) / 2).astype(int)).permute(0, 3, 1, 2)
        tokens.append(model.frame_features(transform(frames)[None]).tokens[0])
        labels.append(label)
    return MotionClips(torch.stack(tokens), torch.tensor(labels))


def pick_frames(tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(N, 8, L, D) -> (N, 4, L, D): one frame of each consecutive pair at random, or frames 1/3/5/7 without a
    generator (the test view)."""
    if generator is None:
        return tokens[:, list(TEST_FRAMES)]
    offsets = torch.randint(0, 2, (len(tokens), len(TEST_FRAMES)), generator=generator)
    return tokens[torch.arange(len(tokens))[:, None], torch.arange(len(TEST_FRAMES)) * 2 + offsets]


def draw_batch(
    clips: MotionClips, opposite: Tensor, generator: torch.Generator, reversal_pairs: bool = False,
) -> tuple[Tensor, Tensor]:
    """A training batch of `BATCH_SIZE` picked views (B, 4, L, D) and their motion labels. With `reversal_pairs`,
    half as many clips and, after them, their time reversals: the picked frames flipped (themselves a training view
    of the reversed cached frames) labelled with the opposite motion."""
    count = BATCH_SIZE // 2 if reversal_pairs else BATCH_SIZE
    index = torch.randint(0, len(clips.labels), (count,), generator=generator)
    views, labels = pick_frames(clips.tokens[index].float(), generator), clips.labels[index]
    if reversal_pairs:
        views, labels = torch.cat([views, views.flip(1)]), torch.cat([labels, opposite[labels]])
    return views, labels


class DirectionReadout(nn.Module):
    """A motion classifier over 4 frames' tokens, trained with cross-entropy (see the module docstring for the
    kinds)."""

    lr = 5e-4

    def __init__(self, kind: str, width: int, num_heads: int, num_classes: int, temporal_encoder: nn.Module | None = None):
        super().__init__()
        if kind not in DIRECTION_READOUTS:
            raise ConfigError(f"a direction readout is one of {DIRECTION_READOUTS}, got {kind!r}")
        self.kind = kind
        frames = len(TEST_FRAMES)
        hidden = 512
        with_time = kind in ("temporal_embed", "temporal")
        self.temporal_embeddings = nn.Parameter(torch.zeros(1, frames, 1, width)) if with_time else None
        if kind == "order":
            self.mlp = nn.Sequential(nn.Linear(frames * width, hidden), nn.GELU(), nn.Linear(hidden, num_classes))
            return
        self.temporal_encoder = temporal_encoder if kind == "temporal" else None
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.attention = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, 4, L, D) -> (B, classes) logits."""
        if self.kind == "order":
            return self.mlp(tokens.mean(2).flatten(1))
        if self.temporal_embeddings is not None:
            tokens = tokens + self.temporal_embeddings
        if self.temporal_encoder is not None:
            tokens = encode_across_time(self.temporal_encoder, tokens)
        memory = tokens.flatten(1, 2)
        read, _ = self.attention(self.query.expand(len(memory), -1, -1), memory, memory)
        return self.mlp(self.norm(read[:, 0]))

    def loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self(tokens), labels)

    def temporal_norm(self) -> float | None:
        """Mean norm per frame of the temporal embeddings."""
        table = self.temporal_embeddings
        return None if table is None else float(table.detach().norm(dim=-1).mean())


class TemplateReadout(nn.Module):
    """The template task on cached tower tokens: `model` (its tower frozen) with zero temporal embeddings and a
    randomly initialised temporal encoder, ITC reading each frame's [CLS] after it (`update_pooler_embed`, as the
    plans' template fine-tuning of the temporal variant), ITM with hard negatives; clips of one template are each
    other's positives (`idx`, as `data.has_multi_vision_gt`). Logits: every template caption's ITM score.
    `kind` 'template_choice' trains with cross-entropy over those logits instead of the task's losses.
    `memory`: a trained `temporal` direction readout whose temporal embeddings and encoder replace the fresh ones,
    frozen unless `tune_memory`."""

    lr = 2.5e-4  # configs/experiments/singularity_shapes/templates.yaml

    def __init__(self, model: Singularity, caption_ids: Tensor, caption_mask: Tensor, kind: str = "template",
                 memory: DirectionReadout | None = None, tune_memory: bool = False):
        super().__init__()
        if kind not in TEMPLATE_READOUTS:
            raise ConfigError(f"a template readout is one of {TEMPLATE_READOUTS}, got {kind!r}")
        self.kind = kind
        if not (model.cfg.add_temporal_embed and model.temporal_vision_encoder is not None
                and model.cfg.temporal_vision_encoder.update_pooler_embed):
            raise ConfigError("the template readout needs a model with temporal embeddings, a temporal encoder and update_pooler_embed")
        self.model = model
        for frozen in (model.vision_encoder, model.vision_layernorm):
            if frozen is not None:
                frozen.requires_grad_(False)
        if memory is None:
            with torch.no_grad():
                model.temporal_embeddings.zero_()
            init_bert_weights(model.temporal_vision_encoder, model.cfg.text.initializer_range)
        else:
            self._transplant(memory, tune_memory)
        self.register_buffer("caption_ids", caption_ids, persistent=False)
        self.register_buffer("caption_mask", caption_mask, persistent=False)

    def _transplant(self, memory: DirectionReadout, tune: bool) -> None:
        """The `temporal` readout's temporal embeddings and encoder into the model, frozen unless `tune`."""
        if memory.kind != "temporal":
            raise ConfigError(f"a template readout's memory comes from the 'temporal' readout, not {memory.kind!r}")
        assert memory.temporal_embeddings is not None and memory.temporal_encoder is not None
        model = self.model
        if memory.temporal_embeddings.shape != model.temporal_embeddings.shape:
            raise ConfigError(f"the temporal readout's embeddings are {tuple(memory.temporal_embeddings.shape)}, the model's "
                              f"{tuple(model.temporal_embeddings.shape)}")
        with torch.no_grad():
            model.temporal_embeddings.copy_(memory.temporal_embeddings)
        model.temporal_vision_encoder.load_state_dict(memory.temporal_encoder.state_dict(), strict=True)
        model.temporal_embeddings.requires_grad_(tune)
        model.temporal_vision_encoder.requires_grad_(tune)

    def _video(self, tokens: Tensor) -> VideoFeatures:
        """Cached tower tokens (B, 4, L, D) through the model's temporal parts."""
        return self.model.add_time(VideoFeatures(tokens, None))

    def loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        if self.kind == "template_choice":
            return F.cross_entropy(self(tokens), labels)
        batch = {"input_ids": self.caption_ids[labels], "attention_mask": self.caption_mask[labels], "idx": labels}
        return sum(losses_of_features(self.model, self._video(tokens), batch).values())

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, 4, L, D) -> (B, templates) ITM scores."""
        memory = self._video(tokens).memory
        text = self.model.text_features(self.caption_ids, self.caption_mask)
        clips, templates = len(memory), len(self.caption_ids)
        logits = self.model.itm_logits(
            text.states.repeat(clips, 1, 1), text.mask.repeat(clips, 1), memory.repeat_interleave(templates, dim=0)
        )
        return logits[:, 1].view(clips, templates)

    def temporal_norm(self) -> float:
        return float(self.model.temporal_embeddings.detach().norm(dim=-1).mean())


Readout = DirectionReadout | TemplateReadout


def choice_scores(logits: Tensor, labels: Tensor, opposite: Tensor) -> tuple[float, float]:
    """% right among all classes, % whose true class outscores its reversed motion."""
    right = logits.argmax(1) == labels
    true = logits.gather(1, labels[:, None])[:, 0]
    reversed_ = logits.gather(1, opposite[labels][:, None])[:, 0]
    return 100.0 * right.float().mean().item(), 100.0 * (true > reversed_).float().mean().item()


@torch.no_grad()
def _scores(readout: Readout, clips: MotionClips, opposite: Tensor) -> tuple[float, float]:
    readout.eval()
    logits = torch.cat([readout(pick_frames(clips.tokens[i : i + 80].float())) for i in range(0, len(clips.labels), 80)])
    return choice_scores(logits, clips.labels, opposite)


def train_readout(
    readout: Readout, train: MotionClips, test: MotionClips, opposite: Tensor, steps: int, eval_at: Sequence[int],
    seed: int = 0, on_row: Callable[[dict[str, Any]], None] | None = None, lr: float | None = None,
    reversal_pairs: bool = False,
) -> list[dict[str, Any]]:
    """AdamW at `lr` (default: the readout's own; 100 warm-up steps, cosine to a tenth), batches of 32 clips (16 and
    their reversals with `reversal_pairs`); one row per `eval_at` step (and the last), each also passed to `on_row`
    as it comes."""
    generator = torch.Generator().manual_seed(seed)
    trained = [p for p in readout.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr or readout.lr, weight_decay=0.02)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step, steps) / steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rows, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        readout.train()
        loss = readout.loss(*draw_batch(train, opposite, generator, reversal_pairs))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        if step in eval_at or step == steps:
            of_all, vs_reversed = _scores(readout, test, opposite)
            rows.append({"readout": readout.kind, "step": step, "loss": loss.item(), "of_all": of_all, "vs_reversed": vs_reversed,
                         "temporal_norm": readout.temporal_norm(), "seconds": time.perf_counter() - start})
            if on_row is not None:
                on_row(rows[-1])
    return rows


def recorded_tokenizer(checkpoint: Path) -> str:
    """The text tokenizer a `vidlab train` run recorded beside its model folder (RUN/config.yaml, `text.tokenizer`)."""
    from omegaconf import OmegaConf

    from vidlab.engine.runner import RUN_CONFIG

    model_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    config = model_dir.parent / RUN_CONFIG  # the stage's config, saved beside its model folder
    spec = OmegaConf.select(OmegaConf.load(config), "text.tokenizer") if config.is_file() else None
    if not spec:
        raise ConfigError(f"the template readout needs the model's text tokenizer and {config} names none: pass --tokenizer")
    return str(spec)


def template_captions(classes: Sequence[str], tokenizer: str, max_length: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) of the template caption of every motion class, as the experiment's template task writes them."""
    from vidlab.experiments.singularity_shapes import template_caption
    from vidlab.models.text import Tokenize, load_tokenizer

    return Tokenize(load_tokenizer(tokenizer), max_length)([template_caption(name) for name in classes])


def run_direction_probe(
    checkpoint: Path, data: Path, readouts: Sequence[str] = READOUTS, steps: int = 3000, eval_at: Sequence[int] = (),
    seed: int = 0, on_row: Callable[[dict[str, Any]], None] | None = None, tokenizer: str | None = None,
    lr: float | None = None, template_memory: str = "fresh", reversal_pairs: bool = False,
) -> dict[str, Any]:
    """Cache the frozen tower's tokens of `checkpoint` on ShapesBench `data`, train each readout; the results.
    `tokenizer`: the template readouts' (default: the one the model's training run recorded); `lr`: every
    readout's learning rate (default: each its own); `template_memory`: 'fresh' temporal parts for the template
    readouts, or the 'trained' ones of the `temporal` readout (trained first, then frozen; 'trained_tuned': trained
    on); `reversal_pairs`: the template readouts' batches pair each clip with its time reversal."""
    import json

    from vidlab.data.shapesbench import OPPOSITE
    from vidlab.data.transforms import build_transform
    from vidlab.models.factory import apply_overrides, build_with_report, read_checkpoint

    unknown = sorted(set(readouts) - set(READOUTS))
    if unknown:
        raise ConfigError(f"unknown readouts {unknown}; choose from {list(READOUTS)}")
    if steps < 1:
        raise ConfigError(f"steps must be 1 or more, got {steps}")
    if lr is not None and not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    if template_memory not in TEMPLATE_MEMORIES:
        raise ConfigError(f"template_memory must be one of {TEMPLATE_MEMORIES}, got {template_memory!r}")
    with_templates = bool(set(readouts) & set(TEMPLATE_READOUTS))
    if reversal_pairs and not with_templates:
        raise ConfigError("reversal_pairs pairs the template readouts' batches: add a template readout")
    transplant = template_memory != "fresh"
    if transplant:
        if "temporal" not in readouts or not with_templates:
            raise ConfigError(f"template_memory {template_memory!r} needs the 'temporal' readout and a template readout")
        readouts = sorted(readouts, key=lambda kind: kind != "temporal")  # the memory is trained first
    classes_file = data / "annotations" / "motion_classes.json"
    if not classes_file.is_file():
        raise ConfigError(f"{classes_file}: not found (is {data} a ShapesBench folder?)")
    classes = json.loads(classes_file.read_text())
    opposite = torch.tensor([classes.index(OPPOSITE[name]) for name in classes])
    temporal = {"num_frames": len(TEST_FRAMES), "add_temporal_embed": True, "temporal_vision_encoder.enable": True,
                "temporal_vision_encoder.update_pooler_embed": True}
    recorded, weights, source = read_checkpoint(checkpoint, None)
    if recorded.family != "singularity":  # before the temporal overrides, which only a singularity config has
        raise ConfigError(f"{checkpoint}: a {recorded.family} model, not a singularity one")
    created = build_with_report(apply_overrides(recorded, temporal), weights, source)
    model = created.model.eval()
    captions = None
    if with_templates:
        if created.config.task == "qa":
            raise ConfigError(f"{checkpoint}: a QA model has no ITM head for the template readout")
        captions = template_captions(classes, tokenizer or recorded_tokenizer(checkpoint), created.config.text.max_length)
    transform = build_transform({"preset": "singularity", "size": created.config.vision.image_size, "hflip": 0.0}, train=False)
    train, test = (cache_tokens(model, data, split, transform) for split in ("train", "test"))
    width, heads = model.vision_width, created.config.vision.num_attention_heads
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint), "data": str(data), "steps": steps, "seed": seed, "lr": lr, "template_memory": template_memory,
        "reversal_pairs": reversal_pairs, "train_clips": len(train.labels), "test_clips": len(test.labels),
        "token_norm": float(train.tokens.norm(dim=-1).mean()), "readouts": {},
    }
    trained_memory: DirectionReadout | None = None
    for kind in readouts:
        torch.manual_seed(seed)
        readout: Readout
        if kind in TEMPLATE_READOUTS:
            assert captions is not None
            readout = TemplateReadout(copy.deepcopy(model), *captions, kind=kind, memory=trained_memory,
                                      tune_memory=template_memory == "trained_tuned")
        else:
            encoder = None
            if kind == "temporal":
                encoder = copy.deepcopy(model.temporal_vision_encoder)
                init_bert_weights(encoder, created.config.text.initializer_range)
            readout = DirectionReadout(kind, width, heads, len(classes), encoder)
        results["readouts"][kind] = train_readout(readout, train, test, opposite, steps, eval_at, seed=seed, on_row=on_row, lr=lr,
                                                   reversal_pairs=reversal_pairs and kind in TEMPLATE_READOUTS)
        if transplant and kind == "temporal":
            assert isinstance(readout, DirectionReadout)
            trained_memory = readout
    return results


HEADERS = ["readout", "step", "loss", "of all %", "vs reversed %", "temporal emb. norm", "s"]


def format_row(row: dict[str, Any]) -> list[str]:
    """One evaluated step as cells under `HEADERS`."""
    norm = "-" if row["temporal_norm"] is None else f"{row['temporal_norm']:.3f}"
    return [row["readout"], str(row["step"]), f"{row['loss']:.3f}", f"{row['of_all']:.1f}", f"{row['vs_reversed']:.1f}", norm,
            f"{row['seconds']:.0f}"]
