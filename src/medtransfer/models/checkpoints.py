"""Published self-supervised checkpoints mapped onto our models' state-dict keys.

The files the SSL papers released come in a handful of layouts (REFERENCES.md, Hosseinzadeh
Taher et al.'s 14 ResNet-50s; Truong et al.'s SimCLR / SwAV / DINO):

- torchvision layout (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.*``): the converted SimCLR
  v1/v2, BYOL, Barlow Twins and SwAV ``torch.hub`` models; same keys as timm's ResNet.
- a wrapper dict: ``state_dict`` / ``model`` (MoCo, solo-learn, most trainers), DINO's
  ``teacher`` / ``student`` (the teacher is DINO's evaluated model, so it is preferred).
- a prefix before the backbone keys: ``module.`` (DDP), ``module.encoder_q.`` (MoCo),
  ``backbone.`` (solo-learn, lightly, DINO), ``encoder.``, ``_orig_mod.`` (torch.compile), ...
- a ``torch.nn.Sequential`` of the backbone's children (lightly's ``backbone.0.weight`` for
  conv1, ``backbone.4.0.conv1.weight`` for layer1.0.conv1).
- next to the backbone: projection / prediction heads, prototypes, momentum encoders, queues.
- SimCLR v2 converted from TensorFlow by Separius/SimCLRv2-Pytorch (``convert.py``): a dict
  ``{"resnet": ..., "head": ...}`` whose ResNet is a ``net`` Sequential (stem ``net.0``, stages
  ``net.1`` … ``net.4`` of ``blocks``, each block a ``net`` Sequential of conv / BN+ReLU pairs and
  a ``projection`` shortcut; ``resnet.py`` there). Its ResNet-50 1× without selective kernels
  is torchvision's ResNet-50 (stride on the 3×3 conv, no conv biases, BN ε 1e-5), so its keys
  are renamed to torchvision's (:data:`SEPARIUS_SIMCLR_V2`); the contrastive ``head`` is dropped.

:func:`fit_checkpoint` unwraps the dict, finds the prefix under which the most keys are the
model's, maps Sequential indices to child names, drops everything outside the prefix (heads,
momentum encoders, queues) and returns the backbone state with a report of what it did
(matched / missing / unexpected / dropped keys), which ``init.apply`` writes into init.json; it
is also ``init.apply`` that refuses, with that report in the message, when a tensor of the
transferred blocks has no counterpart or another shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from medtransfer.errors import WeightsError

#: Wrapper keys, in the order they are tried (DINO: teacher before student).
WRAPPERS = ("state_dict", "model", "teacher", "student", "network", "module", "backbone")
#: Buffers a checkpoint may lack without losing anything (counters, not weights).
OPTIONAL_SUFFIXES = ("num_batches_tracked",)
#: Top-level names of what SSL checkpoints keep beside the backbone (heads, prototypes, momentum
#: encoders, queues); dropped when the model has no such entry.
EXTRA_PARTS = ("fc", "head", "heads", "classifier", "projection", "projection_head", "projector", "proj",
               "prototypes", "predictor", "prediction", "prediction_head", "mlp", "momentum_backbone",
               "momentum_projector", "momentum_encoder", "encoder_k", "queue", "queue_ptr", "target_encoder",
               "linear", "last_layer")


#: Separius's SimCLR v2 ResNet keys (regex) -> torchvision's. In a block's ``net``: 0 conv1,
#: 1.0 bn1, 2 conv2 (3×3, strided), 3.0 bn2, 4 conv3, 5.0 bn3 (x.0: the BN of a BatchNorm+ReLU pair);
#: ``fc`` (SimCLR's supervised head) keeps its name.
SEPARIUS_SIMCLR_V2: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"net\.0\.0\.(.+)"), r"conv1.\1"),
    (re.compile(r"net\.0\.1\.0\.(.+)"), r"bn1.\1"),
    (re.compile(r"net\.([1-4])\.blocks\.(\d+)\.net\.([024])\.(weight|bias)"),
     lambda m: f"layer{m[1]}.{m[2]}.conv{int(m[3]) // 2 + 1}.{m[4]}"),
    (re.compile(r"net\.([1-4])\.blocks\.(\d+)\.net\.([135])\.0\.(.+)"),
     lambda m: f"layer{m[1]}.{m[2]}.bn{(int(m[3]) + 1) // 2}.{m[4]}"),
    (re.compile(r"net\.([1-4])\.blocks\.(\d+)\.projection\.shortcut\.(.+)"), r"layer\1.\2.downsample.0.\3"),
    (re.compile(r"net\.([1-4])\.blocks\.(\d+)\.projection\.bn\.0\.(.+)"), r"layer\1.\2.downsample.1.\3"),
]


def _is_separius_simclr_v2(payload: Mapping) -> bool:
    resnet = payload.get("resnet")
    return (isinstance(resnet, Mapping) and isinstance(payload.get("head"), Mapping)
            and "net.0.0.weight" in resnet and any(".blocks.0.projection." in k for k in resnet))


def _from_separius_simclr_v2(resnet: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Separius's ResNet keys renamed to torchvision's; keys of other variants (selective-kernel
    ``main_conv`` / ``mixing_conv``, the SK stem) keep their names, so that ``init.apply`` refuses
    them by name rather than loading part of the network."""
    out = {}
    for key, value in resnet.items():
        for pattern, replacement in SEPARIUS_SIMCLR_V2:
            if pattern.fullmatch(key):
                key = pattern.sub(replacement, key)
                break
        out[key] = value
    return out


