"""PatchCamelyon (format ``pcam``): 96x96 H&E lymph-node patches, metastasis yes/no.

Download the six ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5.gz`` files (Zenodo
record 2546921, or the Google Drive folder of github.com/basveeling/pcam), ``gunzip`` them, and
point ``root`` at their folder::

    pcam: {format: pcam, root: /data/pcam}              # cache at the native 96 px
    pcam224: {format: pcam, root: /data/pcam, size: 224}  # 49 GB: prefer the loader's image_size

Each ``_x.h5`` holds dataset ``x``, uint8 [N, 96, 96, 3]; each ``_y.h5`` dataset ``y``, uint8
[N, 1, 1, 1], 1 = tumour tissue in the centre 32x32 region. The official splits are used as they
are (262,144 / 32,768 / 32,768; no slide in two splits, per the PCam README). Images are read in
slices (:class:`H5Images`), never whole; labels are read whole (N bytes). Task ``binary``,
metric ``auc``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medtransfer.data.formats.common import md5_file
from medtransfer.data.raw import SPLITS, RawDataset, register_format, require
from medtransfer.errors import DataError

SOURCE_SPLITS = {"train": "train", "val": "valid", "test": "test"}
CLASSES = ("no tumour", "tumour")
DOWNLOAD = "https://zenodo.org/records/2546921"
METRIC = "auc"


def file_name(split: str, kind: str) -> str:
    """Official file name of ``split`` (train/val/test) and ``kind`` (x = images, y = labels)."""
    return f"camelyonpatch_level_2_split_{SOURCE_SPLITS[split]}_{kind}.h5"


class H5Images:
    """The ``x`` dataset of a PCam file as uint8 [N, 3, H, W], read in slices.

    ``images[i:j]`` reads rows i..j-1 from disk and moves channels first. The file is opened on
    first use and again after pickling (one handle per process).
    """

    def __init__(self, path: str | Path, key: str = "x") -> None:
        self.path, self.key = Path(path), key
        with _open(self.path) as h5:
            if key not in h5:
                raise DataError(f"{self.path}: no dataset {key!r} (has {', '.join(h5)}); is it a PCam _x.h5 file?")
            data = h5[key]
            if data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
                raise DataError(f"{self.path}: {key} is {data.dtype} {data.shape}; expected uint8 [N, H, W, 3]")
            n, h, w, c = data.shape
        self.shape = (int(n), int(c), int(h), int(w))
        self.dtype = np.dtype(np.uint8)
        self._h5: h5py.File | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("H5Images supports contiguous slices images[i:j] only")
        if self._h5 is None:
            self._h5 = _open(self.path)
        start, stop, _ = index.indices(self.shape[0])
        try:
            rows = self._h5[self.key][start:max(start, stop)]
        except OSError as err:
            raise DataError(f"{self.path}: rows {start}..{stop - 1} cannot be read ({err}); the file is "
                            f"truncated or corrupt: gunzip it again from {DOWNLOAD}") from None
        return np.ascontiguousarray(rows.transpose(0, 3, 1, 2))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None}


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path} is not a readable HDF5 file ({err}); was it fully downloaded and gunzipped? "
                        f"({DOWNLOAD})") from None


def _locate(root: Path, split: str, kind: str) -> Path:
    path = root / file_name(split, kind)
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        raise DataError(f"{path} is missing but {gz.name} is there: unpack it first (gunzip {gz})")
    raise DataError(f"{path} does not exist; download {path.name}.gz from {DOWNLOAD}, gunzip it into {root} "
                    "(or point 'root' at the folder holding the six PCam .h5 files)")


def read_labels(path: Path) -> np.ndarray:
    """The ``y`` dataset of a PCam label file as int64 [N]; DataError naming the first bad row."""
    with _open(path) as h5:
        if "y" not in h5:
            raise DataError(f"{path}: no dataset 'y' (has {', '.join(h5)}); is it a PCam _y.h5 file?")
        y = h5["y"][...]
    if y.ndim == 0 or int(np.prod(y.shape[1:])) != 1:
        raise DataError(f"{path}: y is {y.shape}; expected one label per patch, [N, 1, 1, 1]")
    y = y.reshape(len(y))
    bad = np.flatnonzero(~np.isin(y, (0, 1)))
    if len(bad):
        raise DataError(f"{path}: y row {int(bad[0])} is {y[bad[0]].item()} ({len(bad)} rows outside 0/1); "
                        "PCam labels are 0 or 1")
    return y.astype(np.int64)


@register_format("pcam", required={"root": "the folder holding the six gunzipped PCam .h5 files"})
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Open the six PCam HDF5 files (images stay on disk; build_cache reads them in slices)."""
    root = Path(require(entry, "root", name))
    splits: dict[str, tuple[Any, np.ndarray]] = {}
    digest = hashlib.md5()
    for split in SPLITS:
        x_path, y_path = _locate(root, split, "x"), _locate(root, split, "y")
        images, labels = H5Images(x_path), read_labels(y_path)
        if len(images) != len(labels):
            raise DataError(f"{x_path} has {len(images)} patches but {y_path} has {len(labels)} labels; "
                            "the pair must match row for row (a truncated or mixed-up file?)")
        splits[split] = (images, labels)
        # the 7 GB of images are fingerprinted by size and shape, the labels by content
        digest.update(f"{x_path.name} {x_path.stat().st_size} {images.shape} {md5_file(y_path)}\n".encode())
    shapes = {tuple(images.shape[1:]) for images, _ in splits.values()}
    if len(shapes) != 1:
        raise DataError(f"{root}: the splits' patches differ in size ({sorted(shapes)}); mixed PCam versions?")
    return RawDataset(
        splits=splits,
        task="binary",
        class_names=list(CLASSES),
        source=str(root),
        checksum=digest.hexdigest(),
        attributes={"metric": METRIC, "split_policy": "official PCam splits (train, valid -> val, test)",
                    "label": "1 = tumour tissue in the centre 32x32 px of the patch"},
    )
