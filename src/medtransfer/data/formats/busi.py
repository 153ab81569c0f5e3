"""Breast ultrasound images (format ``busi``): Dataset_BUSI_with_GT as downloaded (Al-Dhabyani et
al. 2020), three class folders of PNG images, each image with its lesion mask file(s).

Download ``Dataset_BUSI_with_GT`` (https://scholar.cu.edu.eg/?q=afahmy/pages/dataset, or the
Kaggle copy https://www.kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset) and unzip::

    breast:
      format: busi
      root: /data/Dataset_BUSI_with_GT   # holds benign/, malignant/, normal/
      size: 224
      target: classification             # default; or segmentation (the lesion masks)
      merge: {normal: benign}            # optional: classes folded into others (Juodelyte et al.)
      val_fraction: 0.1                  # defaults 0.1 and 0.2
      test_fraction: 0.2
      split_seed: 0

Each class folder holds ``<class> (<n>).png`` and its masks ``<class> (<n>)_mask.png`` (and
``_mask_1.png``, ``_mask_2.png`` where an image shows several lesions). Masks are never images:
a file whose stem ends in ``_mask`` or ``_mask_<k>`` belongs to the image of the same stem
without it, and a mask without its image is a DataError naming it.

``target: classification``: one class per folder (``benign``, ``malignant``, ``normal``, task
``multiclass``), or with ``merge`` the folded classes (``merge: {normal: benign}`` gives
``benign``/``malignant``, task ``binary``: Juodelyte et al.'s breast target, whose code labels an
image ``malignant`` when its path says so and ``benign`` otherwise, ``import_breast`` in
DovileDo/revisiting-transfer ``src/io_fun/data_import.py``, 780 images in its fold CSVs
``data/breast/*.csv``, no masks). Metric ``auc``.

``target: segmentation``: task ``segmentation``, classes ``[background, lesion]``; an image's
masks are united (a pixel is lesion where any of its masks is above 127; normal images have empty
masks); every image needs at least one mask (DataError naming it) of its own size. Metric ``dice``.

BUSI has no patient ids, so val and test are made from single images, stratified by class (or by
whether a mask has foreground) and seeded; the cache records it. ``channels`` default 3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medtransfer.data.formats.common import check_decoding_keys, decoding_keys, md5_of_listing, split_keys
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import describe_split, grouped_split
from medtransfer.errors import ConfigError, DataError

CLASSES = ("benign", "malignant", "normal")
TARGETS = ("classification", "segmentation")
MASK = re.compile(r"^(?P<image>.+?)_mask(?:_\d+)?$")
DOWNLOAD = "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset"


def class_names(name: str, entry: Mapping[str, Any]) -> tuple[list[str], dict[str, int]]:
    """The classes after ``merge`` (in BUSI's order, merged ones left out) and each folder's class index."""
    merge = entry.get("merge") or {}
    if not isinstance(merge, Mapping) or any(k not in CLASSES or v not in CLASSES or k == v for k, v in merge.items()):
        raise ConfigError(f"datasets.{name}.merge maps a class folder to another ({', '.join(CLASSES)}), e.g. "
                          f"{{normal: benign}}; got {merge!r}")
    if any(v in merge for v in merge.values()):
        raise ConfigError(f"datasets.{name}.merge {dict(merge)!r} folds a class into one that is itself folded")
    kept = [c for c in CLASSES if c not in merge]
    return kept, {c: kept.index(merge.get(c, c)) for c in CLASSES}


def check(name: str, entry: Mapping[str, Any]) -> None:
    """``target``, ``merge`` and the decoding keys (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    target = entry.get("target", "classification")
    if target not in TARGETS:
        raise ConfigError(f"datasets.{name}.target is {target!r}; allowed: {', '.join(TARGETS)}")
    class_names(name, entry)


def _pairs(folder: Path) -> tuple[list[Path], dict[Path, list[Path]]]:
    """The images of a class folder and each image's mask files."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    images = [p for p in files if not MASK.match(p.stem)]
    masks: dict[Path, list[Path]] = {p: [] for p in images}
    for path in files:
        match = MASK.match(path.stem)
        if match is None:
            continue
        image = path.with_name(match["image"] + path.suffix)
        if image not in masks:
            raise DataError(f"mask {path} has no image {image.name} beside it; restore the image or remove the mask")
        masks[image].append(path)
    return images, masks


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def union_mask(image: Path, masks: list[Path], size: int | None = None) -> np.ndarray:
    """uint8 [1, H, W] (or [1, size, size], nearest neighbour): 1 where any mask file is above 127.
    DataError naming a mask that cannot be read or differs in size from its image."""
    with Image.open(image) as img:
        width, height = img.size
    out = np.zeros((height, width), np.uint8)
    for path in masks:
        try:
            gray = _gray(path)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DataError(f"mask {path} cannot be read ({err}); fix or remove it") from None
        if gray.shape != out.shape:
            raise DataError(f"mask {path} is {gray.shape[1]}x{gray.shape[0]} px but its image {image} is "
                            f"{width}x{height}; a mask must have its image's size")
        out |= (gray > 127).astype(np.uint8)
    if size is not None and out.shape != (size, size):
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.Resampling.NEAREST))
    return out[None]


class UnionMasks(DecodedImages):
    """The masks of a split as a lazy uint8 [N, 1, size, size] array-like (:func:`union_mask`)."""

    def __init__(self, images: list[Path], masks: list[list[Path]], size: int, *, workers: int | None = None) -> None:
        super().__init__(images, size, 1, "nearest", workers=workers)
        self.masks = list(masks)

    def _load(self, i: int) -> np.ndarray:
        return union_mask(self.paths[i], self.masks[i], self.size)

    def subset(self, indices: Any) -> UnionMasks:
        indices = np.asarray(indices, np.int64)
        return UnionMasks([self.paths[i] for i in indices], [self.masks[i] for i in indices], self.size,
                          workers=self.workers)


@register_format("busi", required={"root": "the Dataset_BUSI_with_GT folder (benign/, malignant/, normal/)",
                                   "size": "images (and masks) are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read BUSI's class folders (images decoded lazily); see the module docstring."""
    root = Path(require(entry, "root", name))
    size, channels, resize, workers = decoding_keys(entry, name)
    target = entry.get("target", "classification")
    classes, index = class_names(name, entry)
    images: list[Path] = []
    masks: list[list[Path]] = []
    folder_class: list[int] = []
    for cls in CLASSES:
        folder = root / cls
        if not folder.is_dir():
            raise DataError(f"datasets.{name}.root: {root} has no folder {cls}/; is 'root' the Dataset_BUSI_with_GT "
                            f"folder as downloaded from {DOWNLOAD}?")
        found, paired = _pairs(folder)
        if not found:
            raise DataError(f"{folder}: no images (<{cls}> (<n>).png)")
        images += found
        masks += [paired[p] for p in found]
        folder_class += [index[cls]] * len(found)
    attributes: dict[str, Any] = {"target": target, "merge": dict(entry.get("merge") or {}),
                                  "images_per_folder": {c: sum(1 for p in images if p.parent.name == c)
                                                        for c in CLASSES}}
    if target == "segmentation":
        lacking = [p for p, m in zip(images, masks) if not m]
        if lacking:
            raise DataError(f"image {lacking[0]} has no mask ({lacking[0].stem}_mask.png); a segmentation target "
                            f"needs one for every image ({len(lacking)} lack one)")
        labels = np.array([int(union_mask(p, m).any()) for p, m in zip(images, masks)], np.int64)
        task, names, metric = "segmentation", ["background", "lesion"], "dice"
    else:
        labels = np.array(folder_class, np.int64)
        task, names, metric = ("binary" if len(classes) == 2 else "multiclass"), classes, "auc"
    options, seed = split_keys(entry), split_keys(entry)["seed"]
    parts = grouped_split(labels, None, {"test": options["test_fraction"], "val": options["val_fraction"]}, seed)
    parts = {"train": parts["rest"], "val": parts["val"], "test": parts["test"]}
    lazy = DecodedImages(images, size, channels, resize, workers=workers, describe=[f"image {p}" for p in images])
    splits = {split: (lazy.subset(idx), labels[idx]) for split, idx in parts.items()}
    raw_masks = None
    if task == "segmentation":
        all_masks = UnionMasks(images, masks, size, workers=workers)
        raw_masks = {split: all_masks.subset(idx) for split, idx in parts.items()}
    by = "whether the mask has foreground" if task == "segmentation" else "class"
    attributes.update(
        metric=metric,
        split_policy=(f"val and test made from single images (val {len(parts['val'])}, test {len(parts['test'])}; "
                      f"BUSI has no patient ids), stratified by {by}, split_seed {seed}"),
        made_splits=describe_split(parts, root.name, "image (no patient ids)", seed))
    files = images + [m for ms in masks for m in ms]
    return RawDataset(splits=splits, task=task, class_names=list(names), source=str(root),
                      checksum=md5_of_listing(root, files), attributes=attributes, masks=raw_masks)
