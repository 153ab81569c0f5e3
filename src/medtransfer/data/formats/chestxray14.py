"""NIH ChestX-ray14 (format ``chestxray14``): 112,120 frontal radiographs, 14 findings, as NIH ships them.

Download from https://nihcc.app.box.com/v/ChestXray-NIHCC (or Kaggle's "nih-chest-xrays/data")
and unpack the image archives where they are; ``root`` is the folder holding::

    Data_Entry_2017.csv          # or Data_Entry_2017_v2020.csv (preferred when both are there)
    train_val_list.txt           # 86,524 image names, one a line
    test_list.txt                # 25,596: the official test split
    images/00000001_000.png ...  # NIH's images_NNN.tar.gz unpack here, or
    images_001/images/...        # Kaggle's twelve parts images_001 .. images_012

::

    cxr14:
      format: chestxray14
      root: /data/ChestXray-NIHCC
      size: 224
      val_fraction: 0.1            # of train_val_list's patients (default 0.1)
      split_seed: 0
      # split_files:               # optional: Hosseinzadeh Taher et al.'s lists instead
      #   train: /src/BenchmarkTransferLearning/dataset/Xray14_train_official.txt
      #   val: /src/BenchmarkTransferLearning/dataset/Xray14_val_official.txt
      #   test: /src/BenchmarkTransferLearning/dataset/Xray14_test_official.txt

Labels are multilabel float32 [N, 14] in NIH's order (:data:`LABELS`: the order of Wang et al.,
CVPR 2017, NIH's README and the ``diseases`` list of Hosseinzadeh Taher et al.'s
``main_classification.py``), from the ``Finding Labels`` column (``Cardiomegaly|Effusion``);
``No Finding`` is all zero. Splits: ``test_list.txt`` is the test split; val is cut from
``train_val_list.txt`` by whole patients (``Patient ID``), stratified by the first positive
label and seeded, so no patient is in two splits (checked).

``split_files`` (a mapping of ``train``, ``val``, ``test`` to files, absolute or relative to
``root``) reads the splits from list files of lines ``image l1 ... l14`` (the ``lists`` format's
lines, NIH label order) instead, as Hosseinzadeh Taher et al. ship them (MR-HosseinzadehTaher/
BenchmarkTransferLearning ``dataset/Xray14_{train,val,test}_official.txt``: 75,312 / 11,212 /
25,596 images, the official test list, val patients apart from train; read by
``ChestXray14Dataset`` in their ``dataloader.py``, labels taken from the lists). The labels are
then the lists'; how many differ from ``Data_Entry`` is recorded (``labels_differing_from_data_entry``).
A split the files lack is made from the train list by patient.

``data_entry`` names the label CSV when it is neither of the two. The CSV is read by its
``Image Index``, ``Finding Labels`` and ``Patient ID`` columns (its bracketed
``OriginalImage[Width,Height]`` header cells and the 2017 file's trailing empty column are left
alone). Images are decoded lazily: ``size`` (required), ``channels`` (default 1, gray), ``resize``,
``workers`` as for ``chexpert``. Task ``multilabel``, metric ``auc``. A missing CSV or list, an
unknown finding, or an image a list names that no image folder holds stops with a DataError
naming the file, the line and the fix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, md5_file, md5_of_listing,
                                             read_table, row_names)
from medtransfer.data.formats.lists import check_unique, list_paths, multi_labels, read_list
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import SPLITS, RawDataset, register_format, require
from medtransfer.data.splits import carve_splits, check_disjoint
from medtransfer.errors import ConfigError, DataError

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
          "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
DATA_ENTRY = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
OFFICIAL_LISTS = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
DOWNLOAD = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
METRIC = "auc"


def _data_entry(root: Path, entry: Mapping[str, Any]) -> Path:
    if entry.get("data_entry"):
        return root / str(entry.get("data_entry"))
    for file in DATA_ENTRY:
        if (root / file).is_file():
            return root / file
    raise DataError(f"{root}: neither {' nor '.join(DATA_ENTRY)} is there; point 'root' at the unpacked "
                    f"ChestX-ray14 folder (download: {DOWNLOAD}) or name the label CSV with 'data_entry'")


def encode_findings(findings: Any, rows: list[str]) -> np.ndarray:
    """``Finding Labels`` cells (``A|B``, ``No Finding``) -> float32 [N, 14] in :data:`LABELS` order."""
    index = {label: k for k, label in enumerate(LABELS)}
    out = np.zeros((len(findings), len(LABELS)), np.float32)
    for i, cell in enumerate(findings):
        names = [n.strip() for n in str(cell).split("|")] if isinstance(cell, str) else []
        if names == [NO_FINDING]:
            continue
        unknown = [n for n in names if n not in index]
        if unknown or not names:
            raise DataError(f"{rows[i]}: 'Finding Labels' is {cell!r}; expected {NO_FINDING!r} or findings joined "
                            f"by '|' from {', '.join(LABELS)}")
        out[i, [index[n] for n in names]] = 1.0
    return out


def read_data_entry(path: Path) -> tuple[dict[str, int], np.ndarray, np.ndarray, list[str]]:
    """The label CSV -> (image name -> row index, labels float32 [N, 14], patient ids [N], row names)."""
    table = read_table(path, ["Image Index", "Finding Labels", "Patient ID"],
                       hint=f"download it from {DOWNLOAD}")
    rows = row_names(path, len(table))
    names = table["Image Index"].fillna("").str.strip().tolist()
    row_of: dict[str, int] = {}
    for i, image in enumerate(names):
        if not image.lower().endswith(".png"):
            raise DataError(f"{rows[i]}: 'Image Index' is {image!r}, not an image name like 00000001_000.png; "
                            "is this Data_Entry_2017.csv as downloaded?")
        if image in row_of:
            raise DataError(f"{rows[i]}: image {image!r} is also on {rows[row_of[image]]}")
        row_of[image] = i
    patients = table["Patient ID"].fillna("").str.strip().to_numpy()
    empty = np.flatnonzero(patients == "")
    if len(empty):
        raise DataError(f"{rows[int(empty[0])]}: empty 'Patient ID'")
    return row_of, encode_findings(table["Finding Labels"], rows), patients, rows


def image_folders(root: Path) -> list[Path]:
    """Where the images are: ``root/images`` and the parts ``root/images_NNN/images``."""
    return [f for f in [root / "images", *sorted(root.glob("images_*/images"))] if f.is_dir()]


def index_images(root: Path) -> dict[str, Path]:
    """Image file name -> its path, over :func:`image_folders`; a name in two folders is an error."""
    folders = image_folders(root)
    if not folders:
        raise DataError(f"{root}: no images/ folder (NIH's images_NNN.tar.gz unpack into it) nor images_NNN/images/ "
                        f"folders (Kaggle's parts); unpack the image archives in 'root' (download: {DOWNLOAD})")
    found: dict[str, Path] = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            for item in entries:
                if item.name.lower().endswith(".png") and item.is_file():
                    if item.name in found:
                        raise DataError(f"image {item.name} is in both {found[item.name].parent} and {folder}; "
                                        "keep one copy")
                    found[item.name] = Path(item.path)
    return found


def _split_files(entry: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    files = entry.get("split_files")
    if files is None:
        return None
    if not isinstance(files, Mapping) or "train" not in files or any(s not in SPLITS for s in files):
        raise ConfigError(f"datasets.{name}.split_files is {files!r}; give a mapping of splits to list files, "
                          "train required: {train: Xray14_train_official.txt, val: ..., test: ...}")
    return dict(files)


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's decoding keys and ``split_files`` (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    _split_files(entry, name)


def _official_lists(root: Path, row_of: dict[str, int], csv_path: Path) -> tuple[dict[str, list[int]],
                                                                                 dict[str, list[str]], list[Path]]:
    """train_val_list.txt and test_list.txt -> the CSV rows of each, and their line names."""
    rows: dict[str, list[int]] = {}
    lines: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    paths = []
    for part, file in OFFICIAL_LISTS.items():
        path = root / file
        if not path.is_file():
            raise DataError(f"{path} does not exist: it is part of the ChestX-ray14 download ({DOWNLOAD}); put it "
                            "in 'root' beside the label CSV, or give 'split_files'")
        paths.append(path)
        rows[part], lines[part] = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            image = line.strip()
            if not image:
                continue
            where = f"{path} line {number}"
            if image not in row_of:
                raise DataError(f"{where}: image {image!r} has no row in {csv_path}")
            if image in seen:
                raise DataError(f"{where}: image {image!r} is also on {seen[image]}; an image is in one split")
            seen[image] = where
            rows[part].append(row_of[image])
            lines[part].append(where)
        if not rows[part]:
            raise DataError(f"{path}: no image names")
    return rows, lines, paths


def _paths(names: list[str], lines: list[str], found: dict[str, Path], root: Path) -> list[Path]:
    out = []
    for image, line in zip(names, lines):
        if image not in found:
            where = ", ".join(str(f.relative_to(root)) + "/" for f in image_folders(root))
            raise DataError(f"{line}: image {image} is in no image folder ({where}); is the download complete "
                            "(all images_NNN archives unpacked in 'root')?")
        out.append(found[image])
    return out


@register_format("chestxray14", required={"root": "the unpacked ChestX-ray14 folder (Data_Entry_2017.csv, images)",
                                          "size": "images are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read ChestX-ray14's label CSV, official lists (or ``split_files``) and images (decoded lazily)."""
    root = Path(require(entry, "root", name))
    check(name, entry)
    size, channels, resize, workers = decoding_keys({"channels": 1, **entry}, name)
    val_fraction, seed = float(entry.get("val_fraction", 0.1)), int(entry.get("split_seed", 0))
    csv_path = _data_entry(root, entry)
    row_of, csv_labels, csv_patients, _ = read_data_entry(csv_path)
    found = index_images(root)
    names_of = list(row_of)
    files = _split_files(entry, name)
    attributes: dict[str, Any] = {"metric": METRIC, "labels": list(LABELS), "data_entry": csv_path.name}

    parts: dict[str, tuple[list[str], np.ndarray, np.ndarray, list[str]]] = {}  # names, labels, patients, lines
    if files is None:
        rows, lines, list_files = _official_lists(root, row_of, csv_path)
        for part, split in (("train_val", "train"), ("test", "test")):
            idx = np.asarray(rows[part], np.int64)
            parts[split] = ([names_of[i] for i in idx], csv_labels[idx], csv_patients[idx], lines[part])
        source = OFFICIAL_LISTS["train_val"]
    else:
        lists = {split: read_list(path, hint=f"datasets.{name}.split_files.{split} names it (absolute, or relative "
                                             "to root)") for split, path in list_paths(root, files).items()}
        check_unique(lists)
        for split, lst in lists.items():
            if len(lst.labels[0]) != len(LABELS):
                raise DataError(f"{lst.lines[0]}: {len(lst.labels[0])} label(s); ChestX-ray14 lists carry "
                                f"{len(LABELS)} a line, in NIH's order ({', '.join(LABELS)})")
        labels = multi_labels(lists)
        differ = 0
        for split, lst in lists.items():
            missing = [line for image, line in zip(lst.names, lst.lines) if image not in row_of]
            if missing:
                raise DataError(f"{missing[0]}: image {lst.names[lst.lines.index(missing[0])]!r} has no row in "
                                f"{csv_path} (and {len(missing) - 1} more); are these ChestX-ray14 lists?")
            idx = np.asarray([row_of[image] for image in lst.names], np.int64)
            differ += int((np.nan_to_num(labels[split], nan=-1.0) != csv_labels[idx]).any(axis=1).sum())
            parts[split] = (lst.names, labels[split], csv_patients[idx], lst.lines)
        list_files = [lst.path for lst in lists.values()]
        attributes["split_files"] = {split: str(lst.path) for split, lst in lists.items()}
        attributes["labels_differing_from_data_entry"] = differ
        source = lists["train"].path.name

    paths = {split: _paths(p[0], p[3], found, root) for split, p in parts.items()}
    images = {split: DecodedImages(paths[split], size, channels, resize, workers=workers, describe=parts[split][3])
              for split in parts}
    splits = {split: (images[split], parts[split][1]) for split in parts}
    patients = {split: parts[split][2] for split in parts}
    missing = {split: val_fraction if split == "val" else float(entry.get("test_fraction", 0.2))
               for split in ("val", "test") if split not in parts}
    if missing:
        carved, made, index = carve_splits(images["train"], parts["train"][1], parts["train"][2], missing, seed=seed,
                                           source=source, grouping="patient")
        splits.update(carved)
        patients.update({split: parts["train"][2][idx] for split, idx in index.items()})
        attributes.update(made)
    else:
        attributes["split_policy"] = "the given split files"
    check_disjoint({s: np.unique(p) for s, p in patients.items()}, "patient", str(root))
    attributes["patients"] = {s: int(len(np.unique(p))) for s, p in patients.items()}
    attributes["images_listing_md5"] = md5_of_listing(root, [p for s in parts for p in paths[s]])
    digest = hashlib.md5(" ".join(md5_file(p) for p in [csv_path, *list_files]).encode()).hexdigest()
    return RawDataset(splits=splits, task="multilabel", class_names=list(LABELS), source=str(root),
                      checksum=digest, attributes=attributes, groups=patients)
