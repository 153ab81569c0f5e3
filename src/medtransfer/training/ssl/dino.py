"""DINO (Caron et al. 2021): self-distillation of a student into an EMA teacher over multi-crop
views; the teacher's outputs are centred (running mean, momentum 0.9) and sharpened (low
temperature); the last layer of the head is frozen in the first epoch. The teacher is what DINO
evaluates and releases, so it is the exported backbone. lightly: ``DINOProjectionHead``,
``DINOLoss`` (centre as a buffer), ``update_momentum``, ``cosine_schedule``."""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead

from lightly.models.utils import deactivate_requires_grad

from .base import SSLMethod, embed, frozen_copy, register_method


@register_method("dino")
class DINO(SSLMethod):
    uses = "lightly DINOProjectionHead, DINOLoss, update_momentum, cosine_schedule"

    def __init__(self, backbone, options, **kwargs) -> None:
        super().__init__(backbone, options, **kwargs)
        o = self.options
        def make_head() -> DINOProjectionHead:
            return DINOProjectionHead(self.feature_dim, o["proj_hidden_dim"], o["bottleneck_dim"], o["out_dim"],
                                      batch_norm=bool(o["head_batch_norm"]))

        self.head = make_head()
        self.teacher_backbone = frozen_copy(self.backbone)
        # the head's weight-normalised last layer cannot be deep-copied: build a twin, copy the weights
        self.teacher_head = make_head()
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=o["out_dim"], teacher_temp=o["teacher_temp"],
                                  warmup_teacher_temp=o["warmup_teacher_temp"],
                                  warmup_teacher_temp_epochs=max(0, int(o["warmup_teacher_temp_epochs"])),
                                  student_temp=o["student_temp"], center_momentum=o["center_momentum"])

    def teacher_temp(self, step: int) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up epochs."""
        o = self.options
        warmup_steps = int(o["warmup_teacher_temp_epochs"]) * self.steps_per_epoch
        if step >= warmup_steps:
            return float(o["teacher_temp"])
        return float(o["warmup_teacher_temp"]) + (step / warmup_steps) * (
            float(o["teacher_temp"]) - float(o["warmup_teacher_temp"]))

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        global_views = views[:2]
        with self.autocast():
            with torch.no_grad():
                teacher = [self.teacher_head(embed(self.teacher_backbone, v)) for v in global_views]
            student = [self.head(self.embed(v)) for v in views]
        return self.criterion([t.float() for t in teacher], [s.float() for s in student],
                              teacher_temp=self.teacher_temp(step))

    def before_step(self, step: int) -> None:
        epoch = step // max(1, self.steps_per_epoch)
        self.head.cancel_last_layer_gradients(epoch if epoch < int(self.options["freeze_last_layer_epochs"]) else -1)

    def after_step(self, step: int) -> None:
        self.ema([(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)], step)

    def export_backbone(self):
        return self.teacher_backbone
