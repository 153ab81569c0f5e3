"""A user's own images: an image-folder tree (format ``imagefolder``) or a CSV label file (``csv``).

``imagefolder``::

    mine: {format: imagefolder, root: /data/mine, size: 64, channels: 1}

``root`` holds either ``train/``, ``val/``, ``test/`` each with one folder per class, or one folder
per class directly. Class names are the folder names, sorted (as torchvision's ``ImageFolder``),
unless ``classes`` lists them. Splits the tree lacks are made from the train images, stratified by
class and seeded: ``val_fraction`` (default 0.1), ``test_fraction`` (default 0.2), ``split_seed``
(default 0); the cache records how (attribute ``split_policy``). ``task`` may override
``binary``/``multiclass`` with ``ordinal``.

Unlabelled images (pretraining data for the self-supervised methods, never a target)::

    cxr-unlabelled: {format: imagefolder, root: /data/cxr, labels: false, size: 64, channels: 1}

With ``labels: false`` every image under ``root`` (or under its ``train/``, ``val/``, ``test/``),
at any depth, is read; the cache's task is ``unlabeled`` (labels -1, no class names) and the
missing splits are drawn at random.

``csv``::

    mine: {format: csv, root: /data/mine, file: labels.csv, path_column: path, label_column: grade,
           task: ordinal, size: 64}

- ``path_column``: image paths, relative to ``root`` (or absolute).
- ``label_column``: one label per row (int or str). Class index = position of the value in
  ``classes`` (compared as strings) when given, else in the sorted unique values (numeric order when
  all values are numbers). 2 classes -> ``binary``, more -> ``multiclass``; ``task`` may say
  ``ordinal``.
- or ``label_columns``: a list of 0/1 columns -> ``multilabel`` float32 [N, K]. Label policy:
  1 -> 1.0 (positive), 0 -> 0.0 (negative), an empty cell or -1 -> NaN (unknown: masked in the
  loss); any other value is an error.
- ``split_column`` (optional): ``train``/``val``/``test`` per row (``valid``/``validation`` mean
  ``val``); rows of other splits are an error. Without it, or for splits it lacks, seeded stratified
  splits as for ``imagefolder``.

Both: ``size`` (required; every image is resized to size x size with PIL, no cropping),
``channels`` (1 = gray, 3 = RGB; default 3), ``resize`` (PIL filter: nearest, bilinear (default),
area = box, bicubic), ``workers`` (threads decoding images; default the usable cores + 1). 16-bit gray images
are scaled to 8 bits (value / 257). A file that is missing or unreadable, a missing column or a
label outside ``classes`` stops with a DataError naming the file (and the CSV row).

Both read only the file list and labels; the images are a
:class:`~medtransfer.data.images.DecodedImages`, decoded chunk by chunk while the cache is written
(:func:`medtransfer.data.streaming.write_cache`, resumable), so converting ImageNet-1k holds a
few chunks of pixels, not the dataset. A missing CSV image stops the reader (before converting);
an unreadable one stops the conversion, naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.formats.common import (SPLIT_ALIASES, check_decoding_keys, decoding_keys, listing_checksum,
                                             md5_file, md5_of_listing, split_keys, task_for)
from medtransfer.data.images import IMAGE_EXTENSIONS, DecodedImages
from medtransfer.data.raw import NO_LABEL, SPLITS, RawDataset, register_format, require
from medtransfer.data.splits import complete_splits
from medtransfer.errors import ConfigError, DataError


# --- both: class names --------------------------------------------------------------------------

def _class_index(values: Sequence[Any], classes: Sequence[Any] | None) -> tuple[list[str], dict[str, int]]:
    """Class names and a value -> index map (values compared as strings)."""
    if classes is None:
        unique = sorted({str(v) for v in values})
        try:
            unique = sorted(unique, key=float)  # numbers in numeric order: "10" after "9"
        except ValueError:
            pass
        classes = unique
    names = [str(c) for c in classes]
    return names, {c: i for i, c in enumerate(names)}


# --- imagefolder -----------------------------------------------------------------------------------

def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@register_format("imagefolder", required={"root": "the folder with one sub-folder per class",
                                          "size": "images are resized to size x size"}, check=check_decoding_keys)
def read_imagefolder(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read a tree of one folder per class, with or without train/val/test on top."""
    root = Path(require(entry, "root", name))
    if not root.is_dir():
        raise DataError(f"datasets.{name}.root: folder {root} does not exist")
    size, channels, resize, workers = decoding_keys(entry, name)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {', '.join(split_dirs)}/ but no train/ folder")
    tops = split_dirs or {"train": root}
    if entry.get("labels", True) is False:
        return _read_unlabeled(name, entry, root, tops, size, channels, resize, workers)
    found = sorted({d.name for top in tops.values() for d in top.iterdir() if d.is_dir()})
    class_names, index = _class_index(found, entry.get("classes"))
    listing: dict[str, tuple[list[Path], list[int]]] = {}
    for split, top in tops.items():
        paths, labels = [], []
        for folder in sorted(d for d in top.iterdir() if d.is_dir()):
            if folder.name not in index:
                raise DataError(f"{folder}: class folder {folder.name!r} is not in datasets.{name}.classes "
                                f"({', '.join(class_names)})")
            files = _images_in(folder)
            paths += files
            labels += [index[folder.name]] * len(files)
        if not paths:
            loose = bool(_images_in(top))
            raise DataError(f"{top}: no images ({', '.join(IMAGE_EXTENSIONS)}) in one folder per class"
                            + (f"; it holds images without class folders: for unlabelled pretraining "
                               f"data set datasets.{name}.labels: false" if loose else ""))
        listing[split] = (paths, labels)
    all_files = [p for paths, _ in listing.values() for p in paths]
    splits = {
        split: (DecodedImages(paths, size, channels, resize, workers=workers), np.asarray(labels, np.int64))
        for split, (paths, labels) in listing.items()
    }
    attributes: dict[str, Any] = {}
    splits = complete_splits(splits, attributes=attributes, **split_keys(entry))
    return RawDataset(
        splits=splits,
        task=task_for(len(class_names), entry.get("task"), f"datasets.{name}"),
        class_names=class_names,
        source=str(root),
        checksum=md5_of_listing(root, all_files),
        attributes=attributes,
    )


