"""Segmentation datasets (format ``masks``): images with a mask file each, from folders or a CSV.

Folders: an images folder and one or more mask folders whose files pair with the images by file
stem (the whole stem, or the part a ``key`` regex captures)::

    lungs: {format: masks, root: /data/MontgomerySet, images: CXR_png,
            masks: [ManualMask/leftMask, ManualMask/rightMask], classes: [background, lung],
            size: 256, channels: 1}
    drive: {format: masks, root: /data/DRIVE, splits: {train: training, test: test}, images: images,
            masks: 1st_manual, key: '^(\\d+)_', classes: [background, vessel], size: 512, channels: 3}

CSV: one row per image, its mask path(s) and optionally its split::

    siim: {format: masks, root: /data/siim-png, file: pairs.csv, image_column: image,
           mask_column: mask, split_column: split, classes: [background, pneumothorax], size: 256}

Keys:

- ``images`` (default ``images``) and ``masks`` (default ``masks``): folders relative to ``root``
  (or to each split folder). A list of mask folders (or of mask columns) is merged pixel by pixel
  into one mask, the larger class id winning: Montgomery's left and right lung files become one
  lung mask.
- ``key``: a regex searched in every file stem; its first group pairs an image with its masks
  (default: the whole stem). DRIVE's ``21_training.tif`` and ``21_manual1.gif`` pair on ``21``.
- ``splits``: split name -> sub-folder of ``root`` (e.g. ``{train: training, test: test}``); by
  default ``root/train``, ``root/val``, ``root/test`` where they hold the images folder, else
  ``root`` itself is the train pool. Splits the source lacks are made from train (``val_fraction``
  0.1, ``test_fraction`` 0.2, ``split_seed`` 0), stratified by whether an image has foreground.
- ``classes``: the mask's class names, background first (default ``[background, foreground]``).
- ``mask_values``: the gray value of each class in the mask files (default ``[0, 255]`` for two
  classes, else ``0 .. K-1``). Mask files are read as gray (PIL converts palette, 1-bit and RGB
  files; 16-bit files keep their values).
- ``missing_masks``: ``error`` (default) or ``skip`` (an image without a mask is left out and
  counted in the cache's attributes, e.g. the Shenzhen images that no lung mask covers).
- ``size``, ``channels``, ``resize``, ``workers`` as for ``imagefolder``; masks are always resized
  with nearest neighbour.

Every mask is decoded once while the dataset is read, before anything is written: a mask whose
size differs from its image's, a mask value outside ``mask_values``, an image without a mask or
an unreadable file stops with one DataError naming the file, and no cache file is made. While the
cache is written, images and masks are decoded again chunk by chunk (memory bounded by a chunk).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from medtransfer.data.formats.common import (SPLIT_ALIASES, check_decoding_keys, decoding_keys, md5_file,
                                             md5_of_listing, read_table, row_names, split_keys)
from medtransfer.data.images import IMAGE_EXTENSIONS, DecodedImages
from medtransfer.data.raw import SPLITS, RawDataset, register_format, require
from medtransfer.data.splits import stratified_split
from medtransfer.errors import ConfigError, DataError

MISSING_POLICIES = ("error", "skip")
#: the keys an entry with a CSV (``file``) must have, and what each holds
CSV_KEYS = {"image_column": "the CSV column of image paths", "mask_column": "the CSV column(s) of mask paths"}
#: files the format lists: imagefolder's image types and GIF (DRIVE's masks are GIFs)
EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif")


class Item:
    """One image, its mask file(s) and how to name it in a message."""

    __slots__ = ("image", "masks", "where")

    def __init__(self, image: Path, masks: list[Path], where: str) -> None:
        self.image, self.masks, self.where = image, masks, where


# --- decoding --------------------------------------------------------------------------------------

def value_lookup(values: Sequence[int]) -> np.ndarray:
    """int16 [65536]: class id of each gray value, -1 for a value no class has."""
    lookup = np.full(1 << 16, -1, np.int16)
    lookup[np.asarray(values, np.int64)] = np.arange(len(values), dtype=np.int16)
    return lookup


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(img, dtype=np.int64)
        return np.asarray(img.convert("L"), dtype=np.int64)


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{where}: image {path} cannot be read ({err}); fix or remove it") from None


def load_mask(item: Item, lookup: np.ndarray, values: Sequence[int], size: int | None = None,
              image_size: tuple[int, int] | None = None, key: str = "mask_values") -> np.ndarray:
    """The class ids of ``item``'s mask file(s), merged by maximum: uint8 [1, H, W] at the files'
    own size, or [1, size, size] resized with nearest neighbour.

    Raises DataError naming the file when it cannot be read, when the files differ in size from
    each other or from ``image_size`` (height, width), or when a value is not one of ``values``.
    """
    merged = None
    for path in item.masks:
        try:
            gray = _gray(path)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DataError(f"{item.where}: mask {path} cannot be read ({err}); fix or remove it") from None
        expected = image_size if image_size is not None else (None if merged is None else merged.shape)
        if expected is not None and gray.shape != tuple(expected):
            raise DataError(f"{item.where}: mask {path} is {gray.shape[1]}x{gray.shape[0]} px but its image "
                            f"{item.image} is {expected[1]}x{expected[0]}; a mask must have its image's size")
        ids = lookup[np.clip(gray, 0, len(lookup) - 1)]
        bad = (ids < 0) | (gray >= len(lookup))
        if bad.any():
            found = np.unique(gray[bad])[:8].tolist()
            raise DataError(f"{item.where}: mask {path} has value(s) {found}, which are not among the declared "
                            f"classes' values {list(values)} ({key}); fix the file or the key")
        merged = ids if merged is None else np.maximum(merged, ids)
    out = merged.astype(np.uint8)
    if size is not None and out.shape != (size, size):
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.Resampling.NEAREST))
    return out[None]


class DecodedMasks(DecodedImages):
    """The masks of a split as a lazy uint8 [N, 1, size, size] array-like (decoded when sliced,
    in threads, like :class:`~medtransfer.data.images.DecodedImages`)."""

    def __init__(self, items: Sequence[Item], size: int, values: Sequence[int], *, workers: int | None = None,
                 key: str = "mask_values") -> None:
        super().__init__([item.image for item in items], size, 1, "nearest", workers=workers,
                         describe=[item.where for item in items])
        self.items, self.values, self.key = list(items), list(values), key
        self.lookup = value_lookup(values)

    def _load(self, i: int) -> np.ndarray:
        return load_mask(self.items[i], self.lookup, self.values, self.size, key=self.key)

    def subset(self, indices: Sequence[int] | np.ndarray) -> DecodedMasks:
        return DecodedMasks([self.items[i] for i in np.asarray(indices, np.int64)], self.size, self.values,
                            workers=self.workers, key=self.key)


def survey(items: Sequence[Item], lookup: np.ndarray, values: Sequence[int], workers: int | None, key: str,
           desc: str) -> np.ndarray:
    """Decode every mask once at its own size (checking it against its image's header and the
    declared values); return bool [N], true where a mask has any foreground."""
    def check(item: Item) -> bool:
        mask = load_mask(item, lookup, values, image_size=_image_size(item.image, item.where), key=key)
        return bool(mask.any())

    workers = workers or 1
    if workers == 1 or len(items) < 2:
        return np.array([check(item) for item in tqdm(items, desc=desc, unit="mask", disable=None)], bool)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes with the GIL released
        return np.array(list(tqdm(pool.map(check, items), total=len(items), desc=desc, unit="mask",
                                   disable=None)), bool)  # no bar in log files


# --- listing ----------------------------------------------------------------------------------------

def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _keyed(files: list[Path], pattern: re.Pattern, folder: Path, name: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files:
        match = pattern.search(path.stem)
        if match is None:
            raise DataError(f"{path}: its stem {path.stem!r} does not match datasets.{name}.key "
                            f"{pattern.pattern!r}; fix the key or remove the file")
        key = match.group(1) if pattern.groups else match.group(0)
        if key in out:
            raise DataError(f"{folder}: {out[key].name} and {path.name} both pair on {key!r} "
                            f"(datasets.{name}.key {pattern.pattern!r}); each needs a key of its own")
        out[key] = path
    return out


def _folder_items(name: str, top: Path, images_dir: str, mask_dirs: list[str], pattern: re.Pattern,
                  missing: str, skipped: list[str]) -> list[Item]:
    image_folder = top / images_dir
    if not image_folder.is_dir():
        raise DataError(f"datasets.{name}.images: folder {image_folder} does not exist")
    images = _keyed(_files(image_folder), pattern, image_folder, name)
    if not images:
        raise DataError(f"{image_folder}: no images ({', '.join(EXTENSIONS)})")
    masks = []
    for mask_dir in mask_dirs:
        folder = top / mask_dir
        if not folder.is_dir():
            raise DataError(f"datasets.{name}.masks: folder {folder} does not exist")
        masks.append((folder, _keyed(_files(folder), pattern, folder, name)))
    items = []
    for key, image in images.items():
        lacking = [folder for folder, by_key in masks if key not in by_key]
        if lacking:
            if missing == "skip":
                skipped.append(str(image))
                continue
            raise DataError(f"image {image} has no mask in {lacking[0]} (paired on {key!r}); add its mask, or "
                            f"set datasets.{name}.missing_masks: skip to leave such images out")
        items.append(Item(image, [by_key[key] for _, by_key in masks], f"image {image}"))
    if not items:
        raise DataError(f"{image_folder}: no image has a mask in {', '.join(mask_dirs)}")
    return items


def _csv_items(name: str, entry: dict[str, Any], root: Path, missing: str,
               skipped: list[str]) -> tuple[dict[str, list[Item]], Path]:
    csv_path = root / str(entry["file"])
    image_column = str(require(entry, "image_column", name, CSV_KEYS["image_column"]))
    mask_columns = require(entry, "mask_column", name, CSV_KEYS["mask_column"])
    mask_columns = [str(c) for c in (mask_columns if isinstance(mask_columns, list) else [mask_columns])]
    split_column = entry.get("split_column")
    table = read_table(csv_path, [image_column, *mask_columns, *([split_column] if split_column else [])])
    rows = row_names(csv_path, len(table))
    out: dict[str, list[Item]] = {}
    for i, row in enumerate(table.to_dict("records")):
        split = "train"
        if split_column:
            split = SPLIT_ALIASES.get(str(row[split_column]).strip().lower())
            if split is None:
                raise DataError(f"{rows[i]}: {split_column!r} is {row[split_column]!r}; allowed: train, val, test")
        if not isinstance(row[image_column], str) or not row[image_column].strip():
            raise DataError(f"{rows[i]}: empty {image_column!r}")
        image = Path(row[image_column]) if Path(row[image_column]).is_absolute() else root / row[image_column]
        if not image.is_file():
            raise DataError(f"{rows[i]}: image {image} does not exist")
        paths = [row[c] for c in mask_columns]
        if any(not isinstance(p, str) or not p.strip() for p in paths) or not all(
                (Path(p) if Path(p).is_absolute() else root / p).is_file() for p in paths):
            if missing == "skip":
                skipped.append(str(image))
                continue
            raise DataError(f"{rows[i]}: image {image} has no mask file (columns {', '.join(mask_columns)}: "
                            f"{paths}); add it, or set datasets.{name}.missing_masks: skip")
        masks = [Path(p) if Path(p).is_absolute() else root / p for p in paths]
        out.setdefault(split, []).append(Item(image, masks, f"{rows[i]}: image {image}"))
    if "train" not in out:
        raise DataError(f"{csv_path}: no training rows")
    return out, csv_path


def _split_tops(name: str, entry: dict[str, Any], root: Path, images_dir: str) -> dict[str, Path]:
    folders = entry.get("splits")
    if folders is not None:
        if not isinstance(folders, dict) or "train" not in folders or set(folders) - set(SPLITS):
            raise ConfigError(f"datasets.{name}.splits maps train (and optionally val, test) to sub-folders "
                              f"of root, e.g. {{train: training, test: test}}; got {folders!r}")
        return {split: root / str(folder) for split, folder in folders.items()}
    tops = {s: root / s for s in SPLITS if (root / s / images_dir).is_dir()}
    if tops and "train" not in tops:
        raise DataError(f"{root} has {', '.join(tops)}/ but no train/ with {images_dir}/")
    return tops or {"train": root}


# --- the format --------------------------------------------------------------------------------------

def _mask_values(name: str, entry: dict[str, Any], classes: list[str]) -> list[int]:
    values = entry.get("mask_values", [0, 255] if len(classes) == 2 else list(range(len(classes))))
    if (not isinstance(values, list) or len(values) != len(classes) or len(set(values)) != len(values)
            or not all(isinstance(v, int) and 0 <= v < 1 << 16 for v in values)):
        raise ConfigError(f"datasets.{name}.mask_values: one distinct gray value (0..65535) per class of "
                          f"{classes}, e.g. [0, 255]; got {values!r}")
    return values


def check_masks_entry(name: str, entry: dict[str, Any]) -> None:
    """A masks entry's decoding keys, its CSV's columns (with ``file``), classes and mask values
    (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    if entry.get("file"):
        for key, holds in CSV_KEYS.items():
            require(entry, key, name, holds)
    _mask_values(name, entry, _classes(name, entry))
    if entry.get("missing_masks", "error") not in MISSING_POLICIES:
        raise ConfigError(f"datasets.{name}.missing_masks is {entry['missing_masks']!r}; allowed: "
                          f"{', '.join(MISSING_POLICIES)}")


def _classes(name: str, entry: dict[str, Any]) -> list[str]:
    classes = [str(c) for c in entry.get("classes", ["background", "foreground"])]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"datasets.{name}.classes: two or more distinct class names, background first; "
                          f"got {classes}")
    return classes