def unwrap(payload: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict of tensors inside ``payload`` (a checkpoint as ``torch.load`` returns it)."""
    if isinstance(payload, Mapping) and _is_separius_simclr_v2(payload):
        return _from_separius_simclr_v2(payload["resnet"])
    seen: list[str] = []
    while isinstance(payload, Mapping) and not all(isinstance(v, torch.Tensor) for v in payload.values()):
        inner = next((k for k in WRAPPERS if isinstance(payload.get(k), Mapping)), None)
        if inner is None:
            tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
            if tensors:  # a state dict with a few extra entries (e.g. an epoch counter)
                return tensors
            raise WeightsError(f"{where} holds no state dict: top-level entries {sorted(payload)[:8]}; "
                               f"expected tensors or one of the wrappers {', '.join(WRAPPERS)}")
        seen.append(inner)
        payload = payload[inner]
    if not isinstance(payload, Mapping) or not payload:
        raise WeightsError(f"{where} holds an empty or non-dict state ({type(payload).__name__})")
    if all(k.startswith("module.") for k in payload):  # DDP's wrapper, as timm's loader strips it
        return {k[len("module."):]: v for k, v in payload.items()}
    return dict(payload)


def _candidate_prefixes(keys: list[str]) -> set[str]:
    prefixes = {""}
    for key in keys:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) + "." for i in range(1, len(parts)))
    return prefixes


def _sequential_map(model: nn.Module) -> dict[str, str]:
    """'0' -> 'conv1', '4' -> 'layer1', ...: the model's children by position."""
    return {str(i): name for i, (name, _) in enumerate(model.named_children())}


def _rename(key: str, prefix: str, children: dict[str, str], by_index: bool) -> str:
    rest = key[len(prefix):]
    if by_index:
        first, _, tail = rest.partition(".")
        if first in children:
            rest = children[first] + ("." + tail if tail else "")
    return rest


def fit_checkpoint(state: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``state`` (already unwrapped) renamed to ``model``'s keys, and the report for init.json.

    Keys outside the best prefix, and heads / prototypes / momentum encoders under it
    (:data:`EXTRA_PARTS`) that the model lacks, are dropped. Everything else is kept under its
    new name, also keys the model lacks ("unexpected"): ``init.apply`` then refuses a checkpoint of
    another architecture by its missing, extra or misshapen tensors, with this report's prefix in
    the message. Report: ``{"prefix", "sequential", "matched", "unexpected", "dropped",
    "missing"}`` counts (missing: model entries without a counterpart, head included) and up to
    20 names of each non-empty list.
    """
    model_state = model.state_dict()
    keys = list(state)
    children = _sequential_map(model)
    best = ("", False, -1)
    # shortest prefix first, and the online network before its momentum / target copy (MoCo's
    # encoder_q and encoder_k match equally well; the released model is encoder_q)
    order = lambda p: (len(p), any(part in EXTRA_PARTS for part in p.split(".")), p)  # noqa: E731
    for prefix in sorted(_candidate_prefixes(keys), key=order):
        for by_index in (False, True):
            hits = sum(1 for k in keys if k.startswith(prefix)
                       and _rename(k, prefix, children, by_index) in model_state)
            if hits > best[2]:
                best = (prefix, by_index, hits)
    prefix, by_index, _ = best
    mapped: dict[str, torch.Tensor] = {}
    unexpected, dropped = [], []
    for key in keys:
        name = _rename(key, prefix, children, by_index) if key.startswith(prefix) else None
        if name is None or (name not in model_state and name.split(".")[0] in EXTRA_PARTS):
            dropped.append(key)
            continue
        if name not in model_state:
            unexpected.append(key)
        mapped[name] = state[key]
    for key, value in model_state.items():  # counters a checkpoint may lack: the model's own
        if key not in mapped and key.endswith(OPTIONAL_SUFFIXES):
            mapped[key] = value
    missing = [k for k in model_state if k not in mapped]
    report: dict[str, Any] = {"prefix": prefix, "sequential": by_index,
                              "matched": len(mapped) - len(unexpected), "unexpected": len(unexpected),
                              "dropped": len(dropped), "missing": len(missing)}
    for name, values in (("missing_keys", missing), ("unexpected_keys", unexpected), ("dropped_keys", dropped)):
        if values:
            report[name] = values[:20]
    return mapped, report


def describe(report: dict[str, Any]) -> str:
    """One line for an error message: how the checkpoint's keys were read."""
    return (f"keys read under the prefix {report['prefix'] or '(none)'!r}"
            + (" with Sequential indices as child names" if report["sequential"] else "")
            + f": {report['matched']} matched, {report['missing']} of the model's missing, "
            f"{report['unexpected']} unexpected, {report['dropped']} dropped (heads, momentum encoders)")
