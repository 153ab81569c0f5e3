"""Thyroid ultrasound (format ``ddti``): the Digital Database of Thyroid Images (Pedraza et al.
2015) as downloaded, one XML report per case and its JPEG images, labelled by TI-RADS.

Download the DDTI files (http://cimalab.unal.edu.co/?lang=en&mod=project&id=31, or the Kaggle copy
https://www.kaggle.com/datasets/dasmehdixtr/ddti-thyroid-ultrasound-images) into one folder::

    thyroid:
      format: ddti
      root: /data/ddti          # holds <case>.xml and <case>_<image>.jpg
      size: 224
      missing_tirads: skip      # default; or benign (Juodelyte et al.'s code, see below)
      val_fraction: 0.1         # defaults 0.1 and 0.2, of whole cases
      test_fraction: 0.2
      split_seed: 0

Each ``<case>.xml`` is a ``<case>`` element whose children are ``number``, ``age``, ``sex``,
``composition``, ``echogenicity``, ``margins``, ``calcifications``, ``tirads``,
``reportbacaf``, ``reporteco`` and one ``mark`` per image (``image``, ``svg``). The images of a
case are ``<case>_<k>.jpg`` (``k`` = the mark's ``image``). Labels follow Juodelyte et al.'s
``import_thyroid`` (DovileDo/revisiting-transfer ``src/io_fun/data_import.py``): the TI-RADS
category without its letter (``4a``, ``4b``, ``4c`` -> 4) and ``malignant`` when it is >= 4
(4a/4b/4c/5), else ``benign``; task ``binary``, metric ``auc``. A TI-RADS that is not 1-5 with an
optional a/b/c is a DataError naming the file.

Some reports have an empty ``<tirads/>``. Juodelyte et al.'s code labels such a case TI-RADS 1,
i.e. benign (``pd.read_xml`` then has no ``tirads`` column and the code falls back to "1.0");
here ``missing_tirads: skip`` (default) leaves those cases out and ``missing_tirads: benign``
keeps them as that code does; either way the cache's attributes count them
(``cases_without_tirads``). A report without images is counted too; an image whose case has no
report is a DataError naming it.

The case is the patient: val and test are made from whole cases, stratified by class and seeded
(Juodelyte et al. group their folds by case, ``GroupKFold`` on ``pid`` in ``src/make_dataframe.py``).
The case is the file name's number (Juodelyte et al. join on the report's ``<number>``; reports
whose ``<number>`` differs from their file name are counted as ``number_differs_from_file_name``).
``channels`` default 3.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.formats.common import check_decoding_keys, decoding_keys, md5_of_listing, split_keys
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import check_disjoint, describe_split, grouped_split
from medtransfer.errors import ConfigError, DataError

CLASSES = ("benign", "malignant")
MISSING = ("skip", "benign")
TIRADS = re.compile(r"^([1-5])([abc])?$")
IMAGE = re.compile(r"^(?P<case>\d+)_(?P<image>\d+)$")
DOWNLOAD = "https://www.kaggle.com/datasets/dasmehdixtr/ddti-thyroid-ultrasound-images"


def tirads_label(text: str | None, where: str) -> int | None:
    """1 (malignant, TI-RADS >= 4), 0 (benign), or None for an empty TI-RADS; DataError otherwise."""
    if text is None or not text.strip():
        return None
    value = text.strip().lower()
    match = TIRADS.match(value)
    if match is None:
        raise DataError(f"{where}: <tirads> is {text.strip()!r}; expected a TI-RADS category 1-5, optionally "
                        "with a, b or c (4a), or empty")
    return int(int(match.group(1)) >= 4)


def read_report(path: Path) -> tuple[str | None, str | None]:
    """``(tirads text, number text)`` of a case report; DataError naming it if it is not such XML."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: not readable XML ({err}); restore the file as downloaded") from None
    if root.tag != "case":
        raise DataError(f"{path}: the root element is <{root.tag}>, a DDTI report's is <case>")
    tirads, number = root.find("tirads"), root.find("number")
    return (None if tirads is None else tirads.text), (None if number is None else number.text)


