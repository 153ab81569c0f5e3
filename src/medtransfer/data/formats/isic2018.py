"""ISIC 2018 task 3 (format ``isic2018``): dermoscopic images (HAM10000), 7 diagnostic classes.

Download from https://challenge.isic-archive.com/data/#2018 (task 3) and unzip each archive in
one folder, ``root``::

    ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...          # 10,015 images
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    ISIC2018_Task3_Training_LesionGroupings.csv                 # optional: lesion of each image
    ISIC2018_Task3_Validation_Input/, ISIC2018_Task3_Validation_GroundTruth/   # optional (193)
    ISIC2018_Task3_Test_Input/, ISIC2018_Task3_Test_GroundTruth/               # optional (1,512)

(a ground-truth CSV directly in ``root`` is found as well)::

    isic18:
      format: isic2018
      root: /data/isic2018
      size: 224
      official_splits: true     # default: the validation / test ground truths, where present
      group_by: lesion          # or image; default lesion when the groupings CSV is there
      val_fraction: 0.1         # for a split made from the training images (defaults 0.1, 0.2)
      test_fraction: 0.2
      split_seed: 0

The ground truths are one-hot: columns ``image, MEL, NV, BCC, AKIEC, BKL, DF, VASC`` (melanoma,
nevus, basal cell carcinoma, actinic keratosis / intraepithelial carcinoma, benign keratosis,
dermatofibroma, vascular lesion); each row must have exactly one 1 -> class index, in that order
(as ``isic2019``, whose helpers this reader uses). Splits: the validation and test ground truths,
where present (with their input folders), are the val and test splits; a split that is not
there (or every split, with ``official_splits: false``) is made from the training images, whole
lesions (``lesion_id`` of the groupings CSV) stratified by class and seeded. Task ``multiclass``,
metric ``balanced_acc`` (the challenge's balanced multiclass accuracy; Juodelyte et al. report
AUC, also computed). ``size`` (required), ``channels`` (default 3), ``resize``, ``workers`` as for
``csv``. A missing CSV or image stops with a DataError naming the file (and row).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, listing_checksum, md5_file,
                                             read_table, row_names, split_keys)
from medtransfer.data.formats.isic import image_paths, lesion_ids, one_hot_to_index
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import carve_splits
from medtransfer.errors import ConfigError, DataError

CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
PARTS = {"train": "Training", "val": "Validation", "test": "Test"}
GROUPINGS = "ISIC2018_Task3_Training_LesionGroupings.csv"
DOWNLOAD = "https://challenge.isic-archive.com/data/#2018"
METRIC = "balanced_acc"


def ground_truth(root: Path, split: str) -> Path:
    """Where a split's ground truth CSV is: in its unzipped folder, or directly in ``root``."""
    file = f"ISIC2018_Task3_{PARTS[split]}_GroundTruth.csv"
    inner = root / f"ISIC2018_Task3_{PARTS[split]}_GroundTruth" / file
    return inner if inner.is_file() or not (root / file).is_file() else root / file


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's decoding keys, ``group_by`` and ``official_splits`` (``ConfigError``), before any
    file is read."""
    check_decoding_keys(name, entry)
    group_by = str(entry.get("group_by", "lesion"))
    if group_by not in ("lesion", "image"):
        raise ConfigError(f"datasets.{name}.group_by is {group_by!r}; allowed: lesion, image")
    if entry.get("official_splits", True) not in (True, False):
        raise ConfigError(f"datasets.{name}.official_splits is {entry.get('official_splits')!r}; allowed: true, false")


def _read_split(root: Path, split: str, name: str) -> tuple[Path, list[str], list[Path], np.ndarray, list[str]]:
    csv_path = ground_truth(root, split)
    table = read_table(csv_path, ["image", *CLASSES], hint=f"download ISIC 2018 task 3 from {DOWNLOAD}")
    rows = row_names(csv_path, len(table))
    labels = one_hot_to_index(table, rows, CLASSES)
    names, paths = image_paths(table, rows, root / f"ISIC2018_Task3_{PARTS[split]}_Input", name)
    return csv_path, names, paths, labels, rows


@register_format("isic2018", required={"root": "the folder with the unzipped ISIC 2018 task 3 archives",
                                       "size": "images are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read ISIC 2018 task 3's ground truths and images (decoded lazily)."""
    root = Path(require(entry, "root", name))
    check(name, entry)
    size, channels, resize, workers = decoding_keys(entry, name)
    official = bool(entry.get("official_splits", True))
    given = ["train"] + [s for s in ("val", "test") if official and ground_truth(root, s).is_file()]
    read_splits = {split: _read_split(root, split, name) for split in given}
    listing = listing_checksum(root, [p for s in given for p in read_splits[s][2]],
                               [r for s in given for r in read_splits[s][4]])
    seen: dict[str, str] = {}
    for split in given:
        for image, row in zip(read_splits[split][1], read_splits[split][4]):
            if image in seen:
                raise DataError(f"{row}: image {image!r} is also on {seen[image]}; an image is in one split")
            seen[image] = row
    splits = {split: (DecodedImages(paths, size, channels, resize, workers=workers, describe=rows), labels)
              for split, (_, _, paths, labels, rows) in read_splits.items()}
    attributes: dict[str, Any] = {"metric": METRIC, "images_listing_md5": listing,
                                  "official_splits": [s for s in given if s != "train"]}
    missing = {s: f for s, f in (("val", split_keys(entry)["val_fraction"]), ("test", split_keys(entry)["test_fraction"]))
               if s not in given}
    if missing:
        default = "lesion" if (root / GROUPINGS).is_file() else "image"
        group_by = str(entry.get("group_by", default))
        lesions = None
        if group_by == "lesion":
            if not (root / GROUPINGS).is_file():
                raise DataError(f"{root / GROUPINGS} does not exist: it gives the lesion of each training image, so "
                                f"that images of one lesion stay in one split; download it from {DOWNLOAD} or set "
                                f"datasets.{name}.group_by: image")
            lesions = lesion_ids(root / GROUPINGS, read_splits["train"][1], read_splits["train"][0].name)
            attributes["groupings_md5"] = md5_file(root / GROUPINGS)
        carved, made, _ = carve_splits(splits["train"][0], splits["train"][1], lesions, missing,
                                       seed=split_keys(entry)["seed"], source=read_splits["train"][0].name,
                                       grouping=group_by)
        splits.update(carved)
        attributes.update(made)
    else:
        attributes["split_policy"] = "the official training, validation and test ground truths"
    digest = hashlib.md5(" ".join(md5_file(read_splits[s][0]) for s in given).encode()).hexdigest()
    return RawDataset(splits=splits, task="multiclass", class_names=list(CLASSES), source=str(root),
                      checksum=digest, attributes=attributes)
