"""SIIM-ACR Pneumothorax Segmentation (format ``siim_acr``): chest radiographs as DICOM with
run-length-coded masks, as the Kaggle competition ships them.

Download the competition's training data (https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation;
the images are commonly fetched as the ``siim-acr-pneumothorax-segmentation-data`` mirror)::

    siim:
      format: siim_acr
      root: /data/siim             # holds train-rle.csv and dicom-images-train/
      target: segmentation         # or classification (pneumothorax yes/no)
      size: 256
      images: dicom-images-train   # default; DICOM files anywhere below it, named <ImageId>.dcm
      csv: train-rle.csv           # default
      val_fraction: 0.1            # defaults 0.1 and 0.2, of whole patients
      test_fraction: 0.2
      split_seed: 0

``train-rle.csv`` has the header ``ImageId, EncodedPixels`` (a space before the second name) and
one row per pneumothorax region; an image with several regions has several rows, whose masks are
united, and an image without one has the single code ``-1``. The code is the competition's
*relative* run length (its ``mask_functions.py``, ``rle2mask``): pairs ``start length`` over the
image's pixels numbered column by column (the first column top to bottom, then the next), each
``start`` counted from the end of the previous run (the first from pixel 0). Decoding therefore
reshapes to (width, height) and transposes, as the competition's ``rle2mask(rle, 1024, 1024).T``.
A code with an odd count of numbers, a non-integer or negative number, or a run past the last
pixel is a DataError naming the CSV row.

Images are ``dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm`` (found
anywhere below ``images``); every image the CSV names must be there (DataError naming the row),
and DICOM files the CSV does not name are left out and counted in the cache's attributes. Each
file's header is read while the dataset is read (not its pixels): a file that is not DICOM or has
no pixel data stops with a DataError naming it and its row, and its ``PatientID`` keeps a patient
in one split. 8-bit pixels are used as stored (the competition's images); ``channels`` default 1.

``target: segmentation``: task ``segmentation``, classes ``[background, pneumothorax]``, masks
resized with nearest neighbour; metric ``dice``. ``target: classification``: task ``binary``
(``[no_pneumothorax, pneumothorax]``: 1 when any row of the image has a run), metric ``auc``.
The competition's test labels are not part of the download, so val and test are made from the
training images, from whole patients, stratified by pneumothorax and seeded. Needs pydicom
(``pip install 'medtransfer[dicom]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medtransfer.data.formats import dicom
from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, md5_file, md5_of_listing,
                                             read_table, row_names, split_keys)
from medtransfer.data.images import PIL_FILTERS, DecodedImages, default_decode_threads
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import check_disjoint, describe_split, grouped_split
from medtransfer.errors import ConfigError, DataError

TARGETS = ("segmentation", "classification")
DOWNLOAD = "https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation"
COLUMNS = ("ImageId", "EncodedPixels")
NO_MASK = "-1"


# --- the competition's run-length code ----------------------------------------------------------------

def parse_rle(code: str, height: int, width: int, where: str) -> np.ndarray:
    """A relative run-length code -> int64 [R, 2] absolute (start, length) over the column-major
    pixel numbering of an image of ``height`` x ``width``; [0, 2] for ``-1``. DataError naming
    ``where`` for a malformed code."""
    text = str(code).strip()
    if text == NO_MASK:
        return np.zeros((0, 2), np.int64)
    try:
        numbers = np.array([int(token) for token in text.split()], np.int64)
    except ValueError:
        raise DataError(f"{where}: EncodedPixels {text[:40]!r} is not a run-length code (whole numbers "
                        f"'start length ...', or -1 for no pneumothorax)") from None
    if len(numbers) == 0 or len(numbers) % 2:
        raise DataError(f"{where}: EncodedPixels has {len(numbers)} numbers; a run-length code is pairs "
                        "'start length' (an even count), or -1 for no pneumothorax")
    if (numbers < 0).any():
        raise DataError(f"{where}: EncodedPixels has a negative number ({int(numbers.min())})")
    starts, lengths = numbers[0::2], numbers[1::2]
    # each start is counted from the end of the previous run
    ends = np.cumsum(starts + lengths)
    absolute = ends - lengths
    if len(ends) and ends[-1] > height * width:
        raise DataError(f"{where}: EncodedPixels runs to pixel {int(ends[-1])}, past the {width}x{height} "
                        f"image's {height * width} pixels; is the code for another image?")
    return np.stack([absolute, lengths], axis=1)


def runs_to_mask(runs: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The union of runs (each int64 [R, 2] from :func:`parse_rle`) -> uint8 [height, width] of 0/1."""
    flat = np.zeros(height * width, np.uint8)
    for part in runs:
        for start, length in part:
            flat[start:start + length] = 1
    # pixels are numbered column by column: reshape to (width, height), then transpose
    return np.ascontiguousarray(flat.reshape(width, height).T)


