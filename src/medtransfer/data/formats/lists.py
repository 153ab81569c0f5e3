"""Split list files as papers ship them (format ``lists``): one text file per split, one image a line.

Hosseinzadeh Taher et al. (2021) ship their splits this way (MR-HosseinzadehTaher/
BenchmarkTransferLearning, ``dataset/ShenzenCXR_{train,valid,test}_data.txt``: lines
``CHNCXR_0578_1.png,1``; ``dataset/Xray14_*_official.txt``: lines ``00000001_000.png 0 1 0 ... 0``;
read by ``ShenzhenCXR`` and ``ChestXray14Dataset`` in their ``dataloader.py``)::

    shenzhen:
      format: lists
      root: /data/ChinaSet_AllFiles        # the dataset as downloaded
      images: CXR_png                      # the image folder, relative to root (default: root itself)
      files:                               # one list per split; absolute, or relative to root
        train: /src/BenchmarkTransferLearning/dataset/ShenzenCXR_train_data.txt
        val: /src/BenchmarkTransferLearning/dataset/ShenzenCXR_valid_data.txt
        test: /src/BenchmarkTransferLearning/dataset/ShenzenCXR_test_data.txt
      class_names: [normal, tuberculosis]  # optional
      size: 224
      channels: 1

A line is ``image,label[,label...]`` when it holds a comma (fields stripped; image names may then
hold spaces), else ``image label [label...]`` split on whitespace; blank lines are skipped, and
there is no header. Every line of every file carries the same number K of labels:

- K = 1: one class per image. Integer labels are class indices (0..C-1; ``class_names``, when
  given, names each index, else the names are ``"0"``, ``"1"``, ...). Other labels are class
  names: their index is their position in ``class_names``, else in the sorted names. 2 classes
  -> ``binary``, more -> ``multiclass``; ``task: ordinal`` may say the classes are ordered.
- K > 1: ``multilabel`` float32 [N, K]; 1 positive, 0 negative, -1 unknown (NaN, masked in the
  loss and the AUC), as the ``csv`` format; ``class_names`` (K of them) names the labels, else
  ``label1`` .. ``labelK``.

``files`` must name ``train``; a split it lacks is made from the train list's images
(``val_fraction`` default 0.1, ``test_fraction`` default 0.2, ``split_seed`` default 0; each
image its own group, as the lists name no patient), stratified by class. An image named in two
lists, or in one list twice, is an error (a leak between splits). ``size`` (required),
``channels`` (default 3), ``resize``, ``workers`` as for ``csv``. A list or image that does not
exist, a malformed line, or an image name leading out of the image folder stops with a DataError
naming the file and line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, listing_checksum, md5_file,
                                             path_inside, split_keys, task_for)
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import SPLITS, RawDataset, register_format, require
from medtransfer.data.splits import carve_splits
from medtransfer.errors import ConfigError, DataError


class ListFile(NamedTuple):
    """One split list: ``names[i]`` the image of line ``lines[i]`` (``"{file} line {n}"``),
    ``labels[i]`` its label fields as written."""

    path: Path
    names: list[str]
    labels: list[tuple[str, ...]]
    lines: list[str]


def read_list(path: Path, hint: str = "") -> ListFile:
    """A list file -> its lines' image names and label fields; DataError naming the file (and line)
    when it is missing, empty, or has a line without labels or a different number of them."""
    if not path.is_file():
        raise DataError(f"{path} does not exist" + (f"; {hint}" if hint else ""))
    names, labels, lines = [], [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file of 'image label(s)' lines ({err})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        where = f"{path} line {number}"
        if len(fields) < 2 or not all(fields):
            raise DataError(f"{where}: expected 'image,label' or 'image l1 ... lK', got {line.strip()!r}")
        if labels and len(fields) - 1 != len(labels[0]):
            raise DataError(f"{where}: {len(fields) - 1} label(s), but {lines[0]} has {len(labels[0])}; "
                            "every line carries the same labels")
        names.append(fields[0])
        labels.append(tuple(fields[1:]))
        lines.append(where)
    if not names:
        raise DataError(f"{path}: no lines")
    return ListFile(path, names, labels, lines)


def _integer(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def single_labels(lists: Mapping[str, ListFile], class_names: Sequence[str] | None,
                  where: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """One label per line -> class names and int64 [N] class indices per split (see the module)."""
    values = [(split, i, v[0]) for split, lst in lists.items() for i, v in enumerate(lst.labels)]
    numbers = [_integer(v) for _, _, v in values]
    out = {split: np.empty(len(lst.names), np.int64) for split, lst in lists.items()}
    if all(n is not None for n in numbers):
        count = len(class_names) if class_names is not None else max(numbers) + 1
        names = list(class_names) if class_names is not None else [str(k) for k in range(count)]
        for (split, i, value), number in zip(values, numbers):
            if not 0 <= number < count:
                named = f" ({', '.join(names)})" if class_names is not None else ""
                raise DataError(f"{lists[split].lines[i]}: label {value!r} is not a class index 0..{count - 1}{named}")
            out[split][i] = number
    else:
        names = list(class_names) if class_names is not None else sorted({v for _, _, v in values})
        index = {name: k for k, name in enumerate(names)}
        for split, i, value in values:
            if value not in index:
                raise DataError(f"{lists[split].lines[i]}: label {value!r} is not one of {where}.class_names "
                                f"({', '.join(names)})")
            out[split][i] = index[value]
    if len(names) < 2:
        raise DataError(f"{where}: the lists hold one class only ({names[0]!r}); a classification target needs "
                        "two or more (name them all in class_names)")
    return names, out


MULTILABEL_VALUES = {1.0: 1.0, 0.0: 0.0, -1.0: np.nan}


def multi_labels(lists: Mapping[str, ListFile]) -> dict[str, np.ndarray]:
    """K > 1 labels per line -> float32 [N, K] per split: 1, 0, or NaN for -1 (unknown)."""
    out = {}
    for split, lst in lists.items():
        labels = np.empty((len(lst.names), len(lst.labels[0])), np.float32)
        for i, fields in enumerate(lst.labels):
            for k, value in enumerate(fields):
                number = _integer(value)
                if number not in MULTILABEL_VALUES:
                    raise DataError(f"{lst.lines[i]}: label {k + 1} is {value!r}; multilabel lines hold 1 "
                                    "(positive), 0 (negative) or -1 (unknown)")
                labels[i, k] = MULTILABEL_VALUES[number]
        out[split] = labels
    return out


def check_unique(lists: Mapping[str, ListFile]) -> None:
    """DataError for an image named twice, in one list or in two (it would be in two splits)."""
    seen: dict[str, str] = {}
    for lst in lists.values():
        for name, line in zip(lst.names, lst.lines):
            if name in seen:
                raise DataError(f"{line}: image {name!r} is also on {seen[name]}; an image belongs to one line "
                                "of one split")
            seen[name] = line


def list_paths(root: Path, files: Mapping[str, Any]) -> dict[str, Path]:
    """``files``' paths: absolute, or relative to ``root``."""
    return {split: root / str(path) for split, path in files.items()}


