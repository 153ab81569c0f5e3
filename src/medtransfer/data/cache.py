"""The HDF5 cache of a dataset, ``results/data/{dataset}.h5`` (docs/DESIGN.md, "The HDF5 cache").

Layout (schema version :data:`SCHEMA_VERSION`):

- groups ``train``, ``val``, ``test``, each with ``images`` uint8 [N, C, H, W] (H = W, chunked by
  image) and ``labels`` (int64 [N], or float32 [N, K] with NaN = unknown for multilabel);
  segmentation datasets (task ``segmentation``) also ``masks`` uint8 [N, 1, H, W] (class ids, 0 =
  background, resized with nearest neighbour, chunked by image), and their labels are 1 where an
  image has any foreground;
- file attributes: ``name``, ``format``, ``task``, ``class_names`` (JSON list), ``source``,
  ``source_checksum``, ``image_size`` (H), ``channels``, ``mean`` and ``std`` (float64 [C], per
  channel over the train split, pixel values in [0, 1]; std is the population std),
  ``schema_version``, ``attributes`` (JSON object: the format's provenance, e.g. split policy).

:func:`medtransfer.data.streaming.build_cache` writes it (atomically: a killed job leaves no file
that looks finished);
:func:`read_info` and :func:`read_split` read it and fail with a DataError naming the file and
the fix on a missing, truncated or foreign file or another schema version.

Optional parts (no version change: a reader that does not ask for them never sees them, and a
cache without them reads as before): ``{split}/groups`` (str [N], each image's patient, where the
format records patients) and, for a dataset with ``folds:``, the group ``pool``
(:mod:`medtransfer.data.folds`): ``images``, a virtual dataset over the train, val and test images
in that order (no copy), their ``labels`` (and ``groups``), and ``folds`` int8 [N, K], each
image's role in each fold (0 train, 1 val, 2 test, -1 unused). ``pool`` is a split for
:func:`read_info` (``split_sizes``), :func:`read_labels` and the loaders.

Schema versions: 1 had no masks; 2 (segmentation targets) adds them. A version-1 cache of a
classification dataset has exactly the layout version 2 writes for one, so it is read as it is:
converting CheXpert again (hours) for a field it cannot have would help nobody. A segmentation
cache must be version 2; anything else (a version-1 file claiming masks, an unknown version) is
refused with the fix (delete it, rerun the preprocess rule).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from medtransfer.data.raw import RESIZE_MODES, SPLITS
from medtransfer.errors import ConfigError, DataError

SCHEMA_VERSION = 2
CLASSIFICATION_VERSIONS = (1, 2)  # the classification layout did not change from 1 to 2
CHUNK_BYTES = 64 << 20  # images converted per step: bounds memory for any dataset size
POOL = "pool"  # every image of a dataset with folds (train, val, test), see medtransfer.data.folds
REQUIRED_ATTRS = ("name", "task", "class_names", "source", "source_checksum", "image_size", "channels",
                  "mean", "std", "schema_version")


# --- resizing --------------------------------------------------------------------------------------

def interpolate(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize a float batch [B, C, H, W] to [B, C, size, size].

    ``nearest`` is exact nearest neighbour ("nearest-exact": an integer upscale such as 28 -> 224
    repeats every pixel 8 times, like ``np.repeat``); ``bilinear`` and ``bicubic`` antialias when
    shrinking (as PIL does); ``area`` averages (adaptive average pooling).
    """
    if x.shape[-2:] == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    if mode == "area":
        return F.interpolate(x, size=(size, size), mode="area")
    raise ConfigError(f"resize mode {mode!r}; allowed: {', '.join(RESIZE_MODES)}")


