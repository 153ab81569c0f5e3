"""DVME (Truong et al. 2021, "deep visual multi-embedding"): several frozen sources fused by a
small trained head. Each source's embedding [N, D_s] is standardised and projected to ``dim``;
the S projected embeddings of an image attend to each other (multi-head self-attention across
the sources, a residual and LayerNorm), are averaged over the sources and classified.

The head is non-convex, so unlike the linear probe it trains by AdamW epochs (cosine schedule) on
the cached features; the weight decay is chosen on the validation split. Input handling per
source (its size and normalisation) happened when its features were computed
(:mod:`medtransfer.protocols.features`), so sources of different widths fuse directly.
"""

from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn

from medtransfer.protocols.linear import Selection, labels_tensor, select_on_val, standardisation
from medtransfer.training.metrics import loss_function, scores_from_logits


class DVMEHead(nn.Module):
    """A list of S feature tensors [N, D_s] -> logits [N, K]."""

    def __init__(self, means: list[torch.Tensor], stds: list[torch.Tensor], num_outputs: int, *, dim: int = 512,
                 heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        for i, (mean, std) in enumerate(zip(means, stds)):
            self.register_buffer(f"mean{i}", mean)
            self.register_buffer(f"std{i}", std)
        self.n_sources = len(means)
        self.project = nn.ModuleList(nn.Linear(m.numel(), dim) for m in means)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.classify = nn.Linear(dim, num_outputs)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack([project((x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}"))
                              for i, (project, x) in enumerate(zip(self.project, features))], dim=1)  # [N, S, dim]
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.classify(self.norm(tokens + attended).mean(dim=1))


def fit_dvme(train: list[np.ndarray], y: np.ndarray, *, task: str, num_outputs: int, weight_decay: float,
             options: dict, seed: int) -> DVMEHead:
    """Train a DVME head on the training features of every source (same rows, same order)."""
    torch.manual_seed(seed)
    xs = [torch.as_tensor(x, dtype=torch.float32) for x in train]
    targets = labels_tensor(task, y, torch.float32)
    stats = [standardisation(x) for x in xs]
    head = DVMEHead([m for m, _ in stats], [s for _, s in stats], num_outputs, dim=int(options["dim"]),
                    heads=int(options["heads"]), dropout=float(options["dropout"]))
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
