"""ISIC 2019 (format ``isic2019``): dermoscopic images, 8 diagnostic classes.

Download ``ISIC_2019_Training_Input.zip``, ``ISIC_2019_Training_GroundTruth.csv`` and
``ISIC_2019_Training_Metadata.csv`` from the ISIC challenge site and unzip into one folder::

    isic:
      format: isic2019
      root: /data/isic2019      # holds the two CSVs and ISIC_2019_Training_Input/
      size: 224
      group_by: lesion          # or image; default lesion when the metadata CSV is there
      val_fraction: 0.1         # defaults 0.1 and 0.2
      test_fraction: 0.2
      split_seed: 0

The ground truth is one-hot: columns ``MEL, NV, BCC, AK, BKL, DF, VASC, SCC`` (melanoma, nevus,
basal cell carcinoma, actinic keratosis, benign keratosis, dermatofibroma, vascular lesion,
squamous cell carcinoma) and ``UNK`` (none of these: never set in the training set, so it is not
a class here; a row with UNK = 1 is an error). Each row must have exactly one 1 -> class index.
The challenge's test labels are not part of the download, so val and test are made from the
training images, stratified by class and seeded; images of one lesion (metadata ``lesion_id``)
stay in one split. Task ``multiclass``, metric ``balanced_acc`` (mean per-class recall, the
challenge's and Matsoukas et al.'s metric). ``images`` names the image folder when it is not
``ISIC_2019_Training_Input``; ``size`` (required), ``channels`` (default 3), ``resize``, ``workers``
as for ``csv``. An ``image`` that names a file outside the image folder (absolute, or ``..``) is
refused, naming its row.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, listing_checksum, md5_file,
                                             path_inside, read_table, row_names, split_keys)
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import split_source_train
from medtransfer.errors import ConfigError, DataError

CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGES = "ISIC_2019_Training_Input"
DOWNLOAD = "https://challenge.isic-archive.com/data/#2019"
METRIC = "balanced_acc"


def one_hot_to_index(table: Any, rows: list[str], classes: tuple[str, ...] = CLASSES) -> np.ndarray:
    """The class index of each one-hot row over ``classes`` (int64 [N]); DataError naming the
    first bad row. ISIC's ground-truth CSVs of 2018 and 2019 are both written this way."""
    import pandas as pd

    values = table[list(classes)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    unknown = pd.to_numeric(table["UNK"], errors="coerce").fillna(0).to_numpy() if "UNK" in table else None
    for i, row in enumerate(values):
        if not np.all(np.isin(row, (0.0, 1.0))) or row.sum() != 1.0:
            if unknown is not None and unknown[i] == 1.0:
                raise DataError(f"{rows[i]}: UNK = 1 (none of the 8 diagnoses); the ISIC 2019 training set "
                                "has no such image, and it is not a class here: remove the row")
            cells = ", ".join(f"{c}={v}" for c, v in zip(classes, table.loc[i, list(classes)]))
            raise DataError(f"{rows[i]}: expected exactly one of {', '.join(classes)} to be 1 and the rest 0, "
                            f"got {cells}")
    return values.argmax(axis=1).astype(np.int64)


def lesion_ids(meta_path: Path, images: list[str], listed_in: str) -> np.ndarray:
    """Lesion id per image from a CSV with ``image`` and ``lesion_id`` columns (ISIC 2019's
    metadata, ISIC 2018's lesion groupings); an image with an empty id is its own lesion, an image
    without a row an error naming ``listed_in`` (the ground truth that lists it)."""
    meta = read_table(meta_path, ["image", "lesion_id"])
    lesion_of = dict(zip(meta["image"].str.strip(), meta["lesion_id"]))
    missing = [img for img in images if img not in lesion_of]
    if missing:
        raise DataError(f"{meta_path}: no row for image {missing[0]!r} (and {len(missing) - 1} more) of {listed_in}")
    return np.asarray([lesion_of[img] if isinstance(lesion_of[img], str) else f"image:{img}" for img in images])


def image_paths(table: Any, rows: list[str], folder: Path, name: str) -> tuple[list[str], list[Path]]:
    """The ``image`` column (``ISIC_0024306``) -> names and ``folder/{name}.jpg``; DataError naming
    the row of an empty name or one that leads out of ``folder``."""
    names = []
    for i, image in enumerate(table["image"]):
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{rows[i]}: empty 'image'")
        names.append(image.strip())
    paths = [path_inside(folder, f"{image}.jpg", f"datasets.{name}: {row}, column 'image'", value=image)
             for row, image in zip(rows, names)]
    return names, paths


def _lesions(root: Path, images: list[str], name: str, group_by: str) -> np.ndarray | None:
    """Lesion id per image from the metadata CSV (an image without one is its own lesion)."""
    if group_by == "image":
        return None
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise DataError(f"{meta_path} does not exist: it gives the lesion of each image, so that images of "
                        f"one lesion stay in one split; download it from {DOWNLOAD} or set "
                        f"datasets.{name}.group_by: image")
    return lesion_ids(meta_path, images, GROUND_TRUTH)


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's decoding keys and ``group_by`` (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    group_by = str(entry.get("group_by", "lesion"))
    if group_by not in ("lesion", "image"):
        raise ConfigError(f"datasets.{name}.group_by is {group_by!r}; allowed: lesion, image")


@register_format("isic2019", required={"root": "the folder with the ISIC 2019 CSVs and image folder",
                                       "size": "images are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read ISIC 2019's training ground truth, metadata and images (decoded lazily)."""
    root = Path(require(entry, "root", name))
    check(name, entry)
    size, channels, resize, workers = decoding_keys(entry, name)
    default = "lesion" if (root / METADATA).is_file() else "image"
    group_by = str(entry.get("group_by", default))
    csv_path = root / GROUND_TRUTH
    table = read_table(csv_path, ["image", *CLASSES], hint=f"download it from {DOWNLOAD}")
    rows = row_names(csv_path, len(table))
    labels = one_hot_to_index(table, rows)
    names, paths = image_paths(table, rows, root / str(entry.get("images", IMAGES)), name)
    listing = listing_checksum(root, paths, rows)
    lesions = _lesions(root, names, name, group_by)
    images = DecodedImages(paths, size, channels, resize, workers=workers, describe=rows)
    splits, attributes = split_source_train(images, labels, lesions, source=GROUND_TRUTH, grouping=group_by,
                                            **split_keys(entry))
    attributes.update({"metric": METRIC, "images_listing_md5": listing})
    if lesions is not None:
        attributes["metadata_md5"] = md5_file(root / METADATA)
    return RawDataset(splits=splits, task="multiclass", class_names=list(CLASSES), source=str(csv_path),
                      checksum=md5_file(csv_path), attributes=attributes)
