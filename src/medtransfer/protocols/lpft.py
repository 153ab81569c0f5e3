"""The lpft protocol's first phase: the classifier head trained on the frozen backbone (LP-FT,
Kumar et al. 2022; Juodelyte et al. 2024's "freeze, then fine-tune").

Juodelyte et al.'s code (DovileDo/revisiting-transfer ``src/fine-tuning.py``, ``--freeze``):
Keras ``base_model.trainable = False``, so the backbone's weights do not change and its
BatchNormalization layers run in inference mode (TF 2's rule for non-trainable BN), while the
new head (dropout 0.5, dense softmax) trains with ``Adam()`` (lr 1e-3) for up to ``--epoch``
epochs, stopped by ``EarlyStopping(monitor='val_acc', patience=10)`` without restoring the best
weights; then ``base_model.trainable = True`` and the whole network trains with
``Adam(learning_rate=args.lr)``, early stopping on ``val_loss`` (patience 30) and the best
val-loss checkpoint. Here the same: every parameter outside the head (:func:`medtransfer.models.blocks`'s
``head``, the final linear classifier) is frozen, BatchNorm layers of the backbone keep their
running statistics (eval mode) while the rest of the network, dropout included, is in training
mode; the phase trains through :func:`medtransfer.training.trainer.fit` with the spec's ``lpft``
settings, and the second phase (:func:`medtransfer.training.finetune.finetune`) starts from the
weights this phase selects (``select_on``, default ``last``, as Keras keeps the last ones).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from medtransfer.models import HEAD, blocks
from medtransfer.training.trainer import SupervisedObjective


def head_of(model: torch.nn.Module) -> torch.nn.Module:
    """The classifier head of ``model`` (its canonical ``head`` block)."""
    name, head = blocks(model)[-1]
    assert name == HEAD
    return head


class HeadOnlyObjective(SupervisedObjective):
    """:class:`SupervisedObjective` of the head alone: the rest of the network frozen (no
    gradients, BatchNorm statistics fixed) until :meth:`unfreeze`."""

    def __init__(self, model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        head = {id(p) for p in head_of(model).parameters()}
        self._frozen = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
        for parameter in self._frozen:
            parameter.requires_grad_(False)
        self._head_modules = {id(m) for m in head_of(model).modules()}

    def train_mode(self) -> None:
        """Training mode (dropout on), but every BatchNorm outside the head in eval mode."""
        self.module.train()
        for module in self.module.modules():
            if isinstance(module, _BatchNorm) and id(module) not in self._head_modules:
                module.eval()

    def unfreeze(self) -> None:
        """Let the frozen parameters train again (the second phase)."""
        for parameter in self._frozen:
            parameter.requires_grad_(True)
