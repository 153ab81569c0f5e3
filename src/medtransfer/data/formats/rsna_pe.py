"""RSNA-STR Pulmonary Embolism CT (format ``rsna_pe``): CT pulmonary angiograms as DICOM series,
one example per slice, labelled ``pe_present_on_image``.

Download the competition's training data (https://www.kaggle.com/c/rsna-str-pulmonary-embolism-detection/data)::

    pe:
      format: rsna_pe
      root: /data/rsna-str-pe   # holds train.csv and train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
      size: 224
      window_center: 100        # HU; defaults: the PE window of the winning solution
      window_width: 700
      order: position           # neighbours by ImagePositionPatient z (default), or instance_number
      val_fraction: 0.1         # defaults 0.1 and 0.2, of whole studies
      test_fraction: 0.2
      split_seed: 0

``train.csv`` has one row per slice: ``StudyInstanceUID``, ``SeriesInstanceUID``,
``SOPInstanceUID``, ``pe_present_on_image`` (the label, 0/1) and the study-level columns
(``negative_exam_for_pe``, ``rv_lv_ratio_gte_1``, ...), which are not read. Task ``binary``
(``[no_pe, pe]``), metric ``auc``.

An example is three slices as the three channels: the slice's lower neighbour, the slice, its
upper neighbour, in the order of ``ImagePositionPatient``'s z within the series (the first and
last slice repeat themselves where a neighbour is missing), each in Hounsfield units (the modality
LUT: stored value x RescaleSlope + RescaleIntercept) windowed to centre 100, width 700 (-250 to
450 HU mapped linearly to 0..255). This follows the first-place solution
(GuanshuoXu/RSNA-STR-Pulmonary-Embolism-Detection: neighbours from ``process_input_splitall.py``,
``window(x, WL=100, WW=700)`` in ``trainall/seresnext50/train0.py``), except that its window
rescales each slice by its own min and max after clipping (the same unless a slice covers less
than the window) and that its lung crop is not made. Hosseinzadeh Taher et al.'s code has no RSNA
PE loader (MR-HosseinzadehTaher/BenchmarkTransferLearning links the data only).

Streaming (about 1.8 M slices): the reader keeps only the CSV's ids (as compact arrays) and
decodes slices when the cache writer asks for a chunk, each DICOM of a chunk once, resized to
``size`` before the three are stacked; a series' slice order is read from its files' headers
(not their pixels) the first time a chunk needs it, and a few series' orders are kept. While
reading, each series folder is listed once: a slice the CSV names but its folder lacks stops
with a DataError naming the row. A file that is not DICOM, has no pixel data or cannot be decoded
stops the conversion with a DataError naming it and a CSV row that needed it.

The competition's test labels are not public, so val and test are made from whole studies (no
study in two splits), stratified by whether a study has any PE slice, and seeded. Needs pydicom
(``pip install 'medtransfer[dicom]'``; some series use JPEG compression, whose decoding needs
``pip install pylibjpeg pylibjpeg-libjpeg``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medtransfer.data.formats import dicom
from medtransfer.data.formats.common import check_decoding_keys, decoding_keys, md5_file, split_keys
from medtransfer.data.images import PIL_FILTERS, LazyDecoded, default_decode_threads
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import check_disjoint, describe_split, grouped_split
from medtransfer.errors import ConfigError, DataError

COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image")
ORDERS = ("position", "instance_number")
DOWNLOAD = "https://www.kaggle.com/c/rsna-str-pulmonary-embolism-detection/data"
SERIES_KEPT = 64  # series orders kept in memory (a chunk rarely spans more than two series)


class SliceStacks(LazyDecoded):
    """Slices of CT series as a lazy uint8 [N, 3, size, size] array-like: item i is slice i with
    its two neighbours (lower z, itself, upper z) as channels, windowed and resized when sliced.

    Args:
        folder: the ``train/`` folder.
        series: ``"<study>/<series>"`` folder of each series code.
        series_of: int32 [N] series code of each item.
        sops: bytes [N] SOPInstanceUID of each item (its file is ``<sop>.dcm``).
        rows: int64 [N] CSV row of each item (for messages).
        csv_name: the CSV's path (for messages).
        size, resize: output size and PIL filter name.
        center, width: the CT window, HU.
        order: ``position`` (ImagePositionPatient z) or ``instance_number``.
        workers: decoding threads (default :func:`default_decode_threads`).
    """

    def __init__(self, folder: Path, series: Sequence[str], series_of: np.ndarray, sops: np.ndarray, rows: np.ndarray,
                 csv_name: str, size: int, resize: str, center: float, width: float, order: str,
                 workers: int | None = None) -> None:
        self.folder, self.series = Path(folder), list(series)
        self.series_of, self.sops, self.rows = series_of, sops, rows
        self.csv_name, self.size, self.resize = csv_name, int(size), resize
        self.center, self.width, self.order = float(center), float(width), order
        self.workers = int(workers) if workers else default_decode_threads()
        self.shape = (len(series_of), 3, self.size, self.size)
        self.dtype = np.dtype(np.uint8)
        self._setup()

    _transient = ("_pool", "_lock", "_orders")  # the slice orders are a cache: a copy reads its own

    def _setup(self) -> None:
        self._pool = None
        self._lock = threading.Lock()
        self._orders: OrderedDict[int, dict[bytes, tuple[bytes, bytes]]] = OrderedDict()

    def __len__(self) -> int:
        return self.shape[0]

    def subset(self, indices: Sequence[int] | np.ndarray) -> SliceStacks:
        """The items at ``indices``, still lazy."""
        idx = np.asarray(indices, np.int64)
        return SliceStacks(self.folder, self.series, self.series_of[idx], self.sops[idx], self.rows[idx],
                           self.csv_name, self.size, self.resize, self.center, self.width, self.order, self.workers)

    def _map(self, function: Any, items: Sequence[Any]) -> list[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dicom")
        return list(self._pool.map(function, items))

    def _path(self, series: int, sop: bytes) -> Path:
        return self.folder / self.series[series] / f"{sop.decode()}.dcm"

    def neighbours(self, series: int) -> dict[bytes, tuple[bytes, bytes]]:
        """SOPInstanceUID -> (lower neighbour, upper neighbour) in one series, from its files' headers."""
        with self._lock:
            if series in self._orders:
                self._orders.move_to_end(series)
                return self._orders[series]
        folder = self.folder / self.series[series]
        files = sorted(name for name in os.listdir(folder) if name.endswith(".dcm"))
        pydicom = dicom.pydicom_module()
        tag = "ImagePositionPatient" if self.order == "position" else "InstanceNumber"

        def key(name: str) -> float:
            path = folder / name
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[tag])
            except (pydicom.errors.InvalidDicomError, EOFError, KeyError, TypeError) as err:
                raise DataError(f"slice {path} is not a readable DICOM file ({err}); fix or remove it") from None
            value = ds.get(tag)
            if value is None or (tag == "ImagePositionPatient" and len(value) != 3):
                raise DataError(f"slice {path} has no {tag}, so its neighbours are unknown; "
                                + ("set order: instance_number" if tag == "ImagePositionPatient"
                                   else "set order: position"))
            return float(value[2] if tag == "ImagePositionPatient" else value)

        keys = self._map(key, files)
        ordered = [name[:-4].encode() for _, name in sorted(zip(keys, files))]
        result = {sop: (ordered[max(i - 1, 0)], ordered[min(i + 1, len(ordered) - 1)]) for i, sop in enumerate(ordered)}
        with self._lock:
            self._orders[series] = result
            while len(self._orders) > SERIES_KEPT:
                self._orders.popitem(last=False)
        return result

    def _decode(self, job: tuple[int, bytes, int]) -> np.ndarray:
        series, sop, row = job
        path = self._path(series, sop)
        try:
            hu = dicom.hounsfield(path)
        except (OSError, ValueError) as err:
            raise DataError(f"{self.csv_name} row {row}: slice {path} cannot be read ({err}); fix or remove it") from None
        img = Image.fromarray(dicom.window(hu, self.center, self.width))
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), PIL_FILTERS[self.resize])
        return np.asarray(img, dtype=np.uint8)

    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.arange(*index.indices(len(self))) if isinstance(index, slice) else np.asarray(index, np.int64)
        if rows.ndim != 1:
            raise TypeError("SliceStacks takes a slice or a 1-d array of indices")
        orders = {int(s): self.neighbours(int(s)) for s in np.unique(self.series_of[rows])}
        triples, jobs = [], {}
        for r in rows:
            series, sop = int(self.series_of[r]), bytes(self.sops[r])
            lower, upper = orders[series].get(sop, (None, None))
            if lower is None:
                raise DataError(f"{self.csv_name} row {int(self.rows[r])}: slice {self._path(series, sop)} is not in "
                                f"its series folder any more; restore it")
            triple = ((series, lower), (series, sop), (series, upper))
            for key in triple:
                jobs.setdefault(key, int(self.rows[r]))
            triples.append(triple)
        keys = list(jobs)
        decoded = dict(zip(keys, self._map(self._decode, [(s, sop, jobs[s, sop]) for s, sop in keys])))
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        for k, triple in enumerate(triples):
            for channel, key in enumerate(triple):
                out[k, channel] = decoded[key]
        return out



