"""Every family answers the interface evaluations and inference commands rely on (`vidlab.models.interface`)."""

import pytest
import torch
import torch.nn.functional as F

from vidlab.losses.contrastive import cosine_similarity_matrix
from vidlab.models import create_model, create_model_with_report
from vidlab.models.interface import VideoClassifier, VideoTextModel


def _inputs(size: int, frames: int, vocab: int = 100):
    torch.manual_seed(0)
    video = torch.randn(3, frames, 3, size, size)
    ids = torch.randint(5, vocab, (4, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return video, ids, mask


@pytest.mark.parametrize("name", ["fit-tiny", "clip-tiny", "singularity-tiny"])
def test_video_text_models_embed_into_one_space_scored_by_inner_product(name):
    created = create_model_with_report(name, **({"num_frames": 2} if name == "singularity-tiny" else {}))
    model, cfg = created.model, created.config
    assert isinstance(model, VideoTextModel) and not isinstance(model, VideoClassifier)
    video, ids, mask = _inputs(cfg.video.img_size if name == "fit-tiny" else cfg.vision.image_size, 2)
    with torch.no_grad():
        videos, texts = model.encode_video(video), model.encode_text(ids, mask, normalize=True)
        assert videos.shape[0] == 3 and texts.shape == (4, videos.shape[1])
        torch.testing.assert_close(texts.norm(dim=-1), torch.ones(4))
        torch.testing.assert_close(model.encode_video(video, normalize=True), F.normalize(videos, dim=-1))
        scores = texts @ videos.T
        if name == "fit-tiny":  # the training loss's cosine of the raw embeddings
            text_raw, video_raw = model(video, ids, mask)
            expected = cosine_similarity_matrix(text_raw, video_raw)
            scores = texts @ F.normalize(videos, dim=-1).T
        elif name == "clip-tiny":  # the mean of per-frame cosines
            frames = F.normalize(model.encode_image(video.flatten(0, 1)), dim=-1).view(3, 2, -1)
            expected = torch.einsum("nd,vtd->nvt", texts, frames).mean(-1)
        else:  # Singularity's ITC score: the mean over frames of per-frame cosines
            pooled_video = model.encode_clips(video)[1]
            expected = model.similarity(pooled_video, model.text_features(ids, mask).pooled).T
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
        # an absent mask is all text; a given one changes the padded text's embedding (CLIP pools at its marker)
        torch.testing.assert_close(model.encode_text(ids[:1]), model.encode_text(ids[:1], mask[:1]))
        if name != "clip-tiny":
            assert not torch.allclose(model.encode_text(ids[1:2]), model.encode_text(ids[1:2], mask[1:2]))


def test_a_classifier_is_forward_features_then_forward_head():
    model = create_model("evl-tiny")
    assert isinstance(model, VideoClassifier)
    torch.manual_seed(0)
    video = torch.randn(2, model.decoder.num_frames, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(video)
        assert features.dim() == 2
        torch.testing.assert_close(model.forward_head(features), model(video))
