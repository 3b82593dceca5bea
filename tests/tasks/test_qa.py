"""Answer-list ranking (faithful official scoring and the corrected one), exact-match accuracy and multiple
choice by ITM score."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidlab.errors import ConfigError
from vidlab.models import create_model, model_config
from vidlab.tasks.qa import exact_match_accuracy, multiple_choice_accuracy, multiple_choice_scores, rank_answer_list

# Answer list: [CLS] first-token ... ; the fake decoder only looks at the first token and the clip.
ANSWERS = torch.tensor([[101, 5, 102], [101, 6, 102], [101, 7, 102], [101, 5, 9]])
MASK = torch.ones_like(ANSWERS)


class TableDecoder:
    """Start logits over a 10-token vocabulary and answer NLLs that depend on (clip, answer) only."""

    start = torch.tensor([[0.0] * 5 + [2.0, 1.0, 0.5] + [0.0] * 2, [0.0] * 5 + [0.0, 3.0, 0.0] + [0.0] * 2])
    nll = torch.tensor([[1.0, 0.2, 3.0, 0.5], [2.0, 2.5, 0.1, 0.3]])  # (clip, answer)

    def answer_start_logits(self, question_states, question_mask, start_ids):
        assert torch.equal(start_ids, torch.full((1, 1), 101))
        return self.start[int(question_states[0, 0, 0])][None]

    def answer_nll(self, question_states, question_mask, answer_ids, answer_mask):
        rows = [int(next(i for i, a in enumerate(ANSWERS) if torch.equal(a, ids))) for ids in answer_ids]
        return self.nll[int(question_states[0, 0, 0])][rows]


def clip_states(clips):
    return [torch.full((1, 2, 4), float(c)) for c in clips]


def test_faithful_scoring_counts_the_first_token_twice():
    ids, probs = rank_answer_list(TableDecoder(), clip_states([0]), torch.ones(1, 2), ANSWERS, MASK, k=4)
    first = F.softmax(TableDecoder.start[0], 0)[[5, 6, 7, 5]]
    expected = F.softmax(first.log() - TableDecoder.nll[0], 0)
    order = expected.argsort(descending=True)
    assert ids[0].tolist() == order.tolist()
    torch.testing.assert_close(probs[0], expected[order])


def test_corrected_scoring_is_the_sequence_likelihood():
    ids, probs = rank_answer_list(
        TableDecoder(), clip_states([0]), torch.ones(1, 2), ANSWERS, MASK, k=4, scoring="corrected"
    )
    expected = F.softmax(-TableDecoder.nll[0], 0)
    assert ids[0].tolist() == expected.argsort(descending=True).tolist()
    torch.testing.assert_close(probs[0], expected.sort(descending=True).values)


def test_first_token_prefilter_keeps_the_k_most_probable_first_tokens():
    ids, _ = rank_answer_list(
        TableDecoder(), clip_states([0]), torch.ones(1, 2), ANSWERS, MASK, k=2, scoring="corrected"
    )
    assert sorted(ids[0].tolist()) == [0, 3]  # both start with token 5, the most probable first token


def test_faithful_ensemble_softmaxes_the_combined_probabilities_again():
    ids, probs = rank_answer_list(
        TableDecoder(), clip_states([0, 1]), torch.ones(1, 2), ANSWERS, MASK, k=4, ensemble="mean"
    )
    mean_probs = (F.softmax(TableDecoder.start[0], 0) + F.softmax(TableDecoder.start[1], 0)) / 2
    first = F.softmax(mean_probs, 0)[[5, 6, 7, 5]]
    expected = F.softmax(((first.log() - TableDecoder.nll[0]) + (first.log() - TableDecoder.nll[1])) / 2, 0)
    torch.testing.assert_close(probs[0], expected[ids[0]])
    assert ids[0].tolist() == expected.argsort(descending=True).tolist()


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="faithful"):
        rank_answer_list(TableDecoder(), clip_states([0]), torch.ones(1, 2), ANSWERS, MASK, k=2, scoring="exact")
    with pytest.raises(ConfigError, match="k must lie"):
        rank_answer_list(TableDecoder(), clip_states([0]), torch.ones(1, 2), ANSWERS, MASK, k=5)


def test_exact_match_accuracy():
    assert exact_match_accuracy(["dog", "cat", "two"], ["dog", "cats", "two"]) == pytest.approx(200 / 3)
    with pytest.raises(ConfigError):
        exact_match_accuracy(["dog"], ["dog", "cat"])


def test_multiple_choice_picks_the_option_with_the_highest_itm_logit():
    torch.manual_seed(0)
    model = create_model(model_config("singularity-tiny")).eval()
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 3, 32, 32, generator=generator)
    options = torch.randint(200, 900, (2, 5, 8), generator=generator)
    mask = torch.ones_like(options)
    scores = multiple_choice_scores(model, video, options, mask, ensemble="max")
    assert scores.shape == (2, 5)
    with torch.no_grad():
        frames = model.frame_features(video[1:2])
        text = model.text_features(options[1, 3:4], mask[1, 3:4])
        per_frame = [model.itm_logits(text.states, text.mask, frames.tokens[:, f])[0, 1] for f in range(3)]
    torch.testing.assert_close(scores[1, 3], torch.stack(per_frame).max(), atol=1e-5, rtol=1e-4)
    assert multiple_choice_accuracy(scores, scores.argmax(1)) == 100.0
    assert multiple_choice_accuracy(scores, (scores.argmax(1) + 1) % 5) == 0.0
