import math

import numpy as np
import pytest
import torch

from vidlab.bench.eval import official_fit_metrics
from vidlab.tasks.rerank import NOT_RERANKED
from vidlab.tasks.retrieval import (
    CaptionIndex,
    fit_retrieval_metrics,
    ranks_from_scores,
    ranks_in_chunks,
    recall_at,
    singularity_itm_eval,
    singularity_recalls,
    summarize_ranks,
)


def naive_rank(row: list[float], gts: list[int], ties: str) -> float:
    """Position of each GT in a descending order, ties optimistic or averaged, best GT."""
    best = math.inf
    for g in gts:
        better = sum(v > row[g] for v in row)
        equal = sum(v == row[g] for v in row)
        best = min(best, better + ((equal - 1) / 2 if ties == "average" else 0))
    return best


@pytest.mark.parametrize("ties", ["optimistic", "average"])
def test_ranks_match_naive_definition_with_ties_and_multiple_gts(ties):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (12, 9), generator=gen).float()  # many ties
    gts = [[i % 9, (i + 3) % 9] if i % 2 else [i % 9] for i in range(12)]
    gt_index = torch.tensor([g + [-1] * (2 - len(g)) for g in gts])
    got = ranks_from_scores(scores, gt_index, ties)
    want = [naive_rank(scores[i].tolist(), gts[i], ties) for i in range(12)]
    assert got.tolist() == want


@pytest.mark.parametrize("seed", range(4))
def test_fit_metrics_with_ties_and_several_captions_per_video_follow_the_official_semantics(seed):
    """Ties at the top of a v2t ranking average to 0.5 or more: R@5 but not R@1, as FiT's cols2metrics counts."""
    gen = torch.Generator().manual_seed(seed)
    num_videos, per_video = 24, 3
    sims = torch.randint(0, 6, (num_videos * per_video, num_videos), generator=gen).float()  # ties everywhere
    cap = CaptionIndex.consecutive(num_videos, per_video)
    mask = torch.rand(num_videos * per_video, generator=gen) > 0.1
    for text_mask in (None, mask):
        got = fit_retrieval_metrics(sims, cap, text_mask)
        want = official_fit_metrics(sims.numpy(), None if text_mask is None else text_mask.numpy())
        for direction in ("t2v", "v2t"):
            assert got[direction] == pytest.approx(want[direction]), (direction, text_mask is not None)
    tied_top = summarize_ranks(torch.tensor([0.5, 0.0, 3.0]))
    assert (tied_top["R1"], tied_top["R5"]) == (pytest.approx(100 / 3), 100.0)


def test_chunked_embeddings_equal_full_matrix():
    gen = torch.Generator().manual_seed(1)
    text, video = torch.randn(37, 8, generator=gen), torch.randn(11, 8, generator=gen)
    gt = torch.randint(0, 11, (37, 1), generator=gen)
    full = ranks_from_scores(text @ video.T, gt)
    for chunk in (1, 5, 37, 100):
        assert torch.equal(ranks_in_chunks((text, video), gt, chunk_size=chunk), full)
        assert torch.equal(ranks_in_chunks(text @ video.T, gt, chunk_size=chunk), full)


def test_gallery_mask_removes_candidates():
    scores = torch.tensor([[0.9, 0.5, 0.1]])
    gt = torch.tensor([[1]])
    assert ranks_in_chunks((torch.eye(1), scores.T), gt).item() == 1
    masked = ranks_in_chunks((torch.eye(1), scores.T), gt, gallery_mask=torch.tensor([False, True, True]))
    assert masked.item() == 0


def test_summary_values():
    m = summarize_ranks(torch.tensor([0.0, 0, 4, 9, 60]))
    assert (m["R1"], m["R5"], m["R10"], m["R50"]) == (40.0, 60.0, 80.0, 80.0)
    assert (m["MedR"], m["MeanR"]) == (5.0, 15.6)
    assert m["geometric_mean_R1-R5-R10"] == pytest.approx((40 * 60 * 80) ** (1 / 3))
    assert summarize_ranks(torch.tensor([3.0]))["geometric_mean_R1-R5-R10"] == 0.0


