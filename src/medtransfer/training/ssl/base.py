"""What every self-supervised method shares: the backbone's pooled embedding, EMA teachers,
and the hooks the shared epoch loop calls."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medtransfer.registry import Registry
from medtransfer.training.distributed import joined
from medtransfer.training.ssl.options import METHOD_DEFAULTS

#: Method name -> SSLMethod subclass, keyed from ``options.METHOD_DEFAULTS`` (see :func:`register_method`).
METHODS: Registry = Registry("pretraining method")


def register_method(name: str) -> Callable[[type[SSLMethod]], type[SSLMethod]]:
    """Class decorator: register an :class:`SSLMethod` subclass as method ``name`` and set its ``name``.

    ``name`` must already have its options and defaults in ``options.METHOD_DEFAULTS`` (the
    torch-free table the planner checks configs against), so no class exists without them.
    """
    if name not in METHOD_DEFAULTS:
        raise ValueError(f"pretraining method {name!r} has no defaults in medtransfer.training.ssl.options."
                         f"METHOD_DEFAULTS; add its options there first")
    add = METHODS.register(name)

    def decorator(cls: type[SSLMethod]) -> type[SSLMethod]:
        cls.name = name
        return add(cls)

    return decorator


def embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The canonical pooled feature in front of the classifier, [B, D] (ViT/DeiT: the class token)."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that takes no gradient: an EMA teacher / target / key encoder."""
    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


class SSLMethod(nn.Module):
    """One self-supervised method: its heads and loss around a backbone built by ``models.create``.

    Subclasses are registered with :func:`register_method` (which sets ``name``) and implement
    :meth:`loss`; the module's state dict holds everything a resumed run needs (teachers, queues,
    DINO's center are submodules or buffers). The backbone's
    linear classifier is unused and frozen: it stays as the architecture's init and WT replaces it.

    ``distributed``: built inside a job of several processes (torchrun); the methods then pass
    lightly's ``gather_distributed`` options, so negatives, queues and Sinkhorn statistics cover
    the global batch, not one process's share (DINO's centre is all-reduced by lightly itself).
    """

    name: ClassVar[str]
    uses: ClassVar[str]  # what the method takes from lightly, for meta.json
    #: some trainable parameters take no gradient in some steps (DDP must then look for them)
    unused_parameters: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, options: dict[str, Any], *, steps_per_epoch: int,
                 epochs: int) -> None:
        super().__init__()
        self.backbone = backbone
        for parameter in backbone.get_classifier().parameters():
            parameter.requires_grad_(False)
        self.options = dict(options)
        self.feature_dim = int(backbone.num_features)
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.distributed = joined()
        self.autocast: Callable[[], Any] = contextlib.nullcontext  # set by SSLObjective

    def _non_persistent_buffers(self) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}" if prefix else name: buffer
                for prefix, module in self.named_modules()
                for name, buffer in module.named_buffers(recurse=False)
                if name in module._non_persistent_buffers_set}

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """lightly keeps MoCo's queue (``MemoryBankModule.bank`` / ``bank_ptr``) in non-persistent
        buffers, outside ``state_dict``; a resumed run needs them, so they travel here."""
        return {name: buffer.detach().cpu().clone() for name, buffer in self._non_persistent_buffers().items()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        buffers = self._non_persistent_buffers()
        for name, value in state.items():
            buffers[name].copy_(value)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.backbone, x)

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        """The loss of one batch's views (global views first, then local ones), float32 scalar."""
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        """After backward, before the optimizer step (e.g. cancel the gradients of a frozen layer)."""

    def after_step(self, step: int) -> None:
        """After the optimizer step (e.g. the EMA update of a teacher)."""

    def export_backbone(self) -> nn.Module:
        """The backbone whose weights become the source (the student / online / query encoder)."""
        return self.backbone

    def ema(self, pairs: list[tuple[nn.Module, nn.Module]], step: int) -> float:
        """EMA update ``teacher <- m teacher + (1 - m) student`` for each (student, teacher) pair,
        ``m`` following the cosine schedule from ``momentum`` to ``momentum_end`` (BYOL, DINO)."""
        end = float(self.options.get("momentum_end", self.options["momentum"]))
        m = cosine_schedule(step, max(1, self.total_steps), float(self.options["momentum"]), end)
        for student, teacher in pairs:
            update_momentum(student, teacher, m=m)
        return m
