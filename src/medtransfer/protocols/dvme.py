"""DVME (Truong et al. 2021, "deep visual multi-embedding") under the linear protocol: the head of
:class:`medtransfer.models.fusion.DVMEHead` trained on the cached frozen features of its sources
(standardised with their training-subset statistics).

The head is non-convex, so unlike the linear probe it trains by AdamW epochs (cosine schedule) on
the cached features; the weight decay is chosen on the validation split. Input handling per
source (its size and normalisation) happened when its features were computed
(:mod:`medtransfer.protocols.features`), so sources of different widths fuse directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medtransfer.models.fusion import DVMEHead, fusion_head
from medtransfer.protocols.linear import Selection, labels_tensor, select_on_val, standardisation
from medtransfer.training.metrics import loss_function, scores_from_logits


def fit_dvme(train: list[np.ndarray], y: np.ndarray, *, task: str, num_outputs: int, weight_decay: float,
             options: dict, seed: int) -> DVMEHead:
    """Train a DVME head on the training features of every source (same rows, same order)."""
    torch.manual_seed(seed)
    xs = [torch.as_tensor(x, dtype=torch.float32) for x in train]
    targets = labels_tensor(task, y, torch.float32)
    stats = [standardisation(x) for x in xs]
    head = fusion_head("DVME", [x.shape[1] for x in xs], num_outputs, **options)
    head.set_standardisation([m for m, _ in stats], [s for _, s in stats])
    optimizer = torch.optim.AdamW(head.parameters(), lr=float(options["lr"]), weight_decay=weight_decay)
    n, batch = len(targets), int(options["batch_size"])
    steps = int(options["epochs"]) * math.ceil(n / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(int(options["epochs"])):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            loss = loss_function(task, head([x[rows] for x in xs]), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def dvme_scores(head: DVMEHead, features: list[np.ndarray], task: str) -> np.ndarray:
    logits = head([torch.as_tensor(x, dtype=torch.float32) for x in features])
    return scores_from_logits(task, logits).double().numpy()


def select_dvme(train: tuple[list[np.ndarray], np.ndarray], val: tuple[list[np.ndarray], np.ndarray], *,
                task: str, num_outputs: int, options: dict, seed: int) -> Selection:
    """The DVME head of the validation-chosen weight decay of ``options["weight_decays"]`` (``.head``)."""
    return select_on_val(
        options["weight_decays"],
        lambda wd: fit_dvme(*train, task=task, num_outputs=num_outputs, weight_decay=wd, options=options, seed=seed),
        lambda head: dvme_scores(head, val[0], task), val[1], task)
