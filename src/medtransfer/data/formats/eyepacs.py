"""EyePACS, Kaggle Diabetic Retinopathy Detection 2015 (format ``eyepacs``): fundus photographs, DR grade 0-4.

Download the competition data (``kaggle competitions download -c diabetic-retinopathy-detection``),
join and unzip ``train.zip.001``..``005`` (and, optionally, ``test.zip.001``..``007``) and
``trainLabels.csv.zip``; the test labels are the competition's solution file
(``retinopathy_solution.csv``, often redistributed as ``testLabels.csv``). ``root`` holds::

    trainLabels.csv         # image,level          (35,126 rows: 10_left,0)
    train/10_left.jpeg ...
    testLabels.csv          # optional: image,level,Usage  (53,576 rows; or retinopathy_solution.csv)
    test/1_left.jpeg ...

::

    eyepacs:
      format: eyepacs
      root: /data/diabetic-retinopathy-detection
      size: 224
      binarize: referable     # optional: grade >= 2 -> 1 (referable DR), else 0
      val_fraction: 0.1       # of the training patients (defaults 0.1, and 0.2 for test_fraction)
      split_seed: 0

Images are named ``{patient}_{left|right}``: the patient is the number before ``_left`` /
``_right``, and a patient's two eyes always share a split (checked). With the test labels their
rows (Public and Private alike; the counts are recorded) are the test split and val is made from
the training patients; without them val and test are both made from the training patients,
stratified by grade (the patient's most frequent) and seeded.

Labels: task ``ordinal`` (5 grades, metric ``kappa``, quadratic-weighted as the competition's);
with ``binarize: referable``, task ``binary`` (0 = grade 0-1, 1 = grade 2-4: referable DR,
moderate or worse, as Gulshan et al. 2016 define it; the binary retina task of Raghu et al.'s
study, whose AUCs are on their own fundus data), metric ``auc``.
``size`` (required), ``channels`` (default 3), ``resize``, ``workers`` as for ``csv``. A missing
CSV or image, a grade outside 0-4 or an image name not of that form stops with a DataError
naming the file and row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, grades, listing_checksum,
                                             md5_file, path_inside, read_table, row_names, split_keys)
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import carve_splits, check_disjoint
from medtransfer.errors import ConfigError, DataError

GRADES = ("0 no DR", "1 mild", "2 moderate", "3 severe", "4 proliferative DR")
REFERABLE = ("non-referable (grade 0-1)", "referable (grade 2-4)")
TRAIN_LABELS = "trainLabels.csv"
TEST_LABELS = ("testLabels.csv", "retinopathy_solution.csv")
BINARIZE = {"referable": 2}  # name -> the lowest grade that is positive
DOWNLOAD = "https://www.kaggle.com/competitions/diabetic-retinopathy-detection/data"
EYE = re.compile(r"^(\d+)_(left|right)$")


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's decoding keys and ``binarize`` (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    binarize = entry.get("binarize")
    if binarize is not None and binarize not in BINARIZE:
        raise ConfigError(f"datasets.{name}.binarize is {binarize!r}; allowed: {', '.join(BINARIZE)} "
                          "(or leave it out for the 5 grades)")


def read_labels(path: Path, folder: Path, name: str) -> tuple[list[Path], np.ndarray, np.ndarray, list[str], Any]:
    """One label CSV -> image paths in ``folder``, grades int64 [N], patients [N], row names, table."""
    table = read_table(path, ["image", "level"], hint=f"download it from {DOWNLOAD}")
    rows = row_names(path, len(table))
    levels = grades(table["level"].tolist(), rows, "level", len(GRADES), "DR grades")
    patients, paths = [], []
    for i, image in enumerate(table["image"]):
        image = image.strip() if isinstance(image, str) else ""
        eye = EYE.match(image)
        if not eye:
            raise DataError(f"{rows[i]}: 'image' is {image!r}; expected <patient number>_left or _right, "
                            "as the competition names its images")
        patients.append(eye.group(1))
        paths.append(path_inside(folder, f"{image}.jpeg", f"datasets.{name}: {rows[i]}, column 'image'", value=image))
    return paths, levels, np.asarray(patients), rows, table


@register_format("eyepacs", required={"root": "the folder with trainLabels.csv and train/",
                                      "size": "images are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read Kaggle DR 2015's label CSVs and images (decoded lazily)."""
    root = Path(require(entry, "root", name))
    check(name, entry)
    size, channels, resize, workers = decoding_keys(entry, name)
    binarize = entry.get("binarize")
    keys = split_keys(entry)
    csvs = {"train": root / TRAIN_LABELS}
    test_csv = next((root / f for f in TEST_LABELS if (root / f).is_file()), None)
    if test_csv is not None:
        csvs["test"] = test_csv
    read_splits = {split: read_labels(path, root / split, name) for split, path in csvs.items()}
    listing = listing_checksum(root, [p for s in csvs for p in read_splits[s][0]],
                               [r for s in csvs for r in read_splits[s][3]])
    labels, class_names, task, metric = {}, list(GRADES), "ordinal", "kappa"
    for split, (_, levels, _, _, _) in read_splits.items():
        labels[split] = levels if binarize is None else (levels >= BINARIZE[binarize]).astype(np.int64)
    if binarize is not None:
        class_names, task, metric = list(REFERABLE), "binary", "auc"
    splits = {split: (DecodedImages(paths, size, channels, resize, workers=workers, describe=rows), labels[split])
              for split, (paths, _, _, rows, _) in read_splits.items()}
    patients = {split: read_splits[split][2] for split in csvs}
    attributes: dict[str, Any] = {"metric": metric, "images_listing_md5": listing, "binarize": binarize or "none"}
    if test_csv is not None and "Usage" in read_splits["test"][4]:
        usage = read_splits["test"][4]["Usage"].fillna("").str.strip().value_counts()
        attributes["test_usage"] = {str(k): int(v) for k, v in usage.items()}
    missing = {"val": keys["val_fraction"], **({} if test_csv is not None else {"test": keys["test_fraction"]})}
    # stratified by grade even when binarized, so both tasks get the same patients in each split
    carved, made, index = carve_splits(splits["train"][0], read_splits["train"][1], patients["train"], missing,
                                       seed=keys["seed"], source=TRAIN_LABELS, grouping="patient")
    for split, idx in index.items():
        splits[split] = (carved[split][0], labels["train"][idx])
        patients[split] = read_splits["train"][2][idx]
    attributes.update(made)
    if test_csv is not None:
        attributes["split_policy"] += f"; test = {test_csv.name}"
    check_disjoint({s: np.unique(p) for s, p in patients.items()}, "patient", str(root))
    attributes["patients"] = {s: int(len(np.unique(p))) for s, p in patients.items()}
    digest = hashlib.md5(" ".join(md5_file(p) for p in csvs.values()).encode()).hexdigest()
    return RawDataset(splits=splits, task=task, class_names=class_names, source=str(root), checksum=digest,
                      attributes=attributes, groups=patients)
