"""BYOL (Grill et al. 2020): online network with a predictor against an EMA target, the
symmetric 2 - 2 cos loss, target momentum from its base value to 1 on a cosine schedule.
lightly: ``BYOLProjectionHead``, ``BYOLPredictionHead``, ``NegativeCosineSimilarity``,
``update_momentum``, ``cosine_schedule``."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from .base import SSLMethod, embed, frozen_copy, register_method


@register_method("byol")
class BYOL(SSLMethod):
    uses = "lightly BYOLProjectionHead, BYOLPredictionHead, NegativeCosineSimilarity, update_momentum"

    def __init__(self, backbone, options, **kwargs) -> None:
        super().__init__(backbone, options, **kwargs)
        o = self.options
        self.projection = BYOLProjectionHead(self.feature_dim, o["proj_hidden_dim"], o["out_dim"])
        self.prediction = BYOLPredictionHead(o["out_dim"], o["pred_hidden_dim"], o["out_dim"])
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projection = frozen_copy(self.projection)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        with self.autocast():
            p = [self.prediction(self.projection(self.embed(v))) for v in views[:2]]
            with torch.no_grad():
                z = [self.target_projection(embed(self.target_backbone, v)) for v in views[:2]]
        # NegativeCosineSimilarity is -cos; 2 - 2 cos differs by a constant and a factor of 2
        return 0.5 * (self.criterion(p[0].float(), z[1].float()) + self.criterion(p[1].float(), z[0].float()))

    def after_step(self, step: int) -> None:
        self.ema([(self.backbone, self.target_backbone), (self.projection, self.target_projection)], step)
