"""ITC top-k then ITM re-ranking in both directions: -100 outside the top-k, chunking changes nothing, the
end-to-end evaluation on a tiny model reports both metric sets with its protocol, and the subset recalls count
texts with several ground-truth videos."""

from __future__ import annotations

import pytest
import torch

from vidlab.errors import ConfigError
from vidlab.models import create_model, model_config
from vidlab.tasks.rerank import NOT_RERANKED, evaluate_retrieval, extract_features, rerank_topk, retrieval_recalls
from vidlab.tasks.retrieval import CaptionIndex

ITC = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.3, 0.8, 0.1, 0.7], [0.2, 0.4, 0.6, 0.0]])  # 3 videos x 4 texts


def table_scorer(calls: list[int] | None = None):
    """ITM score of (video v, text t) under clip c = 100 c + 10 v + t: every value says where it came from."""

    def score(videos: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(len(videos))
        return torch.stack([100.0 * c + 10 * videos + texts for c in range(2)]).float()

    return score


def test_each_query_rescores_its_own_top_k_and_fills_the_rest():
    scores = rerank_topk(ITC, table_scorer(), k=2, ensemble="max")
    expected_v2t = torch.full((3, 4), NOT_RERANKED)
    for v, texts in enumerate([(0, 2), (1, 3), (2, 1)]):
        for t in texts:
            expected_v2t[v, t] = 100 + 10 * v + t
    expected_t2v = torch.full((4, 3), NOT_RERANKED)
    for t, videos in enumerate([(0, 1), (1, 2), (2, 0), (1, 0)]):
        for v in videos:
            expected_t2v[t, v] = 100 + 10 * v + t
    torch.testing.assert_close(scores.v2t_itm, expected_v2t)
    torch.testing.assert_close(scores.t2v_itm, expected_t2v)
    torch.testing.assert_close(scores.v2t_itc, ITC)
    torch.testing.assert_close(scores.t2v_itc, ITC.T)


def test_mean_ensemble_and_chunking():
    calls: list[int] = []
    one_by_one = rerank_topk(ITC, table_scorer(calls), k=3, ensemble="mean", pairs_per_call=1)
    assert max(calls) == 3  # one query's k pairs per call at least
    together = rerank_topk(ITC, table_scorer(), k=3, ensemble="mean", pairs_per_call=1000)
    torch.testing.assert_close(one_by_one.v2t_itm, together.v2t_itm)
    torch.testing.assert_close(one_by_one.t2v_itm, together.t2v_itm)
    assert together.v2t_itm[0, 0] == 50 + 0 + 0  # mean of 0 and 100


def test_k_and_the_pair_budget_must_be_positive():
    with pytest.raises(ConfigError, match="k >= 1"):
        rerank_topk(ITC, table_scorer(), k=0)
    with pytest.raises(ConfigError, match="pairs_per_call >= 1"):
        rerank_topk(ITC, table_scorer(), k=2, pairs_per_call=0)


def test_k_larger_than_the_gallery_rescores_everything():
    scores = rerank_topk(ITC, table_scorer(), k=128, ensemble="lse")
    assert (scores.v2t_itm != NOT_RERANKED).all() and (scores.t2v_itm != NOT_RERANKED).all()


def test_evaluate_retrieval_on_a_tiny_model_reports_itm_and_itc_with_the_protocol():
    torch.manual_seed(0)
    model = create_model(model_config("singularity-tiny")).eval()
    generator = torch.Generator().manual_seed(0)
    videos = [torch.randn(2, 3, 3, 32, 32, generator=generator) for _ in range(2)]
    ids = torch.randint(200, 900, (6, 8), generator=generator)
    mask = torch.ones_like(ids)
    captions = CaptionIndex.from_text_to_video([0, 0, 1, 2, 3, 3], 4)
    on_device = extract_features(model, videos, ids, mask, ensemble="concat", offload=False, text_batch_size=4)
    offloaded = extract_features(model, videos, ids, mask, ensemble="concat", offload=True)
    result = evaluate_retrieval(model, on_device, captions, k=2)
    again = evaluate_retrieval(model, offloaded, captions, k=2, pairs_per_call=2)
    torch.testing.assert_close(result.scores.v2t_itm, again.scores.v2t_itm)
    assert set(result.metrics) == {"itm", "itc"}
    assert set(result.metrics["itm"]) >= {"txt_r1", "img_r1", "r_mean"}
    assert (result.scores.v2t_itm == NOT_RERANKED).sum(dim=1).tolist() == [4, 4, 4, 4]
    assert "top-2 texts of each video" in result.protocol and "3 test frames" in result.protocol
    # the re-ranked entries are the model's ITM logits of those pairs
    v, t = 0, int(result.scores.v2t_itm[0].argmax())
    with torch.no_grad():
        text = model.text_features(ids[t : t + 1], mask[t : t + 1])
        logit = model.itm_logits(text.states, text.mask, model.video_features(videos[0][:1]).memory)[0, 1]
    torch.testing.assert_close(result.scores.v2t_itm[v, t], logit, atol=1e-5, rtol=1e-4)


def test_t2v_counts_the_best_gt_video_and_v2t_ranks_the_distinct_captions():
    """Texts A (gt videos 0-2) and B (3-5). ITC (video x text): A's best gt (video 1) ranks first; B's best gt
    (video 3) ranks third, behind videos 0 and 1 -> t2v R@1 50 %. v2t over the 2 captions: videos 1, 2, 3 rank
    their caption first, 0, 4, 5 second -> R@1 50 %."""
    itc = torch.tensor([[0.5, 0.8], [0.9, 0.7], [0.1, 0.0], [0.2, 0.6], [0.3, 0.1], [0.4, 0.2]])
    text_videos = torch.tensor([[0, 1, 2], [3, 4, 5]])
    true_pair = torch.zeros(6, 2)
    true_pair[[0, 1, 2], 0] = 1.0
    true_pair[[3, 4, 5], 1] = 1.0

    def oracle_itm(videos: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return (10.0 * true_pair[videos, texts] + itc[videos, texts])[None]  # one clip

    subsets = {"all": torch.arange(2), "temporal": torch.tensor([1])}
    metrics = retrieval_recalls(itc, oracle_itm, text_videos, subsets, k=6, ensemble="concat", pairs_per_call=64)
    assert metrics["itc/all/t2v_R1"] == 50.0 and metrics["itc/all/t2v_R5"] == 100.0
    assert metrics["itc/all/v2t_R1"] == 50.0 and metrics["itc/all/v2t_R5"] == 100.0
    assert metrics["itm/all/t2v_R1"] == 100.0 and metrics["itm/all/v2t_R1"] == 100.0  # every pair re-ranked
    # temporal = B only: t2v over all videos (its best gt third), v2t for B's videos among {B} alone
    assert metrics["itc/temporal/t2v_R1"] == 0.0 and metrics["itc/temporal/t2v_R5"] == 100.0
    assert metrics["itc/temporal/v2t_R1"] == 100.0

    # k = 1: B's top ITC video (0) is no gt; its gt videos stay at -100, tied behind it: average rank 1 + 4/2 = 3
    top1 = retrieval_recalls(itc, oracle_itm, text_videos, {"all": torch.arange(2)}, k=1, ensemble="concat", pairs_per_call=64)
    assert top1["itm/all/t2v_R1"] == 50.0 and top1["itm/all/t2v_R5"] == 100.0
