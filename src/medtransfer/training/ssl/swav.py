"""SwAV (Caron et al. 2020): a projection onto L2-normalised prototypes; each global view's codes
(Sinkhorn-Knopp, 3 iterations, epsilon 0.05) are predicted from every other view, global and
local (multi-crop); prototypes re-normalised every step and frozen during the first epoch.
lightly: ``SwaVProjectionHead``, ``SwaVPrototypes``, ``SwaVLoss`` (its Sinkhorn).
Not here: SwAV's queue of past codes for small batches (the paper adds it below 256 images per
batch on ImageNet; our CIFAR-scale runs use batch 256 without it)."""

from __future__ import annotations

import torch
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

from .base import METHODS, SSLMethod


@METHODS.register("swav")
class SwAV(SSLMethod):
    name = "swav"
    uses = "lightly SwaVProjectionHead, SwaVPrototypes, SwaVLoss (Sinkhorn-Knopp)"

    def __init__(self, backbone, options, **kwargs) -> None:
        super().__init__(backbone, options, **kwargs)
        o = self.options
        self.projection = SwaVProjectionHead(self.feature_dim, o["proj_hidden_dim"], o["out_dim"])
        self.prototypes = SwaVPrototypes(o["out_dim"], int(o["n_prototypes"]),
                                         n_steps_frozen_prototypes=int(o["freeze_prototypes_epochs"])
                                         * self.steps_per_epoch)
        self.criterion = SwaVLoss(temperature=o["temperature"], sinkhorn_iterations=int(o["sinkhorn_iterations"]),
                                  sinkhorn_epsilon=o["sinkhorn_epsilon"])

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        self.prototypes.normalize()
        with self.autocast():
            z = [torch.nn.functional.normalize(self.projection(self.embed(v)).float(), dim=1) for v in views]
        scores = [self.prototypes(v, step).float() for v in z]
        return self.criterion(scores[:2], scores[2:])
