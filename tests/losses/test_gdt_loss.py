"""GDT's NCE over data transformations and STiCA's losses against slow references written here from the official
get_pos_neg / get_losses / main_gdt branches and main_stica's gdt_loss / nce_crop_losses_dual, on 3 emulated
processes; the list-aliasing flag; keys and negatives carry no gradient; one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidlab.golden_checks.gdt import ThreadGroup
from vidlab.losses.gdt import (
    GDTLossError,
    cross_nce,
    gdt_loss,
    gdt_plan,
    hypothesis_features,
    stica_loss,
)
from vidlab.models.gdt import CropEmbeddings

NAMES = ("v", "a", "vR", "aR", "v2", "a2", "v2R", "a2R")
T = 0.07


def rank_features(world: int, batch: int = 4, dim: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{n: F.normalize(torch.randn(batch, dim, generator=generator), dim=1) for n in NAMES} for _ in range(world)]


def slow_nce(q: torch.Tensor, k: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """-mean_i log( exp(q_i.k_i / t) / (sum_j exp(q_i.k_j / t) + sum_m exp(q_i.n_m / t)) ), row by row."""
    losses = []
    for i in range(q.shape[0]):
        logits = torch.cat([k @ q[i], noise @ q[i]]) / t
        losses.append(torch.logsumexp(logits, 0) - logits[i])
    return torch.stack(losses).mean()


def reference_gdt(hypothesis: int, ranks: list[dict[str, torch.Tensor]], rank: int, aliasing: bool) -> torch.Tensor:
    """The official step for one rank, with Python lists of the other ranks' features extended in place
    (`aliasing`) or copied for every call."""
    mine = ranks[rank]

    def collate(*names: str) -> tuple[list[torch.Tensor], ...]:
        return tuple([ranks[r][n].detach() for r in range(len(ranks)) if r != rank] for n in names)

    def pos_neg(kind, feats1, cols1, feats2=None, cols2=None, concats=None):
        (v, a), (vT, aT) = feats1, feats2 if feats2 is not None else (None, None)
        if not aliasing:
            cols1 = tuple(list(c) for c in cols1)
            cols2 = tuple(list(c) for c in cols2) if cols2 is not None else None
        v_pos, a_pos = (aT.detach(), vT.detach()) if kind == "i" else (a.detach(), v.detach())
        if concats is None:
            if kind == "i":
                a_neg, v_neg = cols2
                a_neg.extend(cols1[0])
                v_neg.extend(cols1[1])
            else:
                a_neg, v_neg = cols1
                if cols2 is not None:
                    a_neg.extend(cols2[0])
                    v_neg.extend(cols2[1])
            concats = (torch.cat(v_neg), torch.cat(a_neg))
        v_neg, a_neg = concats
        if kind == "v":
            a_neg, v_neg = torch.cat([a_neg, vT.detach()]), torch.cat([v_neg, aT.detach()])
        return (v, a, v_pos, a_pos, v_neg, a_neg), concats

    def losses(kind, feats, cols, x, y):
        p1, concats = pos_neg(kind, feats[x], cols[x], feats.get(y), cols.get(y))
        first = 0.5 * slow_nce(p1[0], p1[2], p1[4], T) + 0.5 * slow_nce(p1[1], p1[3], p1[5], T)
        if y is None:
            return first
        p2, _ = pos_neg(kind, feats[y], cols[y], feats[x], cols[x], concats)
        terms = [slow_nce(p1[0], p1[2], p1[4], T), slow_nce(p1[1], p1[3], p1[5], T)]
        terms += [slow_nce(p2[0], p2[2], p2[4], T), slow_nce(p2[1], p2[3], p2[5], T)]
        return sum(0.25 * term for term in terms)

    # one collation per step, shared by every call (official collate_feats once, then get_pos_neg many times)
    cols = {name: collate(f"v{name}", f"a{name}") for name in ("", "R", "2", "2R")}
    feats = {name: (mine[f"v{name}"], mine[f"a{name}"]) for name in ("", "R", "2", "2R")}
    if hypothesis == 1:
        return losses("b", feats, cols, "", None)
    if hypothesis in (2, 3, 4, 5):
        other = "R" if hypothesis in (2, 3) else "2"
        base = losses("b", feats, cols, "", other) if hypothesis in (3, 5) else None
        cross = losses("v" if hypothesis in (2, 4) else "i", feats, cols, "", other)
        return cross if base is None else 0.5 * (cross + base)
    rev, shift = ("i" if hypothesis in (7, 9) else "v"), ("i" if hypothesis in (8, 9) else "v")
    bases = []
    if rev == "i":
        bases.append(losses("b", feats, cols, "", "R"))
    if shift == "i":
        bases.append(losses("b", feats, cols, "", "2"))
    cross = [losses(rev, feats, cols, "", "R"), losses(rev, feats, cols, "2", "2R"),
             losses(shift, feats, cols, "", "2"), losses(shift, feats, cols, "R", "2R")]
    return sum(cross + bases) / len(cross + bases)


@pytest.mark.parametrize("aliasing", [True, False])
@pytest.mark.parametrize("hypothesis", range(1, 10))
def test_every_hypothesis_matches_the_slow_reference_on_three_processes(hypothesis, aliasing):
    ranks = rank_features(world=3)
    results = ThreadGroup(3).run(
        lambda rank, gather: gdt_loss(ranks[rank], hypothesis, T, gather=gather, rank=rank, official_aliasing=aliasing)
    )
    for rank, result in enumerate(results):
        expected = reference_gdt(hypothesis, ranks, rank, aliasing)
        torch.testing.assert_close(result.loss, expected, atol=1e-5, rtol=1e-5)


def test_aliasing_changes_exactly_the_pair_sets_whose_negatives_it_extends():
    ranks = rank_features(world=2, seed=1)
    changed_hypotheses = set()
    for hypothesis in range(1, 10):
        official, fresh = (
            ThreadGroup(2).run(lambda rank, gather, a=a: gdt_loss(ranks[rank], hypothesis, gather=gather, rank=rank, official_aliasing=a))[0]
            for a in (True, False)
        )
        for planned, corrected in zip(gdt_plan(hypothesis, True), gdt_plan(hypothesis, False)):
            same = planned == corrected
            assert torch.equal(official.pair_sets[planned.name], fresh.pair_sets[planned.name]) == same, (hypothesis, planned.name)
            if not same:
                changed_hypotheses.add(hypothesis)
        single = [gdt_loss(ranks[0], hypothesis, official_aliasing=a).loss for a in (True, False)]
        assert torch.equal(*single)  # one process: no gathered lists, nothing to alias
    assert changed_hypotheses == {3, 5, 6, 7, 8, 9}


def test_official_aliasing_repeats_the_reversed_features_in_the_invariant_negatives():
    base, time = gdt_plan(3)
    assert base.name == "base" and [t.negatives for t in base.terms] == [("a", "aR"), ("v", "vR")] * 2
    assert time.kind == "invariant" and time.terms[0].negatives == ("aR", "a", "aR")
    assert gdt_plan(3, official_aliasing=False)[1].terms[0].negatives == ("aR", "a")
    variant = gdt_plan(2)[0]
    assert [(t.query, t.key, t.local_negatives) for t in variant.terms] == [
        ("v", "a", ("aR",)), ("a", "v", ("vR",)), ("vR", "aR", ("a",)), ("aR", "vR", ("v",))
    ]
    assert gdt_plan(6)[2].terms[0].negatives == ("a", "aR", "a2", "a2R")  # shift after the reversal pair-sets
    assert hypothesis_features(1) == ("v", "a") and len(hypothesis_features(9)) == 8


def test_gradients_reach_the_queries_only():
    ranks = rank_features(world=2, seed=2)
    for features in ranks:
        for tensor in features.values():
            tensor.requires_grad_(True)
    results = ThreadGroup(2).run(lambda rank, gather: gdt_loss(ranks[rank], 2, gather=gather, rank=rank))
    results[0].loss.backward()
    assert all(t.grad is None for t in ranks[1].values())  # the other process's features: detached negatives
    v, a, vR, aR = (ranks[0][n].detach().requires_grad_(True) for n in ("v", "a", "vR", "aR"))
    others = {n: ranks[1][n].detach() for n in ("v", "a", "vR", "aR")}
    # keys, gathered and local negatives all detached: only each query's own term reaches it
    queries_only = 0.25 * (
        slow_nce(v, a.detach(), torch.cat([others["a"], others["aR"], aR.detach()]), T)
        + slow_nce(a, v.detach(), torch.cat([others["v"], others["vR"], vR.detach()]), T)
        + slow_nce(vR, aR.detach(), torch.cat([others["a"], others["aR"], a.detach()]), T)
        + slow_nce(aR, vR.detach(), torch.cat([others["v"], others["vR"], v.detach()]), T)
    )
    queries_only.backward()
    for name, tensor in zip(("v", "a", "vR", "aR"), (v, a, vR, aR)):
        torch.testing.assert_close(ranks[0][name].grad, tensor.grad, atol=1e-6, rtol=1e-5)


def test_unusable_inputs_are_one_line_errors():
    features = rank_features(world=1)[0]
    with pytest.raises(GDTLossError, match="hypothesis 3 needs features v, a, vR, aR; missing aR$"):
        gdt_loss({n: features[n] for n in ("v", "a", "vR")}, 3)
    with pytest.raises(GDTLossError, match="one of 1-9, got 10"):
        gdt_loss(features, 10)
    with pytest.raises(GDTLossError, match="every process needs the same batch"):
        gdt_loss(features, 1, gather=lambda local: torch.cat([local, local[:1]]))
    with pytest.raises(GDTLossError, match="rank 2 outside a world of 2"):
        gdt_loss(features, 1, gather=lambda local: torch.cat([local, local]), rank=2)


# ---------------------------------------------------------------------------------------------------------
# STiCA


def slow_stica_nce(feat_v, feat_a, others_v, others_a, t, symmetric=True):
    """main_stica.gdt_loss with the other processes' rows given."""
    av = slow_nce(feat_a, feat_v.detach(), others_v.detach(), t)
    if not symmetric:
        return av
    return 0.5 * (av + slow_nce(feat_v, feat_a.detach(), others_a.detach(), t))


