"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' batch-normalised
projections pushed to the identity (off-diagonal weight lambda = 5e-3).
lightly: ``BarlowTwinsProjectionHead``, ``BarlowTwinsLoss``."""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from .base import SSLMethod, register_method


@register_method("barlowtwins")
class BarlowTwins(SSLMethod):
    uses = "lightly BarlowTwinsProjectionHead, BarlowTwinsLoss"

    def __init__(self, backbone, options, **kwargs) -> None:
        super().__init__(backbone, options, **kwargs)
        o = self.options
        self.projection = BarlowTwinsProjectionHead(self.feature_dim, o["proj_hidden_dim"], o["out_dim"])
        # the cross-correlation over the global batch under DDP
        self.criterion = BarlowTwinsLoss(lambda_param=o["lambda_param"], gather_distributed=self.distributed)

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        with self.autocast():
            z = [self.projection(self.embed(v)) for v in views[:2]]
        return self.criterion(z[0].float(), z[1].float())
