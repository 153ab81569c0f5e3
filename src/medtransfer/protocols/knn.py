"""The k-NN protocol: weighted k-NN on L2-normalised frozen features (Wu et al. 2018; DINO's
evaluation): the k nearest training examples by cosine similarity vote with weight
exp(cos / T); class scores are the normalised votes, so AUC and kappa apply as to any
classifier. Multi-label: one vote per label among the neighbours whose label is known.
The classifier itself is :func:`medtransfer.models.embedding.knn_scores` (also the SSL monitor's).
"""

from __future__ import annotations

import numpy as np
import torch

from medtransfer.models.embedding import knn_scores


def knn_predict(memory: np.ndarray, memory_labels: np.ndarray, queries: np.ndarray, *, task: str,
                num_classes: int, k: int, temperature: float) -> np.ndarray:
    """Scores [N, K] of ``queries`` [N, D] against ``memory`` [M, D] (labels as the cache stores them)."""
    labels = torch.as_tensor(memory_labels)
    labels = labels.float() if task == "multilabel" else labels.long().view(-1)
    scores = knn_scores(torch.as_tensor(memory), labels, torch.as_tensor(queries), num_classes=num_classes,
                        k=k, temperature=temperature)
    return scores.double().numpy()