def crop_set(generator: torch.Generator, large: int, small: int, batch: int = 3, dim: int = 8) -> CropEmbeddings:
    def unit():
        return F.normalize(torch.randn(batch, dim, generator=generator), dim=1)

    return CropEmbeddings([unit() for _ in range(large)], [unit() for _ in range(large * small)],
                          [unit() for _ in range(large)], [unit() for _ in range(large * small)])


def test_stica_loss_matches_the_official_crop_and_av_combination_on_two_processes():
    generator = torch.Generator().manual_seed(3)
    world, large, small = 2, 2, 2
    views = [[crop_set(generator, large, small) for _ in range(2)] for _ in range(world)]
    videos = [[F.normalize(torch.randn(3, 8, generator=generator), dim=1) for _ in range(2)] for _ in range(world)]
    audios = [[F.normalize(torch.randn(3, 8, generator=generator), dim=1) for _ in range(2)] for _ in range(world)]
    results = ThreadGroup(world).run(
        lambda r, gather: stica_loss(views[r][0], views[r][1], tuple(videos[r]), tuple(audios[r]), gather=gather, rank=r)
    )
    for rank, result in enumerate(results):
        other = 1 - rank

        def nce(get_v, get_a, t, symmetric=True, rank=rank, other=other):
            return slow_stica_nce(get_v(rank), get_a(rank), get_v(other), get_a(other), t, symmetric)

        crop_sum, count = 0.0, 0
        for kind in ("spatial", "temporal"):
            for i in range(large):
                if i == 1:  # large-large: index 1 only
                    crop_sum = crop_sum + nce(lambda r: getattr(views[r][1], f"{kind}_large")[i],
                                              lambda r: getattr(views[r][0], f"{kind}_large")[i], 0.5)
                    count += 1
                for j in range(small):  # small (view 2, j < S) against the detached large crop i (view 1)
                    crop_sum = crop_sum + nce(lambda r: getattr(views[r][0], f"{kind}_large")[i].detach(),
                                              lambda r: getattr(views[r][1], f"{kind}_small")[j], 0.5, symmetric=False)
                    count += 1
        crops = crop_sum / count
        av = 0.5 * sum(nce(lambda r, k=k: videos[r][k], lambda r, k=k: audios[r][k], 0.1) for k in range(2))
        torch.testing.assert_close(result.crops, crops, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.av, av, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.loss, 0.5 * crops + 0.5 * av, atol=1e-5, rtol=1e-5)
        assert set(result.crop_terms) == {"large", "small", "temporal_large", "temporal_small"}


def test_stica_without_crop_pairs_is_an_error_and_alpha_zero_drops_the_av_loss():
    generator = torch.Generator().manual_seed(4)
    lone = crop_set(generator, large=1, small=0)
    video = F.normalize(torch.randn(3, 8, generator=generator), dim=1)
    with pytest.raises(GDTLossError, match="no crop pairs"):
        stica_loss(lone, lone, (video, video), (video, video))
    pair = crop_set(generator, large=2, small=0)
    result = stica_loss(pair, pair, (video, video), (video, video), alpha=0.0)
    assert result.av.item() == 0.0 and torch.equal(result.loss, result.crops)
    audio = F.normalize(torch.randn(3, 8, generator=generator), dim=1)
    torch.testing.assert_close(cross_nce(video, audio, 0.5, symmetric=False), slow_nce(audio, video, video[:0], 0.5))
