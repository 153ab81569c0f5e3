"""CBIS-DDSM (format ``cbis_ddsm``): screening mammograms, malignant vs benign.

Download from The Cancer Imaging Archive (collection CBIS-DDSM): the images with the NBIA Data
Retriever (a ``CBIS-DDSM/`` folder of DICOM files) and the four description CSVs, all into one
folder::

    ddsm:
      format: cbis_ddsm
      root: /data/cbis-ddsm       # the CSVs; images under root/CBIS-DDSM (or set 'images')
      size: 224                   # required
      abnormality: [mass, calc]   # which description CSVs (default both)
      image: full                 # full mammogram (default) or cropped (the abnormality's ROI crop)
      val_fraction: 0.1           # of the training images, whole patients (default 0.1)
      split_seed: 0

Description CSVs: ``{mass,calc}_case_description_{train,test}_set.csv``, one row per abnormality,
with ``patient_id``, ``left or right breast``, ``image view``, ``pathology`` (MALIGNANT, BENIGN,
BENIGN_WITHOUT_CALLBACK) and the DICOM paths (``image file path``, ``cropped image file path``).
Labels: 1 = MALIGNANT, 0 = BENIGN or BENIGN_WITHOUT_CALLBACK. With ``image: full`` an example is
one mammogram (patient, breast, view); it is malignant when any of its abnormalities is (mass and
calc rows of the same view are merged). With ``image: cropped`` an example is one abnormality.

Image files: the CSV path (``Mass-Training_P_00001_LEFT_CC/<study uid>/<series uid>/000000.dcm``),
else the same path ending in ``.png`` (images converted to PNG beforehand), else the one DICOM or
PNG file under the case folder (``Mass-Training_P_00001_LEFT_CC/``), which is how the current NBIA
retriever names folders. A CSV path that would leave the images folder (absolute, or ``..``) is
refused, naming its row, before any file is looked for. DICOM needs ``pydicom`` (``pip install pydicom``); pixel values go
through the modality and VOI LUTs, MONOCHROME1 is inverted, and each image is scaled by its own
min and max to 0..255.

Splits: the official train/test CSVs; a patient in both (possible across mass and calc) keeps
only the test images, the dropped count is recorded. Val is made from whole training patients,
stratified and seeded. Task ``binary``, metric ``auc``; ``channels`` default 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, listing_checksum, md5_file,
                                             path_inside, read_table, row_names)
from medtransfer.data.images import PIL_FILTERS, DecodedImages, load_image
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import check_disjoint, describe_split, grouped_split
from medtransfer.errors import ConfigError, DataError

ABNORMALITIES = ("mass", "calc")
CSV_NAME = "{kind}_case_description_{split}_set.csv"
COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id", "pathology",
           "image file path", "cropped image file path")
PATHOLOGY = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
CLASSES = ("benign", "malignant")
DOWNLOAD = "https://www.cancerimagingarchive.net/collection/cbis-ddsm/"
METRIC = "auc"


# --- decoding ---------------------------------------------------------------------------------------

def dicom_pixels(path: str | Path) -> np.ndarray:
    """A mammogram's pixels as uint8 [H, W]: modality and VOI LUTs, MONOCHROME1 inverted, min-max scaled."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - exercised only without pydicom
        raise ValueError("reading DICOM needs pydicom >= 3.0: pip install 'pydicom>=3' "
                         "(or convert the images to PNG)") from None
    try:
        ds = pydicom.dcmread(path)
        pixels = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    except (pydicom.errors.InvalidDicomError, AttributeError, KeyError, RuntimeError, NotImplementedError) as err:
        raise ValueError(f"not a readable DICOM image: {err}") from None
    if pixels.ndim != 2:
        raise ValueError(f"expected one 2-D gray frame, got pixel array {pixels.shape}")
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def load_mammogram(path: Path, size: int, channels: int, resize: str) -> np.ndarray:
    """One DICOM (``.dcm``) or other image file -> uint8 [channels, size, size] (no crop)."""
    if path.suffix.lower() != ".dcm":
        return load_image(path, size, channels, resize)
    img = Image.fromarray(dicom_pixels(path))  # uint8 [H, W] -> mode L
    if img.size != (size, size):
        img = img.resize((size, size), PIL_FILTERS[resize])
    if channels == 3:
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


# --- locating files ---------------------------------------------------------------------------------

def resolve_image(images_root: Path, csv_value: str, cropped: bool, row: str, where: str) -> Path:
    """The file a CSV path points to (see the module docstring for the order tried); DataError
    naming ``where`` for a path that leaves ``images_root`` (:func:`path_inside`), before any
    file is looked at, so that no CSV value makes the search below walk another folder."""
    exact = path_inside(images_root, csv_value.strip().strip('"').replace("\\", "/"), where, value=csv_value)
    for candidate in (exact, exact.with_suffix(".png")):
        if candidate.is_file():
            return candidate
    case = images_root / exact.relative_to(images_root).parts[0]
    found = sorted(p for p in case.rglob("*") if p.suffix.lower() in (".dcm", ".png") and p.is_file()) \
        if case.is_dir() else []
    if cropped and len(found) > 1:  # the crop's series folder says so in NBIA's descriptive names
        found = [p for p in found if "crop" in p.parent.name.lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{row}: image {exact} does not exist (nor a .png beside it, nor a file under {case}); "
                        f"is the download complete and 'images' the folder holding the case folders?")
    raise DataError(f"{row}: {exact} does not exist and {case} holds {len(found)} image files "
                    f"({', '.join(p.name for p in found[:3])}, ...); cannot tell which is meant")


