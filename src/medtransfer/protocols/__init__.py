"""Evaluation protocols: how a source (an init) is judged on a target.

- ``finetune``: the whole network trains (``medtransfer.training.finetune``; the study's runs).
- ``linear``: the backbone stays frozen; its pooled features are computed once per
  (dataset, architecture, init) and split (:mod:`.features`) and a linear classifier is fitted
  on them (:mod:`.linear`), with the weight decay chosen on the validation split.
- ``knn``: a weighted k-NN on the same frozen features (:mod:`.knn`).
- ``lpft``: linear probing, then fine-tuning (Kumar et al. 2022; Juodelyte et al. 2024's freeze
  → fine-tune): the head trains on the frozen backbone with the ``lpft:`` settings over
  ``train:``, then every layer with ``train:``, both through the fine-tuning trainer
  (:func:`medtransfer.training.finetune.finetune` with the spec's ``lpft``).

This module is torch-free (the Snakefile imports the names through the planner); the work is
in :func:`medtransfer.protocols.probe.probe` and :func:`medtransfer.protocols.features.extract_features`.

Public API (one table, the rest derived from it)::

    PROTOCOL_TABLE: dict[str, Protocol]   # name -> Protocol(name, frozen_features, command, defaults)
    PROTOCOLS: tuple[str, ...]            # ("finetune", "linear", "knn", "lpft"), the table's order
    FROZEN_PROTOCOLS: tuple[str, ...]     # ("linear", "knn")
    LINEAR_DEFAULTS, KNN_DEFAULTS         # PROTOCOL_TABLE[name].defaults
    LPFT_DEFAULTS                         # its first phase's training keys over train:
    DVME_DEFAULTS                         # the DVME fusion's options (an init, not a protocol)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Protocol:
    """One protocol of ``study.protocols`` and what the planner needs to know to plan its runs.

    ``frozen_features``: it reads the cached frozen features of an init (the ``features`` job)
    instead of training the network. ``command``: the ``medtransfer`` subcommand that runs one of
    its jobs. ``defaults``: its options under the config key of its name (``linear:``, ``knn:``,
    ``lpft:``); None for finetune, whose options are the study's ``train:``.
    """

    name: str
    frozen_features: bool
    command: str
    defaults: dict[str, Any] | None = None


#: Every protocol a study can list under ``study.protocols``, in the order tables and figures list
#: them (finetune, the default, first). A new protocol is a row here, its job, and its rule.
PROTOCOL_TABLE: dict[str, Protocol] = {protocol.name: protocol for protocol in (
    Protocol("finetune", frozen_features=False, command="finetune"),
    # The head is fitted to convergence by L-BFGS (a convex problem, so no learning rate to tune);
    # ``weight_decays`` is the validation-chosen grid of the L2 penalty (per example:
    # loss + wd / 2 * ||W||^2), log-spaced as in the linear evaluations of SimCLR / Kornblith et al. 2019.
    Protocol("linear", frozen_features=True, command="probe", defaults={
        "weight_decays": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        "max_iter": 500,
        "standardize": True,
    }),
    # The weighted k-NN of Wu et al. 2018 / DINO (votes exp(cos / T)). ``cap_k``: when the training
    # subset has fewer than k examples, use them all instead of stopping (small fractions of small
    # datasets); the k used is in metrics.json.
    Protocol("knn", frozen_features=True, command="probe", defaults={"k": 200, "temperature": 0.07, "cap_k": False}),
    # The `lpft:` section is a training section of its first phase, merged over `train:` after these.
    # select_on last: Juodelyte et al.'s Keras fit of the frozen phase keeps its last weights
    # (EarlyStopping without restore_best_weights, no checkpoint; DovileDo/revisiting-transfer
    # src/fine-tuning.py), and the second phase starts from them.
    Protocol("lpft", frozen_features=False, command="finetune", defaults={"select_on": "last"}),
)}

PROTOCOLS: tuple[str, ...] = tuple(PROTOCOL_TABLE)
FROZEN_PROTOCOLS: tuple[str, ...] = tuple(name for name, p in PROTOCOL_TABLE.items() if p.frozen_features)
#: ``linear:`` / ``knn:`` config defaults.
LINEAR_DEFAULTS: dict[str, Any] = PROTOCOL_TABLE["linear"].defaults
KNN_DEFAULTS: dict[str, Any] = PROTOCOL_TABLE["knn"].defaults
#: ``lpft:`` defaults (over ``train:``) of the lpft protocol's first phase.
LPFT_DEFAULTS: dict[str, Any] = PROTOCOL_TABLE["lpft"].defaults

#: ``dvme:`` config defaults (Truong et al. 2021): each source's embedding projected to ``dim``,
#: ``heads``-head self-attention across the sources, mean over sources, a linear classifier;
#: trained on the cached frozen features with AdamW (cosine schedule), the weight decay chosen on
#: the validation split from ``weight_decays``.
DVME_DEFAULTS: dict[str, Any] = {
    "dim": 512, "heads": 8, "epochs": 100, "batch_size": 256, "lr": 1e-3,
    "weight_decays": [1e-4, 1e-2], "dropout": 0.0,
}
