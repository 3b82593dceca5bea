"""Golden checks of the metric code: FiT t2v/v2t, Singularity itm_eval, EVL multi-view accuracy."""

from __future__ import annotations

import re

from vidlab.golden import GoldenCase, Mismatches, assert_tensor_close
from vidlab.tasks.classification import accuracy, average_views
from vidlab.tasks.retrieval import CaptionIndex, fit_retrieval_metrics, singularity_itm_eval

METRIC_ATOL = 1e-9  # the case's own tolerance: values as numpy/python compute them


def check_metrics(case: GoldenCase) -> None:
    tensors = case.tensors()
    out = Mismatches(case.name)

    def expect_close(where: str, got: dict[str, float], want: dict[str, float]) -> None:
        for key, value in want.items():
            ok = key in got and abs(got[key] - value) <= METRIC_ATOL
            out.expect(ok, f"{where} {key}: expected {value}, got {got.get(key)}")

    # Each section is optional: a case may check any of the three protocols, with cases of its own naming.
    for name, spec in case.spec.get("fit_metrics", {}).get("cases", {}).items():
        sims = tensors[f"input.fit.{name}.sims"]
        num_texts, num_videos = sims.shape
        captions = CaptionIndex.consecutive(num_videos, num_texts // num_videos)
        mask = tensors[spec["query_masks"]].reshape(-1).bool() if spec.get("query_masks") else None
        got = fit_retrieval_metrics(sims, captions, mask)
        expect_close(f"fit {name} t2v", got["t2v"], spec["t2v_metrics"])
        expect_close(f"fit {name} v2t", got["v2t"], spec["v2t_metrics"])

    for name, spec in case.spec.get("singularity_metrics", {}).get("cases", {}).items():
        scores_v2t = tensors[f"input.singularity.{name}.scores_i2t"]
        text_to_video = [spec["txt2img"][str(t)] for t in range(len(spec["txt2img"]))]
        captions = CaptionIndex.from_text_to_video(text_to_video, scores_v2t.shape[0])
        got = singularity_itm_eval(scores_v2t, tensors[f"input.singularity.{name}.scores_t2i"], captions)
        expect_close(f"singularity {name}", got, spec["itm_eval"])

    evl = case.spec.get("evl_multiview")
    if evl is not None:
        scores = average_views(tensors["input.evl.view_logits"])
        assert_tensor_close(scores, tensors["output.evl.view_mean_softmax_scores"], "evl view-averaged scores")
        ks = tuple(int(m.group(1)) for key in evl if (m := re.fullmatch(r"top(\d+)_percent", key)))
        got = accuracy(scores, tensors["input.evl.labels"], topk=ks)
        expect_close("evl multiview", {f"top{k}": got[f"top{k}"] for k in ks}, {f"top{k}": evl[f"top{k}_percent"] for k in ks})
    out.raise_if_any()