class RLEMasks(DecodedImages):
    """The masks of a split as a lazy uint8 [N, 1, size, size] array-like, decoded from their runs
    when sliced (nearest neighbour), in the threads of :class:`DecodedImages`."""

    def __init__(self, paths: Sequence[Path], runs: Sequence[list[np.ndarray]], shapes: Sequence[tuple[int, int]],
                 size: int, *, workers: int | None = None, describe: Sequence[str] | None = None) -> None:
        super().__init__(paths, size, 1, "nearest", workers=workers, describe=describe)
        self.runs, self.shapes = list(runs), list(shapes)

    def _load(self, i: int) -> np.ndarray:
        mask = runs_to_mask(self.runs[i], *self.shapes[i])
        if mask.shape != (self.size, self.size):
            mask = np.asarray(Image.fromarray(mask).resize((self.size, self.size), Image.Resampling.NEAREST))
        return mask[None]


# --- decoding ------------------------------------------------------------------------------------------

def load_radiograph(path: Path, size: int, channels: int, resize: str) -> np.ndarray:
    """One DICOM radiograph -> uint8 [channels, size, size] (no crop)."""
    img = Image.fromarray(dicom.gray_uint8(path))
    if img.size != (size, size):
        img = img.resize((size, size), PIL_FILTERS[resize])
    if channels == 3:
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def survey_headers(paths: Sequence[Path], rows: Sequence[str], workers: int | None) -> list[tuple[int, int, str]]:
    """(rows, columns, PatientID) of each DICOM file, read without its pixels; DataError naming
    the file and its CSV row for a file that is not DICOM or has no pixel data."""
    def header(i: int) -> tuple[int, int, str]:
        try:
            ds = dicom.read_header(paths[i])
        except ValueError as err:
            raise DataError(f"{rows[i]}: image {paths[i]} cannot be read ({err}); fix or remove it") from None
        if "PixelData" not in ds:
            raise DataError(f"{rows[i]}: image {paths[i]} has no pixel data (no (7FE0,0010) element); "
                            "replace it with the file as downloaded")
        if "Rows" not in ds or "Columns" not in ds:
            raise DataError(f"{rows[i]}: image {paths[i]} has no Rows/Columns; the masks' size is unknown")
        patient = str(ds.get("PatientID", "") or "").strip()
        return int(ds.Rows), int(ds.Columns), patient

    with ThreadPoolExecutor(workers or default_decode_threads()) as pool:
        return list(pool.map(header, range(len(paths))))


# --- the format ------------------------------------------------------------------------------------------

def check(name: str, entry: Mapping[str, Any]) -> None:
    """``target`` and the decoding keys (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    target = require(entry, "target", name)
    if target not in TARGETS:
        raise ConfigError(f"datasets.{name}.target is {target!r}; allowed: {', '.join(TARGETS)}")


def _dicom_files(folder: Path) -> dict[str, Path]:
    """ImageId -> file for every ``*.dcm`` below ``folder``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.dcm")):
        if path.stem in found:
            raise DataError(f"{folder}: two files for image {path.stem} ({found[path.stem]}, {path}); remove one")
        found[path.stem] = path
    return found


