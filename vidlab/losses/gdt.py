"""GDT's noise-contrastive loss over data transformations, as the official `get_pos_neg` / `get_losses` /
`get_loss` (facebookresearch/GDT `gdt_helper.py`) and `main_gdt.train_one_epoch` combine them.

Features are named by modality and view: `v` (video) / `a` (the other modality: audio, or text for video-text
GDT), followed by the view: `""` the clip at time tau1, `"R"` it time-reversed, `"2"` the clip at tau2,
`"2R"` that one reversed (`v`, `aR`, `v2`, `a2R`, ...). Each is (N, D), L2-normalised, per process.

- One NCE term (`nce_loss`, official `get_loss`): logits `[q k^T (N x N) | q neg^T] / t`, label i; the keys
  `k` and the negatives are detached, gradients reach the queries only. The local off-diagonal block acts
  as negatives; `neg` holds the other processes' features (gathered, detached) and, for a *variant*
  pair-set, this process's transformed features (the hard negatives).
- A pair-set (one `get_losses` call) is `0.5 (L_v + L_a)` for one view, `0.25 (L_v + L_a + L_vT + L_aT)`
  for a pair of views X, Y. basecase / variant: positives within a view ((v, a), (vT, aT)); invariant:
  across them ((v, aT), (vT, a)). The second view's terms reuse the first's gathered negatives.
- A hypothesis (README numbering) is the mean of its pair-sets: 1 basecase; 2 / 4 variant to reversal /
  shift; 3 / 5 invariant + a basecase (0.5 each); 6-9 four cross pair-sets (reversal on both clips, shift on
  both directions) plus a basecase for each invariant factor (weights 0.25 / 0.2 / 1/6). 6 = v-rev/v-shift,
  7 = i-rev/v-shift, 8 = v-rev/i-shift, 9 = i-rev/i-shift.

Official list aliasing (`official_aliasing=True`, the default, reproduces it): `get_pos_neg` takes the
Python lists of gathered features by reference and `.extend()`s them in place, so a later call of the same
step finds them already extended: hypotheses 3, 5 and 6-9 get extra (in 3 and 5 repeated) other-process
negatives, e.g. the reversed features in hypothesis 6's shift pair-set; 1, 2 and 4 are unaffected.
`official_aliasing=False` gives every call fresh lists (docs/deviations.md). `gdt_plan` spells out, per term, which gathered features are its negatives.

The gather is the engine's (`local (N, ...) -> every process's rows in rank order`); all needed features go
through ONE call, so every process must call `gdt_loss` with the same hypothesis. Without one (a single
process) there are no other-process negatives (the official code fails there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vidlab.errors import VidlabError
from vidlab.models.gdt import CropEmbeddings

Gather = Callable[[Tensor], Tensor]  # local rows -> the rows of every process, in rank order

GDT_TEMPERATURE = 0.07  # official --nce_t
BASECASE, VARIANT, INVARIANT = "basecase", "variant", "invariant"
HYPOTHESES = tuple(range(1, 10))


class GDTLossError(VidlabError):
    """Features or settings the GDT loss cannot use."""


@dataclass(frozen=True)
class NCETerm:
    """One `get_loss` call: queries `query`, positives `key` (row i of each), negatives the other processes'
    rows of each feature in `negatives` (in order, every other rank per feature), then this process's
    `local_negatives`."""

    query: str
    key: str
    negatives: tuple[str, ...]
    local_negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairSet:
    """One `get_losses` call: 2 terms (0.5 each) or 4 (0.25 each)."""

    name: str
    kind: str
    terms: tuple[NCETerm, ...]


@dataclass
class GDTLoss:
    """The hypothesis's loss and each pair-set's (e.g. hypothesis 3: `time`, `base`)."""

    loss: Tensor
    pair_sets: dict[str, Tensor]


def _pair_sets(hypothesis: int) -> tuple[tuple[str, str, str, str | None], ...]:
    """(name, kind, first view, second view) in the official call order: basecase pair-sets first."""
    if hypothesis == 1:
        return (("base", BASECASE, "", None),)
    if hypothesis in (2, 3, 4, 5):
        view, name = ("R", "time") if hypothesis in (2, 3) else ("2", "shift")
        if hypothesis in (2, 4):
            return ((name, VARIANT, "", view),)
        return (("base", BASECASE, "", view), (name, INVARIANT, "", view))
    if hypothesis in (6, 7, 8, 9):
        reversal = INVARIANT if hypothesis in (7, 9) else VARIANT
        shift = INVARIANT if hypothesis in (8, 9) else VARIANT
        base = [("base_time", BASECASE, "", "R")] if reversal == INVARIANT else []
        base += [("base_shift", BASECASE, "", "2")] if shift == INVARIANT else []
        return (
            *base,
            ("time", reversal, "", "R"),
            ("time_shifted", reversal, "2", "2R"),
            ("shift", shift, "", "2"),
            ("shift_reversed", shift, "R", "2R"),
        )
    raise GDTLossError(f"GDT hypothesis must be one of 1-9, got {hypothesis!r}")


def hypothesis_features(hypothesis: int) -> tuple[str, ...]:
    """The features a hypothesis needs, in the official gather order."""
    views = {view for _, _, first, second in _pair_sets(hypothesis) for view in (first, second) if view is not None}
    return tuple(f"{modality}{view}" for view in ("", "2", "R", "2R") if view in views for modality in ("v", "a"))


def gdt_plan(hypothesis: int, official_aliasing: bool = True) -> tuple[PairSet, ...]:
    """The pair-sets of a hypothesis in the official call order, each term with its negatives, the
    official in-place list extension replayed symbolically when `official_aliasing`."""
    lists = {name: [name] for name in hypothesis_features(hypothesis)}  # the collated list of each feature

    def take(name: str) -> list[str]:
        return lists[name] if official_aliasing else list(lists[name])

    plans = []
    for name, kind, first, second in _pair_sets(hypothesis):
        concats: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        terms: list[NCETerm] = []
        for x, y in ((first, second), (second, first)) if second is not None else ((first, None),):
            if concats is None:  # the first call of the pair-set gathers; the second reuses its negatives
                if kind == INVARIANT:
                    a_neg, v_neg = take(f"v{y}"), take(f"a{y}")
                    a_neg.extend(lists[f"v{x}"])
                    v_neg.extend(lists[f"a{x}"])
                else:
                    a_neg, v_neg = take(f"v{x}"), take(f"a{x}")
                    if y is not None:
                        a_neg.extend(lists[f"v{y}"])
                        v_neg.extend(lists[f"a{y}"])
                concats = (tuple(v_neg), tuple(a_neg))
            keys = (f"a{y}", f"v{y}") if kind == INVARIANT else (f"a{x}", f"v{x}")
            local = ((f"a{y}",), (f"v{y}",)) if kind == VARIANT else ((), ())
            terms.append(NCETerm(f"v{x}", keys[0], concats[0], local[0]))
            terms.append(NCETerm(f"a{x}", keys[1], concats[1], local[1]))
        plans.append(PairSet(name, kind, tuple(terms)))
    return tuple(plans)


def nce_logits(query: Tensor, key: Tensor, negatives: Tensor, temperature: float = GDT_TEMPERATURE) -> Tensor:
    """(N, D) queries, keys, (M, D) negatives -> (N, N + M) logits [q k^T | q neg^T] / t (no detaching here)."""
    return torch.cat([query @ key.T, query @ negatives.T], dim=1) / temperature


def nce_loss(query: Tensor, key: Tensor, negatives: Tensor, temperature: float = GDT_TEMPERATURE) -> Tensor:
    """Official `get_loss`: cross-entropy of `nce_logits` with label i (key i is query i's positive)."""
    logits = nce_logits(query, key, negatives, temperature)
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))


