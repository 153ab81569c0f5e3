"""SwAV (Caron et al. 2020): a projection onto L2-normalised prototypes; each global view's codes
(Sinkhorn-Knopp, 3 iterations, epsilon 0.05) are predicted from every other view, global and
local (multi-crop); prototypes re-normalised every step and frozen during the first epoch.
lightly: ``SwaVProjectionHead``, ``SwaVPrototypes``, ``SwaVLoss`` (its Sinkhorn), and
``MemoryBankModule`` for the queue.

The queue: the paper trains with batches of 256 only with a queue of the last 3,840 projected
global-view features (per global view), scored against the current prototypes and appended to the
batch before Sinkhorn, so the equipartition constraint spreads over 4,096 samples instead of 256;
it is switched on after ``queue_start_epoch`` epochs, once the queue holds real features
(``queue_size: 0`` turns it off). Without it, a 256-image batch against 512 prototypes sits in
the uniform-code plateau (loss near log K) for most of a 30-epoch CPU run: docs/real-checks.md,
"Real check: self-supervised pretraining on CIFAR-10".
"""

from __future__ import annotations

import torch
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule

from .base import SSLMethod, register_method


@register_method("swav")
class SwAV(SSLMethod):
    uses = "lightly SwaVProjectionHead, SwaVPrototypes, SwaVLoss (Sinkhorn-Knopp)"
    unused_parameters = True  # the prototypes take no gradient while frozen (the first epoch)

    def __init__(self, backbone, options, **kwargs) -> None:
        super().__init__(backbone, options, **kwargs)
        o = self.options
        self.projection = SwaVProjectionHead(self.feature_dim, o["proj_hidden_dim"], o["out_dim"])
        self.prototypes = SwaVPrototypes(o["out_dim"], int(o["n_prototypes"]),
                                         n_steps_frozen_prototypes=int(o["freeze_prototypes_epochs"])
                                         * self.steps_per_epoch)
        self.criterion = SwaVLoss(temperature=o["temperature"], sinkhorn_iterations=int(o["sinkhorn_iterations"]),
                                  sinkhorn_epsilon=o["sinkhorn_epsilon"],
                                  sinkhorn_gather_distributed=self.distributed)  # equipartition over the global batch
        self.queues = torch.nn.ModuleList(
            MemoryBankModule((int(o["queue_size"]), o["out_dim"]), feature_dim_first=False,
                             gather_distributed=self.distributed)
            for _ in range(2)) if int(o["queue_size"]) > 0 else None

    def _queue_scores(self, z: list[torch.Tensor], step: int) -> list[torch.Tensor] | None:
        """Prototype scores of the queued features of each global view (before this batch enters)."""
        if self.queues is None:
            return None
        banks = [queue(view.detach(), update=True)[1] for queue, view in zip(self.queues, z[:2])]
        if step // self.steps_per_epoch < int(self.options["queue_start_epoch"]):
            return None
        with torch.no_grad():
            return [self.prototypes(bank.to(z[0].dtype), step).float() for bank in banks]

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        self.prototypes.normalize()
        with self.autocast():
            z = [torch.nn.functional.normalize(self.projection(self.embed(v)).float(), dim=1) for v in views]
        scores = [self.prototypes(v, step).float() for v in z]
        return self.criterion(scores[:2], scores[2:], queue_outputs=self._queue_scores(z, step))