@register_format("siim_acr", required={"root": "the folder holding train-rle.csv and dicom-images-train/",
                                       "size": "images (and masks) are resized to size x size",
                                       "target": "segmentation (masks) or classification (pneumothorax yes/no)"},
                 check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read ``train-rle.csv`` and locate its DICOM images (decoded lazily); see the module docstring."""
    check(name, entry)
    dicom.pydicom_module(f"datasets.{name}")
    root = Path(require(entry, "root", name))
    size, channels, resize, workers = decoding_keys({"channels": 1, **entry}, name)
    target = entry["target"]
    csv_path = root / str(entry.get("csv", "train-rle.csv"))
    images_dir = root / str(entry.get("images", "dicom-images-train"))
    table = read_table(csv_path, COLUMNS, hint=f"download the competition's training data from {DOWNLOAD}")
    rows = row_names(csv_path, len(table))
    if not images_dir.is_dir():
        raise DataError(f"datasets.{name}.images: folder {images_dir} does not exist; it holds the DICOM files "
                        f"(dicom-images-train/<study>/<series>/<ImageId>.dcm)")
    files = _dicom_files(images_dir)

    # one item per image, in the CSV's order of first appearance; its rows' codes kept for the union
    order: dict[str, int] = {}
    codes: list[list[tuple[str, str]]] = []
    for i, (image_id, code) in enumerate(zip(table["ImageId"], table["EncodedPixels"])):
        if not isinstance(image_id, str) or not image_id.strip():
            raise DataError(f"{rows[i]}: empty ImageId")
        if not isinstance(code, str) or not code.strip():
            raise DataError(f"{rows[i]}: empty EncodedPixels; a row holds a run-length code, or -1 for none")
        image_id = image_id.strip()
        if image_id not in order:
            if image_id not in files:
                raise DataError(f"{rows[i]}: image {image_id} has no file {image_id}.dcm under {images_dir}; "
                                f"is the download complete and 'images' its folder?")
            order[image_id] = len(codes)
            codes.append([])
        codes[order[image_id]].append((code, rows[i]))
    ids = list(order)
    paths = [files[i] for i in ids]
    first_rows = [c[0][1] for c in codes]
    headers = survey_headers(paths, first_rows, workers)
    runs = [[parse_rle(code, h, w, row) for code, row in item] for item, (h, w, _) in zip(codes, headers)]
    shapes = [(h, w) for h, w, _ in headers]
    labels = np.array([int(any(len(r) and r[:, 1].sum() > 0 for r in item)) for item in runs], np.int64)
    patients = np.array([p or f"image:{i}" for i, (_, _, p) in zip(ids, headers)], dtype=object)
    without_patient = sum(1 for _, _, p in headers if not p)

    split_options = split_keys(entry)
    seed = split_options["seed"]
    parts = grouped_split(labels, patients, {"test": split_options["test_fraction"],
                                             "val": split_options["val_fraction"]}, seed)
    chosen = {"train": parts["rest"], "val": parts["val"], "test": parts["test"]}
    check_disjoint({s: np.unique(patients[idx].astype(str)) for s, idx in chosen.items()}, "patient", str(root))
    describe = [f"{first_rows[i]}: image {ids[i]}" for i in range(len(ids))]
    splits, masks = {}, {}
    for split, idx in chosen.items():
        split_paths = [paths[i] for i in idx]
        split_describe = [describe[i] for i in idx]
        splits[split] = (DecodedImages(split_paths, size, channels, resize, workers=workers, describe=split_describe,
                                       decode=load_radiograph), labels[idx])
        masks[split] = RLEMasks(split_paths, [runs[i] for i in idx], [shapes[i] for i in idx], size,
                                workers=workers, describe=split_describe)
    unlisted = sorted(set(files) - set(order))
    attributes = {
        "metric": "dice" if target == "segmentation" else "auc",
        "target": target,
        "rle": "relative run-length code over the column-major image (the competition's mask_functions.rle2mask, "
               "transposed); several rows of an image united",
        "split_policy": (f"val and test made from {csv_path.name} (val {len(parts['val'])}, test {len(parts['test'])} "
                         f"images; whole patients by DICOM PatientID, stratified by pneumothorax, split_seed {seed})"),
        "made_splits": describe_split({"test": parts["test"], "val": parts["val"], "train": parts["rest"]},
                                      csv_path.name, "patient", seed),
        "images_without_patient_id": without_patient,
        "dicom_files_not_in_csv": {"count": len(unlisted), "first": unlisted[:5]},
        "images_listing_md5": md5_of_listing(images_dir, paths),
        "positive_images": int(labels.sum()),
    }
    if target == "segmentation":
        return RawDataset(splits=splits, task="segmentation", class_names=["background", "pneumothorax"],
                          source=str(csv_path), checksum=md5_file(csv_path), attributes=attributes, masks=masks)
    return RawDataset(splits=splits, task="binary", class_names=["no_pneumothorax", "pneumothorax"],
                      source=str(csv_path), checksum=md5_file(csv_path), attributes=attributes,
                      groups={split: patients[idx].astype(str) for split, idx in chosen.items()})