# --- the format -------------------------------------------------------------------------------------

def _window(name: str, entry: Mapping[str, Any]) -> tuple[float, float]:
    try:
        center, width = float(entry.get("window_center", 100)), float(entry.get("window_width", 700))
    except (TypeError, ValueError):
        raise ConfigError(f"datasets.{name}.window_center and window_width are numbers (HU), e.g. 100 and 700") from None
    if width <= 0:
        raise ConfigError(f"datasets.{name}.window_width is {width:g}; it must be > 0 (HU)")
    return center, width


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The window, ``order``, ``channels`` (3) and the decoding keys (``ConfigError``), before any file is read."""
    check_decoding_keys(name, {"channels": 3, **entry})
    channels, order = int(entry.get("channels", 3)), entry.get("order", "position")
    if channels != 3:
        raise ConfigError(f"datasets.{name}.channels is {channels}; rsna_pe stacks three slices: 3")
    if order not in ORDERS:
        raise ConfigError(f"datasets.{name}.order is {order!r}; allowed: {', '.join(ORDERS)}")
    _window(name, entry)


def read_slices(csv_path: Path) -> Any:
    """The CSV's id and label columns only (study and series ids as categories)."""
    import pandas as pd

    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist; download the competition's training data from {DOWNLOAD}")
    try:
        header = pd.read_csv(csv_path, nrows=0, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable CSV file ({err})") from None
    present = {str(c).strip(): c for c in header.columns}
    missing = [c for c in COLUMNS if c not in present]
    if missing:
        raise DataError(f"{csv_path}: column(s) {', '.join(map(repr, missing))} missing; the file has "
                        f"{', '.join(map(repr, present))}. Is it the competition's train.csv?")
    table = pd.read_csv(csv_path, usecols=[present[c] for c in COLUMNS], skipinitialspace=True,
                        dtype={present[c]: ("category" if c in COLUMNS[:2] else str) for c in COLUMNS})
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DataError(f"{csv_path}: no rows")
    for column in COLUMNS:
        empty = table[column].isna().to_numpy()
        if empty.any():
            raise DataError(f"{csv_path} row {int(np.argmax(empty)) + 2}: empty {column!r}")
    label = pd.to_numeric(table["pe_present_on_image"], errors="coerce").to_numpy()
    bad = ~np.isin(label, (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{csv_path} row {i + 2}: pe_present_on_image is {table['pe_present_on_image'].iloc[i]!r}; "
                        "expected 0 or 1")
    table["pe_present_on_image"] = label.astype(np.int64)
    return table


@register_format("rsna_pe", required={"root": "the folder holding train.csv and train/<study>/<series>/<sop>.dcm",
                                      "size": "slices are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read ``train.csv`` and list the series folders (slices decoded lazily); see the module docstring."""
    check(name, entry)
    dicom.pydicom_module(f"datasets.{name}")
    root = Path(require(entry, "root", name))
    size, _, resize, workers = decoding_keys({**entry, "channels": 3}, name)
    center, width = _window(name, entry)
    csv_path = root / str(entry.get("csv", "train.csv"))
    folder = root / str(entry.get("images", "train"))
    table = read_slices(csv_path)
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; it holds the series: train/<StudyInstanceUID>/<SeriesInstanceUID>/")
    # series and studies as integer codes of the CSV's categories: no string per row is kept
    study_codes = table["StudyInstanceUID"].cat.codes.to_numpy(np.int64)
    series_codes = table["SeriesInstanceUID"].cat.codes.to_numpy(np.int64)
    studies = [str(c).strip() for c in table["StudyInstanceUID"].cat.categories]
    series_ids = [str(c).strip() for c in table["SeriesInstanceUID"].cat.categories]
    pairs, series_of = np.unique(study_codes * len(series_ids) + series_codes, return_inverse=True)
    series_names = [f"{studies[p // len(series_ids)]}/{series_ids[p % len(series_ids)]}" for p in pairs]
    study_of = study_codes
    sops = np.asarray(table["SOPInstanceUID"].str.strip().to_numpy(), dtype="S")
    labels = table["pe_present_on_image"].to_numpy(np.int64)
    del table

    # items grouped by series (the CSV's order within one): a chunk then touches few series
    order = np.argsort(series_of, kind="stable")
    series_of, sops, labels, study_of = series_of[order].astype(np.int32), sops[order], labels[order], study_of[order]
    rows = order.astype(np.int64) + 2
    bounds = np.flatnonzero(np.diff(series_of)) + 1
    listing = hashlib.md5()
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(series_of)]):
        where = folder / series_names[series_of[start]]
        try:
            names = {n[:-4].encode() for n in os.listdir(where) if n.endswith(".dcm")}
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(f"{csv_path} row {rows[start]}: series folder {where} does not exist; is the download "
                            "complete and 'root' its folder?") from None
        lacking = next((k for k in range(start, stop) if bytes(sops[k]) not in names), None)
        if lacking is not None:
            k = lacking
            raise DataError(f"{csv_path} row {rows[k]}: slice {where / (sops[k].decode() + '.dcm')} does not exist; "
                            "is the download complete?")
        listing.update(f"{series_names[series_of[start]]}\t{len(names)}\n".encode())

    # study-grouped splits, stratified by whether a study has any PE slice
    study_positive = np.zeros(int(study_of.max()) + 1, np.int64)
    np.maximum.at(study_positive, study_of, labels)
    options = split_keys(entry)
    seed = options["seed"]
    parts = grouped_split(study_positive[study_of], study_of, {"test": options["test_fraction"],
                                                               "val": options["val_fraction"]}, seed)
    parts = {"train": parts["rest"], "val": parts["val"], "test": parts["test"]}
    check_disjoint({s: np.unique(study_of[idx]) for s, idx in parts.items()}, "study", str(csv_path))
    stacks = SliceStacks(folder, list(series_names), series_of, sops, rows, str(csv_path), size, resize, center, width,
                         entry.get("order", "position"), workers)
    splits = {split: (stacks.subset(idx), labels[idx]) for split, idx in parts.items()}
    attributes = {
        "metric": "auc",
        "example": "one slice: channels = (lower neighbour, slice, upper neighbour) by "
                   + ("ImagePositionPatient z" if entry.get("order", "position") == "position" else "InstanceNumber"),
        "window_hu": {"center": center, "width": width},
        "studies": len(study_positive),
        "positive_studies": int(study_positive.sum()),
        "split_policy": (f"val and test made from whole studies (val {len(parts['val'])}, test {len(parts['test'])} "
                         f"slices), stratified by whether a study has a PE slice, split_seed {seed}"),
        "made_splits": describe_split(parts, csv_path.name, "study", seed),
        "series_listing_md5": listing.hexdigest(),
    }
    return RawDataset(splits=splits, task="binary", class_names=["no_pe", "pe"], source=str(csv_path),
                      checksum=md5_file(csv_path), attributes=attributes,
                      groups={split: study_of[idx] for split, idx in parts.items()})
