"""Activations of every canonical block on a fixed probe set, for one state of one run.

The probe set is a seeded subset of one split of the dataset (``probe_indices``), the same for
every run of that dataset, so activations of different runs are of the same images in the same
order — the requirement of every cross-run similarity measure. Spatial maps are average-pooled
to ``pool × pool`` to keep files small while keeping the channel axis (the CCA family's
neurons). Stored as HDF5: one dataset per block, in forward order (attribute ``blocks``).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from medtransfer import data, models
from medtransfer.atomic import atomic_path
from medtransfer.errors import ConfigError
from medtransfer.training.stage import input_size, spec_normalize


def probe_indices(n_examples: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of the probe set: ``size`` examples of ``n_examples`` drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    size = min(size, n_examples)
    return np.sort(rng.permutation(n_examples)[:size]).astype(np.int64)


def as_feature_map(output: torch.Tensor, channels_last_tokens: bool = False) -> torch.Tensor:
    """A block output as [N, C, H, W] (conv maps), [N, D, T, 1] (tokens) or [N, D] (vectors).

    ``channels_last_tokens``: the block emits [N, H, W, C] (timm's Swin stages).
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 4 and channels_last_tokens:
        return output.permute(0, 3, 1, 2)
    if output.ndim == 3:  # [N, T, D] transformer tokens: D are the neurons, tokens the positions
        return output.transpose(1, 2).unsqueeze(-1)
    return output


def pool_feature_map(features: torch.Tensor, pool: int) -> torch.Tensor:
    """Average-pool spatial maps larger than ``pool`` to ``pool × pool`` (tokens to ``pool²``)."""
    if features.ndim != 4:
        return features
    height, width = features.shape[-2:]
    if width == 1:  # tokens
        target = (min(height, pool * pool), 1)
    else:
        target = (min(height, pool), min(width, pool))
    if (height, width) == target:
        return features
    return torch.nn.functional.adaptive_avg_pool2d(features, target)


@torch.no_grad()
def block_activations(model: torch.nn.Module, loader, pool: int, device: torch.device) -> dict[str, np.ndarray]:
    """Forward the loader through ``model``; return {block name: float32 array [N, ...]}."""
    model.eval().to(device)
    named = models.blocks(model)
    channels_last_tokens = models.block_layout(model) == "nhwc"  # timm's Swin blocks
    captured: dict[str, list[torch.Tensor]] = {name: [] for name, _ in named}

    def hook(name: str):
        def store(_module, _inputs, output):
            features = pool_feature_map(as_feature_map(output, channels_last_tokens).float(), pool)
            captured[name].append(features.cpu())
        return store

    handles = [module.register_forward_hook(hook(name)) for name, module in named]
    try:
        for x, _ in loader:
            model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(chunks).numpy() for name, chunks in captured.items()}


def load_state(path: str | Path) -> torch.nn.Module:
    """Rebuild the model saved by fine-tuning (init.pt / final.pt) with its weights (a segmentation
    run's: its :class:`~medtransfer.models.segmentation.SegmentationNetwork`)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("fusion"):
        raise ConfigError(f"{path}: the weights of a fusion of several backbones (init "
                          f"{saved['init']['label']}); block-wise analyses read runs of one network")
    model = network_of(saved)
    model.load_state_dict(saved["state_dict"])
    return model


def network_of(saved: dict) -> torch.nn.Module:
    """The (untrained) network a fine-tuning checkpoint's weights belong to: the classifier, or
    for a segmentation run its encoder under the decoder (blocks: the encoder's, then the decoder)."""
    if saved.get("segmentation"):
        from medtransfer.models.segmentation import SegmentationNetwork

        encoder = models.create(saved["arch"], 1, in_chans=3, **saved["create_kwargs"])
        return SegmentationNetwork.from_config(encoder, saved["num_classes"], saved["segmentation"])
    return models.create(saved["arch"], saved["num_classes"], in_chans=3, **saved["create_kwargs"])


def extract(spec: dict, device: torch.device) -> None:
    """Write ``spec["out"][state]`` for the init and final states of one run."""
    training = spec["training"]
    split_labels = data.read_labels(spec["cache"], spec["probe_split"])
    indices = probe_indices(len(split_labels), spec["probe_size"], spec["probe_seed"])
    loader = data.make_loader(
        spec["cache"], spec["probe_split"], batch_size=training["eval_batch_size"], shuffle=False,
        indices=indices, device=device, channels=3, normalize=spec_normalize(spec),
        image_size=input_size(spec),
        resize_mode=training["resize_mode"], max_memory_mb=training["max_memory_mb"],
        num_workers=training["num_workers"],
    )
    dtype = np.dtype(spec["dtype"])
    for state, out in spec["out"].items():
        model = load_state(Path(spec["run_dir"]) / f"{state}.pt")
        acts = block_activations(model, loader, spec["pool"], device)
        with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as handle:
            handle.attrs["run"] = spec["run"]
            handle.attrs["state"] = state
            handle.attrs["blocks"] = json.dumps(list(acts))
            handle.attrs["probe_split"] = spec["probe_split"]
            handle.attrs["probe_seed"] = spec["probe_seed"]
            handle.attrs["pool"] = spec["pool"]
            handle.create_dataset("probe_indices", data=indices)
            group = handle.create_group("blocks")
            for name, values in acts.items():
                group.create_dataset(name, data=values.astype(dtype))


def read_activations(path: str | Path) -> dict[str, np.ndarray]:
    """{block name: array [N, ...]} in forward order, from a file written by ``extract``."""
    with h5py.File(path, "r") as handle:
        names = json.loads(handle.attrs["blocks"])
        return {name: handle["blocks"][name][()] for name in names}
