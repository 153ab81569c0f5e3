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

from medtransfer.models.embedding import pooled_features
from medtransfer.protocols.linear import (
    LinearProbe,
    Selection,
    labels_tensor,
    penalised_loss,
    probe_scores,
    select_on_val,
    standardisation,
)
from medtransfer.training.stage import initialised_model, spec_loader

#: The augmentation when ``train.augment`` is not set: flips and 2-px shifts, the light recipe
#: of the CIFAR-scale linear evaluations.
DEFAULT_AUGMENT = {"hflip": True, "crop_padding": 2}


def select_augmented_probe(spec: dict, indices: np.ndarray, features: dict, *, task: str,
                           num_outputs: int) -> Selection:
    """Train one head per weight decay on augmented views; keep the best validation AUC (``.head``)."""
    model_spec, options = spec["model"], spec["linear"]
    model, _, _ = initialised_model(model_spec, num_outputs)
    model.eval().requires_grad_(False)
    loader = spec_loader({**model_spec, "seed": spec["seed"]}, "train", torch.device("cpu"),
                         batch_size=model_spec["training"]["batch_size"], shuffle=True, indices=indices,
                         augment=model_spec["training"].get("augment") or DEFAULT_AUGMENT)
    # standardised with the cached (un-augmented) training subset, as the plain probe
    mean, std = standardisation(torch.as_tensor(features["train"][0][indices], dtype=torch.float32))

    def fit(weight_decay: float) -> LinearProbe:
        torch.manual_seed(spec["seed"])
        probe = LinearProbe(mean, std, num_outputs)
        optimizer = torch.optim.Adam(probe.linear.parameters(), lr=float(options.get("augment_lr", 1e-2)))
        for epoch in range(int(options.get("augment_epochs", 30))):
            loader.set_epoch(epoch)
            for x, y in loader:
                with torch.no_grad():
                    pooled = pooled_features(model, x).float()
                loss = penalised_loss(task, probe(pooled), labels_tensor(task, y, torch.float32),
                                      probe.linear.weight, weight_decay)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return probe

    return select_on_val(options["weight_decays"], fit, lambda head: probe_scores(head, features["val"][0], task),
                         features["val"][1], task)