# --- reading ----------------------------------------------------------------------------------------

def _rows_of(root: Path, kinds: list[str]) -> Any:
    """All description rows of ``kinds`` with their source split, file and row name."""
    import pandas as pd

    tables = []
    for kind in kinds:
        for split in ("train", "test"):
            path = root / CSV_NAME.format(kind=kind, split=split)
            table = read_table(path, COLUMNS, hint=f"download the CBIS-DDSM description CSVs from {DOWNLOAD}")
            table = table.assign(source_split=split, row=row_names(path, len(table)))
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _options(name: str, entry: Mapping[str, Any]) -> tuple[list[str], str]:
    """The entry's abnormality kinds and image unit (``full`` or ``cropped``)."""
    kinds = entry.get("abnormality", list(ABNORMALITIES))
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds or any(k not in ABNORMALITIES for k in kinds):
        raise ConfigError(f"datasets.{name}.abnormality is {kinds!r}; allowed: mass, calc or both")
    unit = str(entry.get("image", "full"))
    if unit not in ("full", "cropped"):
        raise ConfigError(f"datasets.{name}.image is {unit!r}; allowed: full, cropped")
    return kinds, unit


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's decoding keys, ``abnormality`` and ``image`` (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    _options(name, entry)


@register_format("cbis_ddsm", required={"root": "the folder holding the CBIS-DDSM description CSVs",
                                        "size": "images are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read the CBIS-DDSM description CSVs and locate their images (decoded lazily)."""
    root = Path(require(entry, "root", name))
    size, channels, resize, workers = decoding_keys({"channels": 1, **entry}, name)
    kinds, unit = _options(name, entry)
    cropped = unit == "cropped"
    default_images = root / "CBIS-DDSM" if (root / "CBIS-DDSM").is_dir() else root
    images_root = Path(entry["images"]) if entry.get("images") else default_images
    if entry.get("images") and not images_root.is_absolute():
        images_root = root / images_root

    table = _rows_of(root, kinds)
    labels = []
    for row, value in zip(table["row"], table["pathology"]):
        if not isinstance(value, str) or value.strip().upper() not in PATHOLOGY:
            raise DataError(f"{row}: 'pathology' is {value!r}; expected MALIGNANT, BENIGN or BENIGN_WITHOUT_CALLBACK")
        labels.append(PATHOLOGY[value.strip().upper()])
    table["label"] = labels
    for column in ("patient_id", "left or right breast", "image view"):
        empty = table[column].isna()
        if empty.any():
            raise DataError(f"{table['row'][empty.idxmax()]}: empty {column!r}")
        table[column] = table[column].str.strip()
    path_column = "cropped image file path" if cropped else "image file path"
    if cropped:
        table["example"] = table["row"]
    else:  # one example per mammogram: malignant if any abnormality on it is
        table["example"] = table["patient_id"] + "|" + table["left or right breast"] + "|" + table["image view"]

    # a patient in the official test set is not trained on: drop their training rows
    test_patients = set(table.loc[table["source_split"] == "test", "patient_id"])
    overlap = (table["source_split"] == "train") & table["patient_id"].isin(test_patients)
    dropped = int(overlap.sum())
    table = table[~overlap]

    examples = table.groupby("example", sort=False).agg(
        label=("label", "max"), patient=("patient_id", "first"), split=("source_split", "first"),
        path=(path_column, "first"), row=("row", "first"))
    for row, value in zip(examples["row"], examples["path"]):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{row}: empty {path_column!r}")
    paths = [resolve_image(images_root, value, cropped, row, f"datasets.{name}: {row}, column {path_column!r}")
             for value, row in zip(examples["path"], examples["row"])]
    examples["file"] = paths
    listing = listing_checksum(images_root, paths, list(examples["row"]))

    train = examples[examples["split"] == "train"]
    test = examples[examples["split"] == "test"]
    train_labels = train["label"].to_numpy(np.int64)
    seed = int(entry.get("split_seed", 0))
    parts = grouped_split(train_labels, train["patient"].to_numpy(), {"val": float(entry.get("val_fraction", 0.1))},
                          seed)
    chosen = {"train": train.iloc[parts["rest"]], "val": train.iloc[parts["val"]], "test": test}
    check_disjoint({s: np.unique(t["patient"].to_numpy()) for s, t in chosen.items()}, "patient", str(root))
    splits = {
        split: (DecodedImages(list(t["file"]), size, channels, resize, workers=workers, describe=list(t["row"]),
                              decode=load_mammogram), t["label"].to_numpy(np.int64))
        for split, t in chosen.items()
    }
    csvs = [root / CSV_NAME.format(kind=k, split=s) for k in kinds for s in ("train", "test")]
    checksum = hashlib.md5(" ".join(md5_file(p) for p in csvs).encode()).hexdigest()
    attributes = {
        "metric": METRIC,
        "abnormality": kinds,
        "image": unit,
        "example": "one abnormality (ROI crop)" if cropped else "one mammogram (patient, breast, view); "
                   "malignant if any of its abnormalities is",
        "split_policy": (f"official train/test CSVs; val = {len(parts['val'])} training images of whole patients "
                         f"(stratified, split_seed {seed}); {dropped} training rows of test patients dropped"),
        "made_splits": describe_split({"val": parts["val"], "train": parts["rest"]}, "train CSVs", "patient", seed),
        "dropped_train_rows_of_test_patients": dropped,
        "images_listing_md5": listing,
    }
    return RawDataset(splits=splits, task="binary", class_names=list(CLASSES), source=str(root),
                      checksum=checksum, attributes=attributes)