def check(name: str, entry: Mapping[str, Any]) -> None:
    """``missing_tirads`` and the decoding keys (``ConfigError``), before any file is read."""
    check_decoding_keys(name, entry)
    missing = entry.get("missing_tirads", "skip")
    if missing not in MISSING:
        raise ConfigError(f"datasets.{name}.missing_tirads is {missing!r}; allowed: "
                          f"{', '.join(MISSING)}")


@register_format("ddti", required={"root": "the folder holding the DDTI <case>.xml reports and <case>_<k>.jpg images",
                                   "size": "images are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read DDTI's case reports and images (decoded lazily); see the module docstring."""
    root = Path(require(entry, "root", name))
    size, channels, resize, workers = decoding_keys(entry, name)
    missing = entry.get("missing_tirads", "skip")
    if not root.is_dir():
        raise DataError(f"datasets.{name}.root: folder {root} does not exist; download DDTI from {DOWNLOAD}")
    reports = {p.stem: p for p in sorted(root.glob("*.xml"))}
    if not reports:
        raise DataError(f"{root}: no <case>.xml reports; is 'root' the DDTI folder as downloaded from {DOWNLOAD}?")
    images: dict[str, list[Path]] = {}
    for path in sorted(root.glob("*.jpg"), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]):
        match = IMAGE.match(path.stem)
        if match is None:
            raise DataError(f"{path}: a DDTI image is named <case>_<k>.jpg; rename or remove it")
        if match["case"] not in reports:
            raise DataError(f"image {path} has no report {match['case']}.xml beside it; restore it or remove the image")
        images.setdefault(match["case"], []).append(path)

    without_tirads, without_images, renumbered = [], [], []
    paths, labels, cases = [], [], []
    for case, report in sorted(reports.items(), key=lambda kv: (len(kv[0]), kv[0])):
        tirads, number = read_report(report)
        label = tirads_label(tirads, str(report))
        if number is not None and number.strip() and number.strip() != case:
            renumbered.append(case)
        if case not in images:
            without_images.append(case)
            continue
        if label is None:
            without_tirads.append(case)
            if missing == "skip":
                continue
            label = 0
        for path in images[case]:
            paths.append(path)
            labels.append(label)
            cases.append(case)
    if not paths:
        raise DataError(f"{root}: no case has both a TI-RADS and images")
    labels_array, cases_array = np.array(labels, np.int64), np.array(cases, dtype=object)
    options = split_keys(entry)
    seed = options["seed"]
    parts = grouped_split(labels_array, cases_array, {"test": options["test_fraction"],
                                                      "val": options["val_fraction"]}, seed)
    parts = {"train": parts["rest"], "val": parts["val"], "test": parts["test"]}
    check_disjoint({s: np.unique(cases_array[idx].astype(str)) for s, idx in parts.items()}, "case", str(root))
    lazy = DecodedImages(paths, size, channels, resize, workers=workers, describe=[f"image {p}" for p in paths])
    splits = {split: (lazy.subset(idx), labels_array[idx]) for split, idx in parts.items()}
    attributes = {
        "metric": "auc",
        "label": "malignant when TI-RADS >= 4 (4a/4b/4c/5), as Juodelyte et al.",
        "missing_tirads": missing,
        "cases_without_tirads": {"count": len(without_tirads), "policy": missing, "first": without_tirads[:10]},
        "reports_without_images": {"count": len(without_images), "first": without_images[:10]},
        "number_differs_from_file_name": {"count": len(renumbered), "first": renumbered[:10]},
        "cases": len(np.unique(cases_array.astype(str))),
        "split_policy": (f"val and test made from whole cases (val {len(parts['val'])}, test {len(parts['test'])} "
                         f"images), stratified by class, split_seed {seed}"),
        "made_splits": describe_split(parts, root.name, "case", seed),
    }
    return RawDataset(splits=splits, task="binary", class_names=list(CLASSES), source=str(root),
                      checksum=md5_of_listing(root, [*paths, *reports.values()]), attributes=attributes,
                      groups={split: cases_array[idx].astype(str) for split, idx in parts.items()})
