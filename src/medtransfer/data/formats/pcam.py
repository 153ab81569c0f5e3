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

A pooled subset (Juodelyte et al. 2024's "PCam-small")::

    pcam-small: {format: pcam, root: /data/pcam, pooled_subset: 10000, pooled_seed: 22}

``pooled_subset: N`` draws N patches from the three official splits pooled (327,680 patches),
stratified by label (each class gets its share of N, largest remainders rounding) and seeded by
``pooled_seed`` (default 0); train, val and test are then made from those N as for sources with
one labelled set (:func:`medtransfer.data.splits.split_source_train`: ``val_fraction`` 0.1,
``test_fraction`` 0.2, ``split_seed`` 0 by default; stratified, each patch on its own). The cache
records the draw (attribute ``pooled_subset``). Juodelyte et al. made PCam-small by writing every
split's patches as PNGs into one folder (DovileDo/revisiting-transfer ``src/io_fun/pcam_converter.py``)
and sampling 10,000 of them with ``DataFrame.sample(n=10000, random_state=22)``, not stratified
(``src/io_fun/data_import.py``, ``import_PCAM``), then cut 5 stratified folds (``src/make_dataframe.py``).
Their converter names files ``{row}_label={y}.png`` with the row restarting in each split, so
valid and test patches overwrote train patches of the same row and label: their pool is not
exactly the 327,680 patches, and their draw depends on the folder's listing order, so it cannot
be reproduced patch for patch; this draw is the same protocol on the official files. Patches of
one slide can land in two splits (PCam's official splits keep slides apart; a pooled draw, theirs
included, does not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medtransfer.data.formats.common import md5_file, split_keys
from medtransfer.data.raw import SPLITS, RawDataset, register_format, require
from medtransfer.data.splits import split_source_train
from medtransfer.errors import ConfigError, DataError

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

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (strictly increasing, as h5py's point selection wants) -> uint8 [len, C, H, W]."""
        if self._h5 is None:
            self._h5 = _open(self.path)
        if not len(rows):
            return np.empty((0, *self.shape[1:]), np.uint8)
        try:
            data = self._h5[self.key][np.asarray(rows, np.int64)]
        except OSError as err:
            raise DataError(f"{self.path}: rows {int(rows[0])}..{int(rows[-1])} cannot be read ({err}); the file "
                            f"is truncated or corrupt: gunzip it again from {DOWNLOAD}") from None
        return np.ascontiguousarray(data.transpose(0, 3, 1, 2))

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None}


class PooledRows:
    """Chosen rows of several :class:`H5Images` as one uint8 [N, C, H, W] array-like: image i is
    row ``rows[i]`` of ``sources[which[i]]``. ``images[i:j]`` (or an index array) reads only those
    rows, file by file in increasing order; ``subset`` stays lazy."""

    def __init__(self, sources: list[H5Images], which: np.ndarray, rows: np.ndarray) -> None:
        self.sources, self.which, self.rows = sources, np.asarray(which, np.int64), np.asarray(rows, np.int64)
        self.shape = (len(self.rows), *sources[0].shape[1:])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def subset(self, indices: np.ndarray) -> PooledRows:
        indices = np.asarray(indices, np.int64)
        return PooledRows(self.sources, self.which[indices], self.rows[indices])

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        positions = np.arange(len(self))[index]
        out = np.empty((len(positions), *self.shape[1:]), np.uint8)
        for k, source in enumerate(self.sources):
            here = np.flatnonzero(self.which[positions] == k)
            order = np.argsort(self.rows[positions[here]], kind="stable")
            out[here[order]] = source.read_rows(self.rows[positions[here[order]]])
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        for source in self.sources:
            source.close()


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


def pooled_draw(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of ``n`` of ``labels`` [M], drawn without replacement, stratified: class c
    gets ``n * M_c / M`` rounded down, plus one for the classes with the largest remainders (ties to
    the lower class) until the counts sum to ``n``; then a seeded draw within each class."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    take = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - take), kind="stable")[:n - int(take.sum())]
    take[extra] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def check(name: str, entry: Mapping[str, Any]) -> None:
    """``pooled_subset`` (a positive integer) and ``pooled_seed`` (an integer), before any file is read."""
    if "pooled_subset" in entry:
        n = entry["pooled_subset"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"datasets.{name}.pooled_subset is {n!r}; allowed: a positive integer (patches drawn "
                              "from the pooled official splits), or leave it out for the official splits")
    seed = entry.get("pooled_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"datasets.{name}.pooled_seed is {seed!r}; allowed: an integer")
    if "pooled_seed" in entry and "pooled_subset" not in entry:
        raise ConfigError(f"datasets.{name}.pooled_seed is set without pooled_subset; set pooled_subset: N "
                          "(patches to draw) or drop pooled_seed")


@register_format("pcam", required={"root": "the folder holding the six gunzipped PCam .h5 files"}, check=check)
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
    attributes = {"metric": METRIC, "split_policy": "official PCam splits (train, valid -> val, test)",
                  "label": "1 = tumour tissue in the centre 32x32 px of the patch"}
    if "pooled_subset" in entry:
        splits, pooled = _pooled_subset(name, entry, splits)
        attributes.update(pooled)
    return RawDataset(
        splits=splits,
        task="binary",
        class_names=list(CLASSES),
        source=str(root),
        checksum=digest.hexdigest(),
        attributes=attributes,
    )


def _pooled_subset(name: str, entry: Mapping[str, Any], official: dict[str, tuple[Any, np.ndarray]]
                   ) -> tuple[dict[str, tuple[Any, np.ndarray]], dict[str, Any]]:
    """``pooled_subset`` patches of the pooled official splits, then train/val/test made from them."""
    n, seed = int(entry.get("pooled_subset", 0)), int(entry.get("pooled_seed", 0))
    labels = np.concatenate([official[s][1] for s in SPLITS])
    if n > len(labels):
        raise DataError(f"datasets.{name}.pooled_subset is {n}, but the official splits hold {len(labels)} patches "
                        "in all; lower it")
    which = np.concatenate([np.full(len(official[s][1]), k, np.int64) for k, s in enumerate(SPLITS)])
    rows = np.concatenate([np.arange(len(official[s][1]), dtype=np.int64) for s in SPLITS])
    chosen = pooled_draw(labels, n, seed)
    images = PooledRows([official[s][0] for s in SPLITS], which[chosen], rows[chosen])
    splits, attributes = split_source_train(images, labels[chosen], None, source=f"{n} pooled patches",
                                            grouping="patch", **split_keys(entry))
    attributes["pooled_subset"] = {
        "patches": n, "pooled_seed": seed, "stratified": True,
        "from": {f"{s} ({file_name(s, 'x')})": int((which[chosen] == k).sum()) for k, s in enumerate(SPLITS)},
        "per_class": {CLASSES[int(c)]: int((labels[chosen] == c).sum()) for c in np.unique(labels)},
        "after": "Juodelyte et al. 2024, PCam-small (DovileDo/revisiting-transfer src/io_fun/data_import.py)",
    }
    return splits, attributes
