"""Evaluation protocols: how a source (an init) is judged on a target.

- ``finetune``: the whole network trains (``medtransfer.training.finetune``; the study's runs).
- ``linear``: the backbone stays frozen; its pooled features are computed once per
  (dataset, architecture, init) and split (:mod:`.features`) and a linear classifier is fitted
  on them (:mod:`.linear`), with the weight decay chosen on the validation split.
- ``knn``: a weighted k-NN on the same frozen features (:mod:`.knn`).

This module is torch-free (the Snakefile imports the names through ``medtransfer.grid``); the
work is in :func:`medtransfer.protocols.probe.probe` and
:func:`medtransfer.protocols.features.extract_features`.
"""

from __future__ import annotations

from typing import Any

#: Every protocol a study can list under ``study.protocols`` (finetune is the default).
PROTOCOLS: tuple[str, ...] = ("finetune", "linear", "knn")
#: Protocols that read frozen features instead of training the network.
FROZEN_PROTOCOLS: tuple[str, ...] = ("linear", "knn")

#: ``linear:`` config defaults. The head is fitted to convergence by L-BFGS (a convex problem,
#: so no learning rate to tune); ``weight_decays`` is the validation-chosen grid of the L2
#: penalty (per example: loss + wd / 2 * ||W||^2), log-spaced as in the linear evaluations of
#: SimCLR / Kornblith et al. 2019.
LINEAR_DEFAULTS: dict[str, Any] = {
    "weight_decays": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
    "max_iter": 500,
    "standardize": True,
}
#: ``knn:`` config defaults: the weighted k-NN of Wu et al. 2018 / DINO (votes exp(cos / T)).
#: ``cap_k``: when the training subset has fewer than k examples, use them all instead of
#: stopping (small fractions of small datasets); the k used is in metrics.json.
KNN_DEFAULTS: dict[str, Any] = {"k": 200, "temperature": 0.07, "cap_k": False}
#: ``dvme:`` config defaults (Truong et al. 2021): each source's embedding projected to ``dim``,
#: ``heads``-head self-attention across the sources, mean over sources, a linear classifier;
#: trained on the cached frozen features with AdamW (cosine schedule), the weight decay chosen on
#: the validation split from ``weight_decays``.
DVME_DEFAULTS: dict[str, Any] = {
    "dim": 512, "heads": 8, "epochs": 100, "batch_size": 256, "lr": 1e-3,
    "weight_decays": [1e-4, 1e-2], "dropout": 0.0,
}