def _read_unlabeled(name: str, entry: dict[str, Any], root: Path, tops: dict[str, Path], size: int,
                    channels: int, resize: str, workers: int | None) -> RawDataset:
    if entry.get("classes") or entry.get("task") not in (None, "unlabeled"):
        raise ConfigError(f"datasets.{name}: labels: false reads no classes; drop classes / task")
    listing = {split: _images_in(top) for split, top in tops.items()}
    for split, paths in listing.items():
        if not paths:
            raise DataError(f"{tops[split]}: no images ({', '.join(IMAGE_EXTENSIONS)}) at any depth")
    splits = {split: (DecodedImages(paths, size, channels, resize, workers=workers),
                      np.full(len(paths), NO_LABEL, np.int64))
              for split, paths in listing.items()}
    attributes: dict[str, Any] = {}
    splits = complete_splits(splits, attributes=attributes, **split_keys(entry))
    return RawDataset(splits=splits, task="unlabeled", class_names=[], source=str(root),
                      checksum=md5_of_listing(root, [p for paths in listing.values() for p in paths]),
                      attributes=attributes)


# --- csv -------------------------------------------------------------------------------------------

def check_csv_entry(name: str, entry: Mapping[str, Any]) -> None:
    """A csv entry's decoding keys and its label column(s) (``ConfigError``), before reading the file."""
    check_decoding_keys(name, entry)
    if ("label_column" in entry) == ("label_columns" in entry):
        raise ConfigError(f"datasets.{name}: give exactly one of 'label_column' (one label per row) "
                          "or 'label_columns' (a list of 0/1 columns, multilabel)")


