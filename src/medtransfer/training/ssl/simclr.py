"""SimCLR (Chen et al. 2020): two views, a 2-layer MLP projection, NT-Xent over the batch.
lightly: ``SimCLRProjectionHead``, ``NTXentLoss`` (``gather_distributed`` under DDP)."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from .base import SSLMethod, register_method


@register_method("simclr")
class SimCLR(SSLMethod):
    uses = "lightly SimCLRProjectionHead, NTXentLoss"

    def __init__(self, backbone, options, **kwargs) -> None:
        super().__init__(backbone, options, **kwargs)
        o = self.options
        self.projection = SimCLRProjectionHead(self.feature_dim, o["proj_hidden_dim"], o["out_dim"])
        # negatives from every process's images: the global batch, as in one process
        self.criterion = NTXentLoss(temperature=o["temperature"], gather_distributed=self.distributed)

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        with self.autocast():
            z = [self.projection(self.embed(v)) for v in views[:2]]
        return self.criterion(z[0].float(), z[1].float())
