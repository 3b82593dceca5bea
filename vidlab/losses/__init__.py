"""Losses shared by the recipes (contrastive, matching, masked modelling)."""

from vidlab.losses.contrastive import NormSoftmaxLoss, cosine_similarity_matrix, norm_softmax_loss, nt_xent_loss

__all__ = ["NormSoftmaxLoss", "cosine_similarity_matrix", "norm_softmax_loss", "nt_xent_loss"]
