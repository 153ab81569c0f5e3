"""The linear protocol with ``linear: {augment: true}``: the linear head trains on augmented views
of the training images through the frozen backbone (eval mode, no gradients), as the linear
evaluations of SimCLR and MoCo do, instead of on the cached un-augmented features. Slower: every
epoch is a forward pass of the backbone over the training subset. The head and its objective are
the linear probe's (:mod:`.linear`: standardised features, task loss + ``wd / 2 * ||W||^2``);
it trains by Adam epochs, because the augmented problem changes every epoch, and the weight
decay is chosen on the validation split's cached (un-augmented) features.
"""

from __future__ import annotations

import numpy as np
import torch

from medtransfer import data
from medtransfer.models.embedding import pooled_features
from medtransfer.protocols.features import initialised_model
from medtransfer.protocols.linear import LinearProbe, LinearResult, _loss, probe_scores
from medtransfer.training.finetune import input_size
from medtransfer.training.metrics import classification_metrics

#: The augmentation when ``train.augment`` is not set: flips and 2-px shifts, the light recipe
#: of the CIFAR-scale linear evaluations.
DEFAULT_AUGMENT = {"hflip": True, "crop_padding": 2}


def select_augmented_probe(spec: dict, indices: np.ndarray, features: dict, *, task: str,
                           num_outputs: int) -> LinearResult:
    """Train one head per weight decay on augmented views; keep the best validation AUC."""
    model_spec, options = spec["model"], spec["linear"]
    model, _ = initialised_model(model_spec, num_outputs)
    model.eval().requires_grad_(False)
    training = model_spec["training"]
    loader = data.make_loader(
        model_spec["cache"], "train", batch_size=training["batch_size"], shuffle=True, indices=indices,
        augment=training.get("augment") or DEFAULT_AUGMENT, device=torch.device("cpu"), channels=3,
        normalize=training["normalize"], image_size=input_size(model_spec), resize_mode=training["resize_mode"],
        max_memory_mb=training["max_memory_mb"], num_workers=training["num_workers"], seed=spec["seed"])
    cached = torch.as_tensor(features["train"][0][indices], dtype=torch.float32)
    mean, std = cached.mean(0), cached.std(0, unbiased=False)
    std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
    rows, best = [], None
    for wd in sorted(options["weight_decays"], reverse=True):
        torch.manual_seed(spec["seed"])
        probe = LinearProbe(mean, std, num_outputs)
        optimizer = torch.optim.Adam(probe.linear.parameters(), lr=float(options.get("augment_lr", 1e-2)))
        for epoch in range(int(options.get("augment_epochs", 30))):
            loader.set_epoch(epoch)
            for x, y in loader:
                with torch.no_grad():
                    f = pooled_features(model, x).float()
                target = y.float() if task == "multilabel" else y.long().view(-1)
                loss = _loss(task, probe(f), target) + 0.5 * wd * probe.linear.weight.pow(2).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        auc = classification_metrics(task, features["val"][1], probe_scores(probe, features["val"][0], task))["auc"]
        rows.append({"weight_decay": wd, "val_auc": auc})
        key = auc if np.isfinite(auc) else -np.inf
        if best is None or key > best[0]:
            best = (key, probe, wd)
    return LinearResult(best[1], best[2], sorted(rows, key=lambda r: r["weight_decay"]))
