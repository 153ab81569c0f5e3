"""Format ``npz``: arrays in a NumPy ``.npz`` with MedMNIST-style keys, for any dataset.

Config entry: ``{format: npz, root: <folder>, file: <name>.npz, md5: <optional>, classes:
<optional list>, task: <optional override>, val_fraction: 0.1, test_fraction: 0.2, split_seed: 0}``.

The file holds ``train_images`` and ``train_labels`` and optionally ``val_*`` and ``test_*``
(images uint8 [N, H, W] gray or [N, H, W, 3] RGB; labels [N] or [N, 1] class indices), and
optionally ``classes`` (names). Missing val/test splits are made from train, stratified and
seeded, and recorded in the cache. The CIFAR-10 subset used as a natural source
(``cifar10_jpeg_20k_5k.npz``: train and test only) is read this way.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.formats.common import md5_file, task_for
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import complete_splits
from medtransfer.errors import DataError


def _hwc_to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{where}: images are {images.dtype} {images.shape}; expected uint8 [N, H, W] or [N, H, W, C]")
    return images[:, None] if images.ndim == 3 else np.ascontiguousarray(images.transpose(0, 3, 1, 2))


@register_format("npz", required={"root": "the folder holding the .npz", "file": "the .npz file, relative to root"})
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read ``{root}/{file}``; verify ``md5`` when the config gives one."""
    path = Path(require(entry, "root", name)) / require(entry, "file", name)
    if not path.is_file():
        raise DataError(f"{path}: file not found (datasets.{name}.root / file); put the .npz there")
    checksum = md5_file(path)
    if entry.get("md5") and entry["md5"] != checksum:
        raise DataError(f"{path}: md5 is {checksum}, expected {entry['md5']} (datasets.{name}.md5); "
                        "the file is corrupt or another version: download it again")
    splits, class_names = {}, entry.get("classes")
    try:
        with np.load(path) as npz:
            for split in ("train", "val", "test"):
                if f"{split}_images" not in npz.files:
                    continue
                where = f"{path} {split}"
                images = _hwc_to_nchw(npz[f"{split}_images"], where)
                labels = np.asarray(npz[f"{split}_labels"]).reshape(len(images), -1)
                if labels.shape[1] != 1:
                    raise DataError(f"{where}_labels: shape {labels.shape}; expected one class index per image")
                splits[split] = (images, labels[:, 0].astype(np.int64))
            if class_names is None and "classes" in npz.files:
                class_names = [str(c) for c in npz["classes"]]
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a readable .npz with train_images/train_labels ({error})") from None
    if "train" not in splits:
        raise DataError(f"{path}: has no train_images; keys must be <split>_images and <split>_labels")
    num_classes = int(max(labels.max() for _, labels in splits.values())) + 1
    class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(class_names) < num_classes:
        raise DataError(f"{path}: labels go up to {num_classes - 1} but {len(class_names)} class names are given")
    attributes: dict[str, Any] = {}
    splits = complete_splits(splits, val_fraction=float(entry.get("val_fraction", 0.1)),
                             test_fraction=float(entry.get("test_fraction", 0.2)),
                             seed=int(entry.get("split_seed", 0)), attributes=attributes)
    return RawDataset(splits=splits, task=task_for(len(class_names), entry.get("task"), f"datasets.{name}"),
                      class_names=class_names, source=str(path), checksum=checksum, attributes=attributes)