def resize_uint8(images: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize uint8 [N, C, H, W] to uint8 [N, C, size, size] (rounded, clipped to 0..255)."""
    if images.shape[-2:] == (size, size):
        return images
    out = interpolate(torch.from_numpy(np.ascontiguousarray(images)).float(), size, mode)
    return out.round_().clamp_(0, 255).to(torch.uint8).numpy()


# --- reading ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheInfo:
    """What a cache file says about its dataset (its attributes and split sizes)."""

    path: str
    name: str
    task: str
    class_names: list[str]
    num_classes: int
    image_size: int
    channels: int
    mean: tuple[float, ...]  # per channel, [0, 1] units, train split
    std: tuple[float, ...]
    split_sizes: dict[str, int]
    source: str
    checksum: str
    format: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    label_shape: tuple[int, ...] = ()  # per example: () for class indices, (K,) for multilabel


def _fix(path: Path) -> str:
    return f"delete it and rerun the preprocess rule (snakemake {path})"


@contextmanager
def open_cache(path: str | Path) -> Iterator[h5py.File]:
    """Open a cache for reading after checking it exists, is intact and has our schema version."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset cache {path} does not exist; run the preprocess rule (snakemake {path})")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"dataset cache {path} is truncated or not an HDF5 file ({err}); {_fix(path)}") from None
    with h5:
        version = h5.attrs.get("schema_version")
        segmentation = h5.attrs.get("task") == "segmentation"
        readable = (SCHEMA_VERSION,) if segmentation else CLASSIFICATION_VERSIONS
        if version is None or int(version) not in readable:
            raise DataError(f"dataset cache {path} has schema version {version}, this medtransfer reads version "
                            f"{SCHEMA_VERSION}; {_fix(path)}")
        datasets = ("images", "labels", "masks") if segmentation else ("images", "labels")
        missing = [a for a in REQUIRED_ATTRS if a not in h5.attrs] + [
            f"{s}/{d}" for s in SPLITS for d in datasets if f"{s}/{d}" not in h5]
        if missing:
            raise DataError(f"dataset cache {path} lacks {', '.join(missing)}; {_fix(path)}")
        yield h5


def _check_split(split: str) -> None:
    if split not in SPLITS + (POOL,):
        raise ValueError(f"split must be one of {SPLITS + (POOL,)}, not {split!r}")


def read_info(path: str | Path) -> CacheInfo:
    """The attributes and split sizes of a cache file."""
    with open_cache(path) as h5:
        a = h5.attrs
        class_names = json.loads(a["class_names"])
        return CacheInfo(
            path=str(path),
            name=str(a["name"]),
            task=str(a["task"]),
            class_names=class_names,
            num_classes=len(class_names),
            image_size=int(a["image_size"]),
            channels=int(a["channels"]),
            mean=tuple(float(v) for v in np.atleast_1d(a["mean"])),
            std=tuple(float(v) for v in np.atleast_1d(a["std"])),
            split_sizes={s: int(h5[s]["images"].shape[0]) for s in SPLITS + (POOL,) if s in h5},
            source=str(a["source"]),
            checksum=str(a["source_checksum"]),
            format=str(a.get("format", "")),
            attributes=json.loads(a.get("attributes", "{}")),
            label_shape=tuple(h5["train"]["labels"].shape[1:]),
        )


def read_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, C, H, W] and labels (int64 [N] or float32 [N, K]) of one split, in memory."""
    _check_split(split)
    with open_cache(path) as h5:
        try:
            return h5[split]["images"][...], h5[split]["labels"][...]
        except OSError as err:
            raise DataError(f"dataset cache {path}: {split} cannot be read ({err}); {_fix(Path(path))}") from None


def read_labels(path: str | Path, split: str) -> np.ndarray:
    """Labels of one split only (e.g. for :func:`medtransfer.data.fractions.subset_indices`)."""
    _check_split(split)
    with open_cache(path) as h5:
        try:
            return h5[split]["labels"][...]
        except OSError as err:
            raise DataError(f"dataset cache {path}: {split} labels cannot be read ({err}); "
                            f"{_fix(Path(path))}") from None


def read_folds(path: str | Path) -> np.ndarray:
    """``pool/folds`` of a dataset with folds: int8 [N, K], each pooled image's role per fold."""
    with open_cache(path) as h5:
        if POOL not in h5:
            raise DataError(f"dataset cache {path} has no folds; give its dataset `folds:` (e.g. {{k: 5}}) and rerun "
                            f"the preprocess rule (delete {path} first)")
        return h5[POOL]["folds"][...]


def read_masks(path: str | Path, split: str) -> np.ndarray:
    """Masks uint8 [N, 1, H, W] (class ids) of one split of a segmentation cache, in memory."""
    _check_split(split)
    with open_cache(path) as h5:
        if "masks" not in h5[split]:
            raise DataError(f"dataset cache {path} has no masks (task {h5.attrs['task']}); a segmentation "
                            "dataset has them")
        try:
            return h5[split]["masks"][...]
        except OSError as err:
            raise DataError(f"dataset cache {path}: {split} masks cannot be read ({err}); "
                            f"{_fix(Path(path))}") from None
