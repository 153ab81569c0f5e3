"""Frozen embeddings of a model and the weighted k-NN classifier on them.

The embedding is the canonical pooled feature in front of the classifier
(``forward_head(forward_features(x), pre_logits=True)``: global average pool for CNNs, the class
token for ViT/DeiT), the one every evaluation protocol and pretraining monitor reads.

The k-NN classifier is the one of Wu et al. 2018 that DINO uses: L2-normalised features, cosine
similarity, the k most similar memory items vote with weight exp(similarity / T). Class scores
are the normalised votes, so they are probabilities that AUC and kappa can use; multi-label
targets get one vote per label over the neighbours whose label is known.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, D]: the feature the model's linear classifier sees."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def embed_loader(model: nn.Module, loader, device: torch.device,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled float32 features [N, D] and labels of every batch of ``loader``, in its order, on
    the CPU; the model runs in eval mode (frozen BatchNorm statistics) and float32."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for x, y in loader:
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features.append(pooled_features(model, x).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def knn_scores(memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, *,
               num_classes: int, k: int = 200, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted k-NN class scores of ``queries`` [N, D] against ``memory`` [M, D].

    ``memory_labels``: int [M] class indices (single-label: scores [N, num_classes] summing to 1),
    or float [M, K] with NaN for unknown (multi-label: scores [N, K], each the weighted share of
    positive neighbours among those whose label is known; 0.5 when none is). ``k`` is capped at M.
    """
    memory = nn.functional.normalize(memory.float(), dim=1)
    k = min(int(k), memory.shape[0])
    multilabel = memory_labels.is_floating_point() and memory_labels.ndim == 2
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = nn.functional.normalize(queries[start:start + chunk].float(), dim=1)
        similarity, index = (q @ memory.T).topk(k, dim=1)  # [n, k]
        weight = (similarity / temperature).exp()
        if multilabel:
            neighbour = memory_labels[index]  # [n, k, K]
            known = ~torch.isnan(neighbour)
            w = weight[:, :, None] * known
            positive = (w * torch.nan_to_num(neighbour)).sum(1)
            total = w.sum(1)
            out.append(torch.where(total > 0, positive / total.clamp_min(1e-30), torch.full_like(total, 0.5)))
        else:
            votes = torch.zeros(q.shape[0], num_classes)
            votes.scatter_add_(1, memory_labels.long().view(-1)[index], weight)
            out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out)


def knn_accuracy(memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, *, num_classes: int, k: int = 200,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy of :func:`knn_scores` (single-label tasks)."""
    scores = knn_scores(memory, memory_labels, queries, num_classes=num_classes, k=k, temperature=temperature)
    return float((scores.argmax(1) == query_labels.long().view(-1)).float().mean())


def embedding_spread(features: torch.Tensor) -> float:
    """How spread L2-normalised features are: mean per-dimension std × sqrt(D).

    About 1 for features spread over the sphere, 0 for a collapsed representation (every input
    mapped to the same point), the failure mode of non-contrastive SSL (lightly's collapse check).
    """
    normalised = nn.functional.normalize(features.float(), dim=1)
    return float(normalised.std(0).mean() * np.sqrt(normalised.shape[1]))