def other_processes(local: Tensor, gather: Gather | None, rank: int) -> Tensor:
    """(W - 1, N, ...) the other processes' rows of `local` (N, ...), rank order; (0, N, ...) without `gather`."""
    if gather is None:
        return local.new_empty(0, *local.shape)
    everything = gather(local)
    batch = local.shape[0]
    if batch == 0 or everything.shape[0] % batch:
        raise GDTLossError(f"the gather returned {everything.shape[0]} rows for {batch} local ones: every process needs the same batch")
    world = everything.shape[0] // batch
    if not 0 <= rank < world:
        raise GDTLossError(f"rank {rank} outside a world of {world} processes")
    everything = everything.view(world, *local.shape)
    return torch.cat([everything[:rank], everything[rank + 1 :]])


def gdt_loss(
    features: Mapping[str, Tensor],
    hypothesis: int,
    temperature: float = GDT_TEMPERATURE,
    gather: Gather | None = None,
    rank: int = 0,
    official_aliasing: bool = True,
) -> GDTLoss:
    """The GDT loss of one process's features (`v`, `a`, `vR`, ... as the hypothesis needs) for `hypothesis` 1-9.

    `gather` / `rank`: the process group (the engine's gather and this process's rank); None for one process.
    """
    names = hypothesis_features(hypothesis)
    missing = [name for name in names if name not in features]
    if missing:
        raise GDTLossError(f"GDT hypothesis {hypothesis} needs features {', '.join(names)}; missing {', '.join(missing)}")
    shapes = {tuple(features[name].shape) for name in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise GDTLossError(f"GDT features must all be (N, D) of one shape, got {sorted(shapes)}")
    local = torch.stack([features[name].detach() for name in names], dim=1)  # (N, K, D)
    others = other_processes(local, gather, rank)  # (W - 1, N, K, D)
    column = {name: index for index, name in enumerate(names)}
    dim = local.shape[-1]

    def negatives(term: NCETerm) -> Tensor:
        parts = [others[:, :, column[name]].reshape(-1, dim) for name in term.negatives]
        return torch.cat(parts + [features[name].detach() for name in term.local_negatives])

    pair_sets: dict[str, Tensor] = {}
    for plan in gdt_plan(hypothesis, official_aliasing):
        terms = [nce_loss(features[t.query], features[t.key].detach(), negatives(t), temperature) for t in plan.terms]
        weight = 1.0 / len(terms)
        total = weight * terms[0]
        for term in terms[1:]:
            total = total + weight * term
        pair_sets[plan.name] = total
    # official sum order: the cross pair-sets, then the basecase ones
    ordered = [name for name in pair_sets if not name.startswith("base")] + [n for n in pair_sets if n.startswith("base")]
    loss = pair_sets[ordered[0]]
    for name in ordered[1:]:
        loss = loss + pair_sets[name]
    return GDTLoss(loss if len(ordered) == 1 else loss * (1.0 / len(ordered)), pair_sets)


# ---------------------------------------------------------------------------------------------------------
# STiCA (main_stica.py: gdt_loss, nce_crop_losses_dual, train)

STICA_CROP_TEMPERATURE = 0.5  # official --temp
STICA_AV_TEMPERATURE = 0.1  # the default argument of main_stica.gdt_loss, which train() keeps
STICA_ALPHA = 0.5  # official --cross_modal_alpha


def cross_nce(
    first: Tensor,
    second: Tensor,
    temperature: float,
    gather: Gather | None = None,
    rank: int = 0,
    symmetric: bool = True,
) -> Tensor:
    """STiCA's InfoNCE (official `main_stica.gdt_loss(feat_v=first, feat_a=second)`): `second`'s rows against
    [`first` local | `first` of the other processes] (detached, label i), and with `symmetric` the mean with
    the reverse direction."""
    keys = torch.stack([first, second], dim=1).detach() if symmetric else first.detach()[:, None]
    others = other_processes(keys, gather, rank).flatten(0, 1)  # ((W - 1) * N, 1 or 2, D)
    forward = nce_loss(second, first.detach(), others[:, 0], temperature)
    if not symmetric:
        return forward
    return 0.5 * (forward + nce_loss(first, second.detach(), others[:, 1], temperature))


@dataclass
class STiCALoss:
    """`loss` = (1 - alpha) crops + alpha av; `crop_terms`: the mean of each crop-loss kind that has terms
    (`large`, `small`, `temporal_large`, `temporal_small`, the official log names L-L, S-L, TL-TL, TS-TL)."""

    loss: Tensor
    crops: Tensor
    av: Tensor
    crop_terms: dict[str, Tensor]


def stica_crop_losses(
    first: CropEmbeddings,
    second: CropEmbeddings,
    temperature: float = STICA_CROP_TEMPERATURE,
    gather: Gather | None = None,
    rank: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Official `nce_crop_losses_dual(feats_v=first view, feats_v2=second view)`: the sum of every crop term over
    their count, and each kind's mean. Large-large: only large crop index 1 of each view (symmetric; the
    official loop skips index 0); small-large: the second view's small crops j < S (S = small per large, the
    ones drawn after large crop 0) against each detached large crop of the first view (one direction)."""
    total: Tensor | None = None
    count = 0
    means: dict[str, Tensor] = {}
    for name, large1, large2, small2 in (
        ("", first.spatial_large, second.spatial_large, second.spatial_small),
        ("temporal_", first.temporal_large, second.temporal_large, second.temporal_small),
    ):
        per_large = len(small2) // len(large1) if large1 else 0
        kinds = {
            f"{name}large": [cross_nce(large2[1], large1[1], temperature, gather, rank)] if len(large1) > 1 else [],
            f"{name}small": [
                cross_nce(large.detach(), small2[j], temperature, gather, rank, symmetric=False)
                for large in large1
                for j in range(per_large)
            ],
        }
        for kind, terms in kinds.items():
            if terms:
                kind_sum = torch.stack(terms).sum()
                means[kind] = kind_sum / len(terms)
                total = kind_sum if total is None else total + kind_sum
                count += len(terms)
    if total is None:
        raise GDTLossError("STiCA crop losses: no crop pairs (2 large crops or small crops needed); the official code divides by zero here")
    return total / count, means


def stica_loss(
    first: CropEmbeddings,
    second: CropEmbeddings,
    videos: tuple[Tensor, Tensor],
    audios: tuple[Tensor, Tensor],
    alpha: float = STICA_ALPHA,
    crop_temperature: float = STICA_CROP_TEMPERATURE,
    av_temperature: float = STICA_AV_TEMPERATURE,
    gather: Gather | None = None,
    rank: int = 0,
) -> STiCALoss:
    """STiCA's training loss of two augmented views of one clip: `first` / `second` their crop embeddings,
    `videos` their whole-map embeddings, `audios` the audio embedding computed with each (official: two
    forward passes). (1 - alpha) crop losses + alpha audio-visual loss (the mean over views of `cross_nce`)."""
    if not 0.0 <= alpha <= 1.0:
        raise GDTLossError(f"STiCA alpha must be in [0, 1], got {alpha}")
    crops, crop_terms = stica_crop_losses(first, second, crop_temperature, gather, rank)
    if alpha > 0:
        av = 0.5 * (
            cross_nce(videos[0], audios[0], av_temperature, gather, rank) + cross_nce(videos[1], audios[1], av_temperature, gather, rank)
        )
        loss = (1.0 - alpha) * crops + alpha * av
    else:
        av = crops.new_zeros(())
        loss = (1.0 - alpha) * crops
    return STiCALoss(loss, crops, av, crop_terms)


__all__ = [
    "GDTLoss",
    "GDTLossError",
    "GDT_TEMPERATURE",
    "HYPOTHESES",
    "NCETerm",
    "PairSet",
    "gdt_loss",
    "gdt_plan",
    "hypothesis_features",
    "nce_logits",
    "nce_loss",
    "other_processes",
    "STICA_ALPHA",
    "STICA_AV_TEMPERATURE",
    "STICA_CROP_TEMPERATURE",
    "STiCALoss",
    "cross_nce",
    "stica_crop_losses",
    "stica_loss",
]
