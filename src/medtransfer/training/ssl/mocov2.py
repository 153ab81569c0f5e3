"""MoCo v2 (Chen et al. 2020): a momentum key encoder, a queue of past keys as negatives,
InfoNCE at temperature 0.2, shuffled BN for the keys. lightly: ``MoCoProjectionHead``,
``NTXentLoss`` with a memory bank (the queue, a buffer), ``batch_shuffle``, ``update_momentum``."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle

from .base import SSLMethod, embed, frozen_copy, register_method


@register_method("mocov2")
class MoCoV2(SSLMethod):
    uses = "lightly MoCoProjectionHead, NTXentLoss(memory_bank_size), batch_shuffle, update_momentum"

    def __init__(self, backbone, options, **kwargs) -> None:
        super().__init__(backbone, options, **kwargs)
        o = self.options
        self.projection = MoCoProjectionHead(self.feature_dim, o["proj_hidden_dim"], o["out_dim"])
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projection = frozen_copy(self.projection)
        # under DDP every process enqueues every process's keys, so the queue is the one a single
        # process would hold
        self.criterion = NTXentLoss(temperature=o["temperature"],
                                    memory_bank_size=(int(o["queue_size"]), int(o["out_dim"])),
                                    gather_distributed=self.distributed)

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        query_view, key_view = views[0], views[1]
        with self.autocast():
            query = self.projection(self.embed(query_view))
            with torch.no_grad():
                if self.options["shuffle_bn"]:
                    key_view, shuffle = batch_shuffle(key_view, distributed=self.distributed)
                key = self.key_projection(embed(self.key_backbone, key_view))
                if self.options["shuffle_bn"]:
                    key = batch_unshuffle(key, shuffle, distributed=self.distributed)
        return self.criterion(query.float(), key.float())

    def after_step(self, step: int) -> None:
        # a constant momentum, as MoCo (no schedule)
        self.ema([(self.backbone, self.key_backbone), (self.projection, self.key_projection)], step)