def lists_checksum(paths: Sequence[Path]) -> str:
    """One md5 over the list files' md5s, in split order."""
    return hashlib.md5(" ".join(md5_file(p) for p in paths).encode()).hexdigest()


def _files(entry: Mapping[str, Any], name: str) -> dict[str, Any]:
    files = require(entry, "files", name)
    if not isinstance(files, Mapping) or "train" not in files:
        raise ConfigError(f"datasets.{name}.files is {files!r}; give a mapping of splits to list files, "
                          "train required: {train: train.txt, val: val.txt, test: test.txt}")
    unknown = [str(s) for s in files if s not in SPLITS]
    if unknown:
        raise ConfigError(f"datasets.{name}.files: split(s) {', '.join(unknown)} unknown; allowed: {', '.join(SPLITS)}")
    return dict(files)


def _class_names(entry: Mapping[str, Any], name: str) -> list[str] | None:
    names = entry.get("class_names")
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence) or len(set(map(str, names))) != len(names) \
            or not names:
        raise ConfigError(f"datasets.{name}.class_names is {names!r}; give a list of distinct names")
    return [str(n) for n in names]


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's decoding keys, ``files``, ``class_names`` and ``task`` (``ConfigError``), before
    any file is read."""
    check_decoding_keys(name, entry)
    _files(entry, name)
    _class_names(entry, name)
    if entry.get("task") not in (None, "binary", "multiclass", "ordinal", "multilabel"):
        raise ConfigError(f"datasets.{name}.task is {entry.get('task')!r}; allowed: binary, multiclass, ordinal, "
                          "multilabel (the default follows the lists' labels)")


@register_format("lists", required={"root": "the dataset's folder", "size": "images are resized to size x size",
                                    "files": "the split list files, {train: ..., val: ..., test: ...}"},
                 check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read the list files and the images they name (decoded lazily)."""
    root = Path(require(entry, "root", name))
    check(name, entry)
    size, channels, resize, workers = decoding_keys(entry, name)
    where = f"datasets.{name}"
    lists = {split: read_list(path, hint=f"{where}.files.{split} names it (absolute, or relative to root)")
             for split, path in list_paths(root, _files(entry, name)).items()}
    check_unique(lists)
    class_names = _class_names(entry, name)
    width = len(lists["train"].labels[0])
    for lst in lists.values():
        if len(lst.labels[0]) != width:
            raise DataError(f"{lst.lines[0]}: {len(lst.labels[0])} label(s), but {lists['train'].lines[0]} has "
                            f"{width}; every list carries the same labels")
    task = entry.get("task")
    if width == 1:
        if task == "multilabel":
            raise ConfigError(f"{where}.task is 'multilabel' but the lists carry one label a line")
        class_names, labels = single_labels(lists, class_names, where)
        task = task_for(len(class_names), task, where)
    else:
        if task not in (None, "multilabel"):
            raise ConfigError(f"{where}.task is {task!r} but the lists carry {width} labels a line (multilabel)")
        if class_names is not None and len(class_names) != width:
            raise ConfigError(f"{where}.class_names has {len(class_names)} names but the lists carry {width} "
                              "labels a line")
        class_names = class_names or [f"label{k + 1}" for k in range(width)]
        labels, task = multi_labels(lists), "multilabel"
    folder = root / str(entry.get("images", "."))
    paths = {split: [path_inside(folder, image, f"{where}: {line}, image", value=image)
                     for image, line in zip(lst.names, lst.lines)] for split, lst in lists.items()}
    listing = listing_checksum(root, [p for s in lists for p in paths[s]], [x for s in lists for x in lists[s].lines])
    images = {split: DecodedImages(paths[split], size, channels, resize, workers=workers, describe=lst.lines)
              for split, lst in lists.items()}
    splits = {split: (images[split], labels[split]) for split in lists}
    attributes: dict[str, Any] = {"metric": "auc", "images_listing_md5": listing,
                                  "lists": {split: str(lst.path) for split, lst in lists.items()}}
    missing = {split: fraction for split, fraction in (("val", split_keys(entry)["val_fraction"]),
                                                        ("test", split_keys(entry)["test_fraction"]))
               if split not in lists}
    if missing:
        carved, made, _ = carve_splits(images["train"], labels["train"], None, missing,
                                       seed=split_keys(entry)["seed"], source=lists["train"].path.name,
                                       grouping="image")
        splits.update(carved)
        attributes.update(made)
    else:
        attributes["split_policy"] = "the given list files"
    if task == "ordinal":
        attributes["metric"] = "kappa"
    return RawDataset(splits=splits, task=task, class_names=class_names, source=str(lists["train"].path),
                      checksum=lists_checksum([lst.path for lst in lists.values()]), attributes=attributes)
