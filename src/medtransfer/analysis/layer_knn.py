"""Layer-wise k-NN (Matsoukas et al. 2022, k = 200): how well each block's features separate the
target's classes, before (``init``) and after (``final``) fine-tuning.

For each state of a run and each canonical block, the block's output is globally average-pooled
to one vector per image ([N, C, H, W] conv maps: mean over H × W; ViT / DeiT tokens [N, T, D]:
mean over all T tokens, the class token included; Swin's [N, H, W, C]: mean over H × W; the
head's logits [N, K] as they are). The weighted k-NN classifier of the k-NN protocol
(:func:`medtransfer.protocols.knn.knn_predict`: L2-normalised features, cosine similarity, the k
nearest vote with weight exp(cos / T)) then scores the test split (queries) with the run's own
training subset as memory (the same fraction subset it was fine-tuned on,
:func:`medtransfer.data.subset_indices` as in fine-tuning).

layer_knn.csv is long (tidy): one row per (run, state, block, metric) with ``value`` and the
``k``, ``n_memory``, ``n_query`` and ``n_features`` (pooled width) it was computed with.

Memory: images are read and forwarded in batches; the pooled features of a group of blocks
([n_memory + n_query] × width, float32) are held at most ``max_memory_mb`` at a time (blocks are
grouped in forward order to fit, one forward pass per group; a single block wider than the budget
gets a pass of its own). ``knn_predict`` itself compares 1,024 queries at a time
(``models.embedding.knn_scores``), so its largest temporary is 1,024 × n_memory similarities plus
one normalised copy of the block's memory, never n_query × n_memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medtransfer import data, models
from medtransfer.analysis.activations import as_feature_map
from medtransfer.analysis.runfiles import build_model, read_checkpoint, read_metrics
from medtransfer.errors import ConfigError
from medtransfer.protocols.knn import knn_predict
from medtransfer.training.metrics import classification_metrics


def global_pool(output: torch.Tensor | tuple, channels_last_tokens: bool = False) -> torch.Tensor:
    """A block's output as [B, C]: the mean over every spatial position or token."""
    features = as_feature_map(output, channels_last_tokens)
    return features.mean(dim=(2, 3)) if features.ndim == 4 else features.flatten(1)


