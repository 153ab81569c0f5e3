"""APTOS 2019 Blindness Detection (format ``aptos2019``): fundus photographs, DR grade 0-4.

Download the Kaggle competition data (``kaggle competitions download -c aptos2019-blindness-detection``)
and unpack it; ``root`` is the folder holding ``train.csv`` (columns ``id_code``, ``diagnosis``) and
``train_images/{id_code}.png``::

    aptos:
      format: aptos2019
      root: /data/aptos2019-blindness-detection
      size: 224
      val_fraction: 0.1      # defaults 0.1 and 0.2, of train.csv's images
      test_fraction: 0.2
      split_seed: 0

``test.csv`` has no labels (Kaggle kept them), so val and test are made from ``train.csv``,
stratified by grade and seeded; APTOS has no patient ids, so each image is its own group (the
cache records this). Task ``ordinal`` (5 grades), metric ``kappa`` (quadratic-weighted Cohen's
kappa, the competition's and Matsoukas et al.'s metric). ``images`` names the image folder when
it is not ``train_images``; ``size`` (required), ``channels`` (default 3), ``resize``, ``workers``
as for ``csv``. An ``id_code`` that names a file outside the image folder (absolute, or ``..``)
is refused, naming its row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, grades, listing_checksum,
                                             md5_file, path_inside, read_table, row_names, split_keys)
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import split_source_train
from medtransfer.errors import DataError

GRADES = ("0 no DR", "1 mild", "2 moderate", "3 severe", "4 proliferative DR")
DOWNLOAD = "https://www.kaggle.com/competitions/aptos2019-blindness-detection/data"
METRIC = "kappa"


@register_format("aptos2019", required={"root": "the unpacked aptos2019-blindness-detection folder",
                                        "size": "images are resized to size x size"}, check=check_decoding_keys)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read APTOS 2019's train.csv and train_images/ (images decoded lazily)."""
    root = Path(require(entry, "root", name))
    size, channels, resize, workers = decoding_keys(entry, name)
    csv_path = root / "train.csv"
    table = read_table(csv_path, ["id_code", "diagnosis"], hint=f"download APTOS 2019 from {DOWNLOAD}")
    rows = row_names(csv_path, len(table))
    labels = grades(table["diagnosis"].tolist(), rows, "diagnosis", len(GRADES), "APTOS grades")
    for i, code in enumerate(table["id_code"]):
        if not isinstance(code, str) or not code.strip():
            raise DataError(f"{rows[i]}: empty 'id_code'")
    folder = root / str(entry.get("images", "train_images"))
    paths = [path_inside(folder, f"{code.strip()}.png", f"datasets.{name}: {row}, column 'id_code'", value=code)
             for row, code in zip(rows, table["id_code"])]
    listing = listing_checksum(root, paths, rows)
    images = DecodedImages(paths, size, channels, resize, workers=workers, describe=rows)
    splits, attributes = split_source_train(images, labels, None, source="train.csv", grouping="image",
                                            **split_keys(entry))
    attributes.update({"metric": METRIC, "images_listing_md5": listing,
                       "note": "APTOS 2019 has no patient ids: images are split independently"})
    return RawDataset(splits=splits, task="ordinal", class_names=list(GRADES), source=str(csv_path),
                      checksum=md5_file(csv_path), attributes=attributes)