@register_format("masks", required={"root": "the folder of the images and masks",
                                    "size": "images and masks are resized to size x size"}, check=check_masks_entry)
def read_masks(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read images with their segmentation masks (see the module docstring)."""
    root = Path(require(entry, "root", name, "the folder of the images and masks"))
    if not root.is_dir():
        raise DataError(f"datasets.{name}.root: folder {root} does not exist")
    size, channels, resize, workers = decoding_keys(entry, name)
    classes = _classes(name, entry)
    values = _mask_values(name, entry, classes)
    missing = entry.get("missing_masks", "error")
    if missing not in MISSING_POLICIES:
        raise ConfigError(f"datasets.{name}.missing_masks is {missing!r}; allowed: {', '.join(MISSING_POLICIES)}")
    skipped: list[str] = []
    attributes: dict[str, Any] = {}
    if entry.get("file"):
        listing, csv_path = _csv_items(name, entry, root, missing, skipped)
        source, checksum = str(csv_path), md5_file(csv_path)
    else:
        images_dir = str(entry.get("images", "images"))
        mask_dirs = entry.get("masks", "masks")
        mask_dirs = [str(d) for d in (mask_dirs if isinstance(mask_dirs, list) else [mask_dirs])]
        try:
            pattern = re.compile(str(entry.get("key", "(.*)")))
        except re.error as err:
            raise ConfigError(f"datasets.{name}.key is not a regular expression ({err})") from None
        tops = _split_tops(name, entry, root, images_dir)
        listing = {split: _folder_items(name, top, images_dir, mask_dirs, pattern, missing, skipped)
                   for split, top in tops.items()}
        source, checksum = str(root), ""
    files = [path for items in listing.values() for item in items for path in (item.image, *item.masks)]
    listing_md5 = md5_of_listing(root, files)
    if checksum:
        attributes["images_listing_md5"] = listing_md5
    else:
        checksum = listing_md5
    if skipped:
        attributes["skipped_without_mask"] = {"count": len(skipped), "first": skipped[:5]}

    lookup = value_lookup(values)
    foreground = {split: survey(items, lookup, values, workers, f"datasets.{name}.mask_values", f"{name} {split}")
                  for split, items in listing.items()}
    split_options = split_keys(entry)
    made = {s: split_options[f"{s}_fraction"] for s in ("val", "test") if s not in listing}
    if made:
        seed = split_options["seed"]
        parts = stratified_split(foreground["train"].astype(np.int64), made, seed)
        pool, pool_foreground = listing["train"], foreground["train"]
        for split in [*made, "rest"]:
            key = "train" if split == "rest" else split
            listing[key] = [pool[i] for i in parts[split]]
            foreground[key] = pool_foreground[parts[split]]
        attributes["split_policy"] = ("; ".join(f"{s}: {f:g} of source train" for s, f in made.items())
                                      + f"; stratified by foreground, split_seed {seed}")
    else:
        attributes["split_policy"] = "source splits"
    for split in SPLITS:
        if not listing[split]:
            raise DataError(f"dataset {name!r}: the {split} split is empty; add images or raise its fraction")
    attributes["mask_values"] = values
    splits = {split: (DecodedImages([item.image for item in listing[split]], size, channels, resize, workers=workers,
                                    describe=[item.where for item in listing[split]]),
                      foreground[split].astype(np.int64))
              for split in SPLITS}
    masks = {split: DecodedMasks(listing[split], size, values, workers=workers, key=f"datasets.{name}.mask_values")
             for split in SPLITS}
    return RawDataset(splits=splits, task="segmentation", class_names=classes, source=source, checksum=checksum,
                      attributes=attributes, masks=masks)
