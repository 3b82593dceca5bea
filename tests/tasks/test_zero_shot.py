"""Zero-shot classification from class-name prompts with a (tiny, random) CLIP and a test tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from vidlab.errors import ConfigError
from vidlab.models import create_model
from vidlab.models.errors import ModelInputError
from vidlab.tasks.zero_shot import ZeroShotClassifier, class_embeddings

START, END, LENGTH = 998, 999, 12  # clip-tiny's vocabulary has 1000 ids; end-of-text is the highest


def word_tokenizer(texts: Sequence[str]) -> torch.Tensor:
    """Words -> ids 1..997 by a fixed character sum, framed by start/end tokens, zero-padded (CLIP's layout)."""
    rows = torch.zeros(len(texts), LENGTH, dtype=torch.long)
    for row, text in enumerate(texts):
        words = [1 + sum(map(ord, word)) % 997 for word in text.lower().split()][: LENGTH - 2]
        rows[row, : len(words) + 2] = torch.tensor([START, *words, END])
    return rows


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_model("clip-tiny")


def test_class_embedding_is_the_normalised_mean_of_normalised_prompt_embeddings(clip):
    templates = ("a photo of a {}.", "a video of someone {}.")
    embeds = class_embeddings(clip, ["cat", "playing drums"], word_tokenizer, templates, batch_size=3)
    with torch.no_grad():
        for row, name in enumerate(["cat", "playing drums"]):
            prompts = F.normalize(clip.encode_text(word_tokenizer([t.format(name) for t in templates])), dim=-1)
            torch.testing.assert_close(embeds[row], F.normalize(prompts.mean(0), dim=0))
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))


def test_classifier_scores_images_and_videos_by_scaled_cosine(clip):
    classes = ["archery", "bowling", "juggling"]
    classifier = ZeroShotClassifier(clip, classes, word_tokenizer)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = classifier(images)
        expected = clip.logit_scale.exp() * F.normalize(clip.encode_image(images), dim=-1) @ classifier.class_embeds.T
        still_video = classifier(images[:, None].expand(2, 4, 3, 32, 32))
        video = torch.randn(2, 4, 3, 32, 32)
        frames = F.normalize(clip.encode_image(video.flatten(0, 1)), dim=-1).view(2, 4, -1)
        video_expected = F.normalize(frames.mean(1), dim=-1)
        video_got = clip.encode_video(video, normalize=True)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(still_video, logits, atol=1e-4, rtol=1e-4)  # a still video scores as its frame
    torch.testing.assert_close(video_got, video_expected)
    assert logits.shape == (2, 3)


def test_class_order_only_permutes_the_scores(clip):
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        forward = ZeroShotClassifier(clip, ["a", "b", "c"], word_tokenizer)(images)
        backward = ZeroShotClassifier(clip, ["c", "b", "a"], word_tokenizer)(images)
    torch.testing.assert_close(backward, forward.flip(-1))


@pytest.mark.parametrize(
    "classes, templates, match",
    [
        ([], ("a photo of a {}.",), "at least one class name"),
        (["cat"], (), "at least one prompt template"),
        (["cat"], ("a photo of a cat.",), "exactly one '{}'"),
    ],
)
def test_bad_prompts_raise_config_errors(clip, classes, templates, match):
    with pytest.raises(ConfigError, match=match):
        class_embeddings(clip, classes, word_tokenizer, templates)


def test_tokenizer_returning_no_tensor_is_reported(clip):
    with pytest.raises(ModelInputError, match=r"the tokenizer must return a \(1, L\) tensor of token ids, got list"):
        class_embeddings(clip, ["cat"], lambda texts: [[START, END]])