@torch.no_grad()
def pooled_block_features(model: torch.nn.Module, loader, device: torch.device, names: Sequence[str],
                          channels_last: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Globally pooled float32 features [N, C] of the blocks ``names`` and the labels, in loader order.

    The model runs in eval mode and float32; arrays are filled batch by batch (no list of chunks
    to concatenate, so the peak is the arrays themselves).
    """
    model.eval().to(device)
    named = dict(models.blocks(model))
    channels_last_tokens = models.block_layout(model) == "nhwc"
    n = loader.num_examples
    out: dict[str, np.ndarray] = {}
    position = 0

    def hook(name: str):
        def store(_module, _inputs, output):
            pooled = global_pool(output, channels_last_tokens).float().cpu().numpy()
            if name not in out:
                out[name] = np.empty((n, pooled.shape[1]), np.float32)
            out[name][position:position + len(pooled)] = pooled
        return store

    handles = [named[name].register_forward_hook(hook(name)) for name in names]
    labels = []
    try:
        for x, y in loader:
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x)
            labels.append(y.cpu().numpy())
            position += len(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, np.concatenate(labels) if labels else np.zeros(0)


def block_widths(model: torch.nn.Module, loader, device: torch.device) -> dict[str, int]:
    """Pooled width of every canonical block, from a forward pass of two images of ``loader``."""
    x, _ = next(iter(loader))
    named = models.blocks(model)
    channels_last_tokens = models.block_layout(model) == "nhwc"
    widths: dict[str, int] = {}
    handles = [module.register_forward_hook(
        lambda _m, _i, output, name=name: widths.__setitem__(name, global_pool(output, channels_last_tokens).shape[1]))
        for name, module in named]
    try:
        with torch.no_grad():
            model.eval().to(device)(x[:2].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: widths[name] for name, _ in named}


def plan_block_groups(widths: Mapping[str, int], n_rows: int, max_bytes: int) -> list[list[str]]:
    """Blocks in order, cut into consecutive groups whose float32 features [n_rows, Σ width] fit
    ``max_bytes``; a block that alone exceeds it is a group of its own."""
    groups: list[list[str]] = []
    used = 0
    for name, width in widths.items():
        size = 4 * n_rows * int(width)
        if groups and used + size <= max_bytes:
            groups[-1].append(name)
            used += size
        else:
            groups.append([name])
            used = size
    return groups


def knn_metrics(memory: np.ndarray, memory_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray, *,
                task: str, num_classes: int, k: int, temperature: float) -> dict[str, float]:
    """The task's metrics (``classification_metrics``) of the weighted k-NN on one block's features."""
    scores = knn_predict(memory, memory_labels, queries, task=task, num_classes=num_classes, k=k,
                         temperature=temperature)
    return classification_metrics(task, query_labels, scores)


def resolve_k(k: int, n_memory: int, cap_k: bool, run: str, fraction: float, dataset: str) -> int:
    """``k``, or all of the memory when it is smaller and ``cap_k``; else a ConfigError naming the key."""
    if k <= n_memory:
        return k
    if not cap_k:
        raise ConfigError(
            f"config key analysis.layer_knn.k: k = {k} is larger than the training subset of {run} "
            f"({n_memory} images at fraction {fraction:g} of {dataset!r}); lower analysis.layer_knn.k "
            "or set analysis.layer_knn.cap_k: true to vote over all of them")
    return n_memory


def run_layer_knn(spec: dict, device: torch.device) -> pd.DataFrame:
    """layer_knn.csv rows (:data:`medtransfer.columns.LAYER_KNN_COLUMNS`) of one run. ``spec``: ``run``, ``run_dir``, ``columns``, ``states``,
    ``split`` (the queries), ``k``, ``temperature``, ``cap_k``, ``max_memory_mb``."""
    from medtransfer.data.folds import run_rows
    from medtransfer.training.stage import spec_loader
    from medtransfer.training.trainer import precision_for

    run = spec["run"]
    run_spec = read_metrics(spec["run_dir"], run)["spec"]
    info = data.read_info(run_spec["cache"])
    # the run's own training subset (and, for a fold run, its fold's rows of the pool as queries)
    rows = run_rows(run_spec["cache"], info.task, run_spec["fraction"], run_spec["seed"], run_spec.get("fold"),
                    num_classes=info.num_classes, dataset=run_spec["dataset"])
    indices = rows["train"]
    k = resolve_k(int(spec["k"]), len(indices), bool(spec["cap_k"]), run, run_spec["fraction"], run_spec["dataset"])
    memory_loader = spec_loader(run_spec, rows["split"], device, indices=indices)
    query_rows = rows.get(spec["split"])
    query_loader = (spec_loader(run_spec, spec["split"], device) if query_rows is None
                    else spec_loader(run_spec, rows["split"], device, indices=query_rows))
    channels_last = precision_for(device, run_spec["training"]).channels_last
    n_rows = memory_loader.num_examples + query_loader.num_examples
    rows = []
    for state in spec["states"]:
        saved = read_checkpoint(spec["run_dir"], state, run)
        model = build_model(saved, run, Path(spec["run_dir"]) / f"{state}.pt")
        widths = block_widths(model, query_loader, device)
        index = {name: i for i, name in enumerate(widths)}
        for group in plan_block_groups(widths, n_rows, int(spec["max_memory_mb"]) << 20):
            memory, memory_labels = pooled_block_features(model, memory_loader, device, group, channels_last)
            queries, query_labels = pooled_block_features(model, query_loader, device, group, channels_last)
            for block in group:
                metrics = knn_metrics(memory[block], memory_labels, queries[block], query_labels, task=info.task,
                                      num_classes=info.num_classes, k=k, temperature=float(spec["temperature"]))
                rows += [{**spec["columns"], "run": run, "state": state, "split": spec["split"], "block": block,
                          "block_index": index[block], "metric": metric, "value": float(value), "knn_k": k,
                          "n_memory": len(memory_labels), "n_query": len(query_labels),
                          "n_features": int(widths[block])} for metric, value in metrics.items()]
            del memory, queries
    return pd.DataFrame(rows)


def layer_knn_table(spec: dict, device: torch.device) -> pd.DataFrame:
    """The rows of one run's spec, or of every run spec in ``spec["runs"]`` (a group job)."""
    return pd.concat([run_layer_knn(entry, device) for entry in spec.get("runs") or [spec]], ignore_index=True)