def _multilabel(table: Any, columns: list[str], csv_path: Path) -> np.ndarray:
    import pandas as pd

    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    raw = table[columns].to_numpy(dtype=object)
    empty = table[columns].isna().to_numpy()
    bad = (np.isnan(values) & ~empty) | ~(np.isnan(values) | np.isin(values, (0.0, 1.0, -1.0)))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{csv_path} row {row + 2}: column {columns[col]!r} is {raw[row, col]!r}; "
                        "multilabel columns take 1, 0, -1 or empty (-1 and empty mean unknown)")
    values[values == -1.0] = np.nan
    return values.astype(np.float32)


@register_format("csv", required={"root": "the folder of the CSV file and the images",
                                  "file": "the CSV file, relative to root", "path_column": "the column of image paths",
                                  "size": "images are resized to size x size"}, check=check_csv_entry)
def read_csv(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read images named in a CSV file with their labels (and optionally their split)."""
    import pandas as pd

    root = Path(require(entry, "root", name))
    csv_path = root / str(require(entry, "file", name))
    check_csv_entry(name, entry)
    size, channels, resize, workers = decoding_keys(entry, name)
    path_column = str(require(entry, "path_column", name))
    if not csv_path.is_file():
        raise DataError(f"datasets.{name}.file: {csv_path} does not exist")
    try:
        table = pd.read_csv(csv_path, dtype={path_column: str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable CSV file ({err})") from None
    multilabel = "label_columns" in entry
    label_columns = list(entry["label_columns"]) if multilabel else [str(entry["label_column"])]
    split_column = entry.get("split_column")
    needed = [path_column, *label_columns, *([split_column] if split_column else [])]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: column(s) {', '.join(map(repr, missing))} missing; "
                        f"the file has {', '.join(map(repr, table.columns))}")
    if table.empty:
        raise DataError(f"{csv_path}: no rows")
    rows = [f"{csv_path} row {i + 2}" for i in range(len(table))]  # row 1 is the header
    for i, p in enumerate(table[path_column]):
        if not isinstance(p, str) or not p.strip():
            raise DataError(f"{rows[i]}: empty {path_column!r}")

    if multilabel:
        labels = _multilabel(table, label_columns, csv_path)
        class_names, task = label_columns, "multilabel"
        if entry.get("task") not in (None, "multilabel"):
            raise ConfigError(f"datasets.{name}.task must be 'multilabel' with label_columns")
    else:
        column = table[label_columns[0]]
        for i in np.flatnonzero(column.isna().to_numpy()):
            raise DataError(f"{rows[i]}: empty {label_columns[0]!r} label")
        values = [str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v) for v in column]
        class_names, index = _class_index(values, entry.get("classes"))
        for i, v in enumerate(values):
            if v not in index:
                raise DataError(f"{rows[i]}: label {v!r} is not one of the classes ({', '.join(class_names)}); "
                                f"fix the row or datasets.{name}.classes")
        labels = np.asarray([index[v] for v in values], np.int64)
        task = task_for(len(class_names), entry.get("task"), f"datasets.{name}")

    paths = [Path(p) if Path(p).is_absolute() else root / p for p in table[path_column]]
    if split_column:
        split_of = []
        for i, v in enumerate(table[split_column]):
            split = SPLIT_ALIASES.get(str(v).strip().lower())
            if split is None:
                raise DataError(f"{rows[i]}: {split_column!r} is {v!r}; allowed: train, val, test")
            split_of.append(split)
        split_of = np.asarray(split_of)
    else:
        split_of = np.full(len(paths), "train")
    # the checksum is the CSV's md5; the image files are fingerprinted by name and size beside it
    # (checking first that each exists, so a missing one stops before the conversion, naming its row)
    attributes: dict[str, Any] = {"images_listing_md5": listing_checksum(root, paths, rows)}
    images = DecodedImages(paths, size, channels, resize, workers=workers, describe=rows)
    splits = {s: (images.subset(np.flatnonzero(split_of == s)), labels[split_of == s])
              for s in SPLITS if (split_of == s).any()}
    splits = complete_splits(splits, attributes=attributes, **split_keys(entry))
    return RawDataset(
        splits=splits,
        task=task,
        class_names=class_names,
        source=str(csv_path),
        checksum=md5_file(csv_path),
        attributes=attributes,
    )