def test_recall_at_counts_ranks_below_k_and_is_nan_without_queries():
    assert recall_at(torch.tensor([0.0, 0.5, 1.0, 7.0]), (1, 2, 10)) == {1: 50.0, 2: 75.0, 10: 100.0}
    assert all(math.isnan(value) for value in recall_at(torch.empty(0), (1, 5)).values())


def test_caption_index_and_perfect_retrieval():
    cap = CaptionIndex.from_text_to_video([0, 0, 1, 2, 2, 2])
    assert cap.video_to_texts.tolist() == [[0, 1, -1], [2, -1, -1], [3, 4, 5]]
    sims = torch.full((6, 3), -1.0)
    sims[torch.arange(6), cap.text_to_video] = torch.arange(1.0, 7.0)  # distinct: FiT's v2t averages ties
    m = fit_retrieval_metrics(sims, cap)
    assert m["t2v"]["R1"] == m["v2t"]["R1"] == 100.0


def test_text_mask_drops_queries():
    cap = CaptionIndex.consecutive(2, 2)
    sims = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # texts 1 and 3 wrong
    mask = torch.tensor([True, False, True, False])
    assert fit_retrieval_metrics(sims, cap)["t2v"]["R1"] == 50.0
    assert fit_retrieval_metrics(sims, cap, mask)["t2v"]["R1"] == 100.0
    assert np.isfinite(fit_retrieval_metrics(sims, cap, mask)["v2t"]["MeanR"])


def test_singularity_ranks_are_positions_in_a_descending_numpy_argsort_ties_included():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (20, 15), generator=gen).float()  # ties everywhere
    scores[:, 4] = NOT_RERANKED  # and a block of -100s, as re-ranking leaves them
    gt = torch.randint(0, 15, (20, 2), generator=gen)
    gt[::3, 1] = -1
    official = []
    for row, gts in zip(scores.numpy(), gt.tolist()):
        order = np.argsort(row)[::-1]  # Singularity's itm_eval
        official.append(min(int(np.where(order == g)[0][0]) for g in gts if g >= 0))
    assert ranks_from_scores(scores, gt, "argsort").tolist() == official


def test_training_and_the_golden_check_compute_singularity_recalls_with_one_function():
    import vidlab.golden_checks.metrics as golden_metrics
    import vidlab.tasks.rerank as rerank
    import vidlab.tasks.retrieval as retrieval

    assert rerank.singularity_recalls is retrieval.singularity_recalls
    assert golden_metrics.singularity_itm_eval is retrieval.singularity_itm_eval
    gen = torch.Generator().manual_seed(5)
    v2t, t2v = torch.randn(6, 9, generator=gen), torch.randn(9, 6, generator=gen)
    captions = CaptionIndex.from_text_to_video([0, 0, 1, 2, 3, 3, 4, 5, 5], 6)
    unrounded = singularity_recalls(v2t, captions.video_to_texts, t2v, captions.text_to_video)
    assert singularity_itm_eval(v2t, t2v, captions) == {
        "txt_r1": round(unrounded["v2t_R1"], 2), "txt_r5": round(unrounded["v2t_R5"], 2),
        "txt_r10": round(unrounded["v2t_R10"], 2), "txt_r_mean": round(unrounded["v2t_Rmean"], 2),
        "img_r1": round(unrounded["t2v_R1"], 2), "img_r5": round(unrounded["t2v_R5"], 2),
        "img_r10": round(unrounded["t2v_R10"], 2), "img_r_mean": round(unrounded["t2v_Rmean"], 2),
        "r_mean": round(unrounded["r_mean"], 2),
    }
