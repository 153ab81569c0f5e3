"""The self-supervised objective for the shared epoch loop: views -> method loss, with a k-NN
monitor and a collapse check after every epoch."""

from __future__ import annotations

import logging
from typing import Any

import torch

from medtransfer.models.embedding import embed_loader, embedding_spread, knn_accuracy, pooled_features
from medtransfer.training.precision import Precision, autocast

from .base import SSLMethod
from .views import Views

log = logging.getLogger(__name__)

#: Below this embedding spread (medtransfer.models.embedding.embedding_spread) the representation
#: counts as collapsed and the job warns.
COLLAPSE_SPREAD = 0.05
#: The monitor's k-NN (k = 20, cosine, temperature-weighted votes): a cheap learning signal, not
#: the evaluation (that is k = 200 on the test split, in meta.json).
MONITOR_K = 20


class SSLObjective:
    """``loss(x)``: views of the 0..1 batch ``x`` through ``method``; ``end_epoch``: the monitor.

    ``monitor``: ``(memory_loader, query_loader, num_classes)`` of a labelled dataset (normalised
    as the views are), or None for an unlabelled one (then only the collapse check runs, on the
    first global view of the last batch).
    """

    def __init__(self, method: SSLMethod, views: Views, *, device: torch.device, precision: Precision,
                 monitor: tuple[Any, Any, int] | None) -> None:
        self.module, self.views, self.device, self.precision = method, views.to(device), device, precision
        method.autocast = lambda: autocast(device, precision)
        # for DDP (a traversal of the graph per step, so only where a method needs it)
        self.find_unused_parameters = method.unused_parameters
        self.monitor = monitor
        self._last_view: torch.Tensor | None = None
        self.collapsed_epochs: list[int] = []

    def parameters(self):
        return self.module.parameters()

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:  # noqa: ARG002 - labels unused
        views = self.views(x)
        if self.precision.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        self._last_view = views[0][:256]
        return self.module.loss(views, step)

    def before_step(self, step: int) -> None:
        self.module.before_step(step)

    def after_step(self, step: int) -> None:
        self.module.after_step(step)

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        backbone = self.module.export_backbone()
        if self.monitor is not None:
            memory_loader, query_loader, num_classes = self.monitor
            memory, memory_labels = embed_loader(backbone, memory_loader, self.device, self.precision.channels_last)
            queries, query_labels = embed_loader(backbone, query_loader, self.device, self.precision.channels_last)
            row["knn_acc"] = knn_accuracy(memory, memory_labels, queries, query_labels, num_classes=num_classes,
                                          k=MONITOR_K)
            spread = embedding_spread(queries)
        else:
            with torch.no_grad():
                was = backbone.training
                backbone.eval()
                spread = embedding_spread(pooled_features(backbone, self._last_view))
                backbone.train(was)
        row["embedding_spread"] = spread
        if spread < COLLAPSE_SPREAD:
            self.collapsed_epochs.append(epoch + 1)
            log.warning("COLLAPSE? epoch %d: the embedding spread is %.3f (about 1 when features are spread over "
                        "the sphere, 0 when every image maps to one point); the representation is collapsing: "
                        "check the learning rate, the teacher momentum or temperature, the batch size",
                        epoch + 1, spread)
        log.info("epoch %d ssl_loss %.4f knn_acc %s spread %.3f", epoch + 1, row["train_loss"],
                 f"{row['knn_acc']:.4f}" if "knn_acc" in row else "-", spread)

    def state_dict(self) -> dict[str, Any]:
        return {"collapsed_epochs": list(self.collapsed_epochs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collapsed_epochs = list(state.get("collapsed_epochs", []))
