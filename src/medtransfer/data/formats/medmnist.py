"""MedMNIST v2 (format ``medmnist``): the official ``.npz`` files of every 2D flag and size.

Config entry::

    breast: {format: medmnist, flag: breastmnist, size: 28, root: resources/medmnist}

- ``flag``: any 2D MedMNIST flag (:data:`FLAGS`).
- ``size``: image size of the cache. It also picks the file: ``{flag}.npz`` for 28,
  ``{flag}_{size}.npz`` for 64, 128, 224. ``npz_size`` picks the file explicitly when the
  cache should hold another size, e.g. ``{size: 224, npz_size: 28, resize: nearest}`` is
  MedMNIST's 28 -> 224 nearest upsampling done once at preprocessing (the loader's
  ``image_size`` does the same per batch and keeps the cache small).
- ``root``: the folder holding the file.

The file's md5 is checked against the official value (the ``MD5`` table of the ``medmnist``
package's ``info.py``, v3.0.2, Zenodo record 10519652; the 28 px files are the same in v2).
A missing file is downloaded from Zenodo into ``root`` (temp file, md5 check, rename); offline
(no network, or ``MEDTRANSFER_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) this fails within seconds with
a message naming the file, the folder and the URL.

Images are read from the zip member in slices (see :class:`NpzImages`), so even the 224 px files
are converted without holding them in memory. Gray flags give C = 1, RGB flags C = 3. Tasks:
binary, multiclass, ``ordinal`` for retinamnist, ``multilabel`` (float32 [N, 14], no unknowns)
for chestmnist.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medtransfer.atomic import atomic_path
from medtransfer.data.formats.common import md5_file
from medtransfer.data.raw import SPLITS, RawDataset, register_format, require
from medtransfer.errors import ConfigError, DataError

ZENODO_RECORD = "10519652"
URL = "https://zenodo.org/records/{record}/files/{file}?download=1"
SIZES = (28, 64, 128, 224)
CONNECT_TIMEOUT_S = 10.0
OFFLINE_ENV = ("MEDTRANSFER_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class Flag:
    """Official facts about one MedMNIST 2D flag (from ``medmnist/info.py``)."""

    task: str
    channels: int
    n_samples: tuple[int, int, int]  # train, val, test
    classes: tuple[str, ...]
    md5: dict[int, str]  # image size -> md5 of the .npz


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
    "lung-left", "lung-right", "pancreas", "spleen")

# fmt: off
FLAGS: dict[str, Flag] = {
    "pathmnist": Flag(
        "multiclass", 3, (89996, 10004, 7180),
        ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
         "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
        {28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616",
         128: "ac42d08fb904d92c244187169d1fd1d9", 224: "2c51a510bcdc9cf8ddb2af93af1eadec"},
    ),
    "chestmnist": Flag(
        "multilabel", 1, (78468, 11219, 22433),
        ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
         "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
        {28: "02c8a6516a18b556561a56cbdd36c4a8", 64: "9de6cd0b934ebb5b7426cfba5efbae16",
         128: "db107e5590b27930b62dbaf558aebee3", 224: "45bd33e6f06c3e8cdb481c74a89152aa"},
    ),
    "dermamnist": Flag(
        "multiclass", 3, (7007, 1003, 2005),
        ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
         "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
         "vascular lesions"),
        {28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
         128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"},
    ),
    "octmnist": Flag(
        "multiclass", 1, (97477, 10832, 1000),
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        {28: "c68d92d5b585d8d81f7112f81e2d0842", 64: "e229e9440236b774d9f0dfef9d07bdaf",
         128: "0a97e76651ace45c5d943ee3f65b63ae", 224: "abc493b6d529d5de7569faaef2773ba3"},
    ),
    "pneumoniamnist": Flag(
        "binary", 1, (4708, 524, 624),
        ("normal", "pneumonia"),
        {28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
         128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"},
    ),
    "retinamnist": Flag(
        "ordinal", 3, (1080, 120, 400),
        ("0", "1", "2", "3", "4"),
        {28: "bd4c0672f1bba3e3a89f0e4e876791e4", 64: "afda852cc34dcda56f86ad2b2457dbcc",
         128: "e48e916a24454daf90583d4e6efb1a18", 224: "eae7e3b6f3fcbda4ae613ebdcbe35348"},
    ),
    "breastmnist": Flag(
        "binary", 1, (546, 78, 156),
        ("malignant", "normal, benign"),
        {28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364",
         128: "363e4b3f8d712e9b5de15470a2aaadf1", 224: "b56378a6eefa9fed602bb16d192d4c8b"},
    ),
    "bloodmnist": Flag(
        "multiclass", 3, (11959, 1712, 3421),
        ("basophil", "eosinophil", "erythroblast",
         "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
         "monocyte", "neutrophil", "platelet"),
        {28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
         128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"},
    ),
    "tissuemnist": Flag(
        "multiclass", 1, (165466, 23640, 47280),
        ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
         "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
         "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"),
        {28: "ebe78ee8b05294063de985d821c1c34b", 64: "123ece2eba09d0aa5d698fda57103344",
         128: "61b955355d7425a89687b06cca3ce0c2", 224: "b077128c4a949f0a4eb01517f9037b9c"},
    ),
    "organamnist": Flag(
        "multiclass", 1, (34561, 6491, 17778),
        _ORGANS,
        {28: "68e3f8846a6bd62f0c9bf841c0d9eacc", 64: "2dcccc29b88e6da5a01161ef20cda288",
         128: "eeae80d0a227a8d099027e1b3cfd3b60", 224: "50747347e05c87dd3aaf92c49f9f3170"},
    ),
    "organcmnist": Flag(
        "multiclass", 1, (12975, 2392, 8216),
        _ORGANS,
        {28: "b9ceb9546e10131b32923c5bbeaea2b1", 64: "3ce34a8724ea6f548e6db4744d03b6a9",
         128: "773c1f009daa3fe5d9a2a201b2a7ed94", 224: "050f5e875dc056f6768abf94ec9995d1"},
    ),
    "organsmnist": Flag(
        "multiclass", 1, (13932, 2452, 8827),
        _ORGANS,
        {28: "9ab87b696fb54e2a387ebe992d6ed5f1", 64: "53a6d115339d874c25e309a994ff46d3",
         128: "ded0c5fa01a95dc4978b956f613e9b8e", 224: "b354719e553fbbb2513d5533f52a4cb1"},
    ),
}
# fmt: on


def file_name(flag: str, size: int) -> str:
    """Official file name: ``{flag}.npz`` for 28 px, ``{flag}_{size}.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def official_url(flag: str, size: int) -> str:
    return URL.format(record=ZENODO_RECORD, file=file_name(flag, size))


class NpzImages:
    """Array-like view of an image member of an ``.npz`` as uint8 [N, C, H, W], read in slices.

    ``images[i:j]`` decompresses only up to row j; consecutive slices continue from where the
    previous one stopped (a backwards slice reopens the member), so a pass in order reads the
    file once. Gray members (N, H, W) get C = 1; RGB members (N, H, W, 3) are transposed.
    """

    def __init__(self, path: str | Path, member: str) -> None:
        self.path, self.member = Path(path), member
        with zipfile.ZipFile(self.path) as archive, archive.open(member) as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) not in (3, 4):
            raise DataError(f"{self.path}: {member} is {dtype} {shape} (fortran order {fortran}); "
                            "expected uint8 [N, H, W] or [N, H, W, 3] as in the official MedMNIST files")
        self._stored_shape = tuple(int(s) for s in shape)
        n, h, w = self._stored_shape[:3]
        c = self._stored_shape[3] if len(shape) == 4 else 1
        self.shape = (n, c, h, w)
        self.dtype = np.dtype(np.uint8)
        self._row_bytes = h * w * c
        self._archive: zipfile.ZipFile | None = None
        self._stream = None
        self._row = 0  # next row the open stream will return

    def __len__(self) -> int:
        return self.shape[0]

    def _seek(self, row: int) -> None:
        if self._stream is None or row < self._row:
            self.close()
            self._archive = zipfile.ZipFile(self.path)
            self._stream = self._archive.open(self.member)
            self._stream.seek(self._offset)
            self._row = 0
        if row > self._row:
            self._stream.seek((row - self._row) * self._row_bytes, os.SEEK_CUR)
            self._row = row

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("NpzImages supports contiguous slices images[i:j] only")
        start, stop, _ = index.indices(self.shape[0])
        stop = max(start, stop)
        self._seek(start)
        data = self._stream.read((stop - start) * self._row_bytes)
        if len(data) != (stop - start) * self._row_bytes:
            raise DataError(f"{self.path}: {self.member} ends early; the file is truncated, delete it and "
                            "download it again")
        self._row = stop
        rows = np.frombuffer(data, np.uint8).reshape((stop - start, *self._stored_shape[1:]))
        if rows.ndim == 3:
            return rows[:, None].copy()
        return np.ascontiguousarray(rows.transpose(0, 3, 1, 2))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def __getstate__(self) -> dict:  # open handles do not pickle; a copy reopens on first use
        state = dict(self.__dict__)
        state.update(_archive=None, _stream=None, _row=0)
        return state


def offline() -> bool:
    """True when an environment variable says not to touch the network."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes") for var in OFFLINE_ENV)


def _resolves(host: str, timeout: float) -> bool:
    """Whether ``host`` resolves within ``timeout`` s (urlopen's timeout does not cover DNS)."""
    result: list[bool] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def download(url: str, path: Path, md5: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Download ``url`` to ``path`` (temp file, md5 check, rename) or raise DataError within seconds."""
    fix = f"download {url} and put it at {path} (md5 {md5}), or point 'root' at the folder that holds it"
    if offline():
        raise DataError(f"{path} is missing and downloads are off ({'/'.join(OFFLINE_ENV)} is set): {fix}")
    host = urllib.parse.urlsplit(url).hostname or ""
    if not _resolves(host, timeout):
        raise DataError(f"{path} is missing and {host} cannot be reached (offline?): {fix}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(path, suffix=".part") as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
            actual = md5_file(tmp)
            if actual != md5:
                raise DataError(f"downloaded {url} has md5 {actual}, expected {md5}; try again later or {fix}")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DataError(f"{path} is missing and downloading {url} failed ({err}): {fix}") from None


def verify(path: Path, flag: str, size: int) -> str:
    """md5 of ``path``; DataError when it is not the official file."""
    expected = FLAGS[flag].md5[size]
    actual = md5_file(path)
    if actual != expected:
        raise DataError(
            f"{path}: md5 is {actual}, but the official {file_name(flag, size)} has md5 {expected}; the file is "
            f"corrupt or not the official release: delete it (it is downloaded again when online) or replace it "
            f"with {official_url(flag, size)}"
        )
    return actual


def _labels(raw: np.ndarray, flag: Flag, where: str) -> np.ndarray:
    raw = np.asarray(raw)
    if flag.task == "multilabel":
        if raw.ndim != 2 or raw.shape[1] != len(flag.classes):
            raise DataError(f"{where}: labels are {raw.shape}, expected [N, {len(flag.classes)}]")
        return raw.astype(np.float32)
    labels = raw.reshape(len(raw), -1)
    if labels.shape[1] != 1:
        raise DataError(f"{where}: labels are {raw.shape}, expected [N, 1]")
    return labels[:, 0].astype(np.int64)


def check(name: str, entry: Mapping[str, Any]) -> tuple[str, int]:
    """The entry's flag and file size (``ConfigError`` for ones MedMNIST does not have)."""
    flag_name = str(require(entry, "flag", name)).lower()
    if flag_name not in FLAGS:
        raise ConfigError(f"datasets.{name}.flag is {flag_name!r}; allowed: {', '.join(FLAGS)}")
    size = int(entry.get("npz_size", entry.get("size", 28)))
    if size not in SIZES:
        key = "npz_size" if "npz_size" in entry else "size"
        raise ConfigError(f"datasets.{name}.{key} is {size}; MedMNIST files exist for sizes "
                          f"{', '.join(map(str, SIZES))} (set npz_size to pick the file and size for the cache)")
    return flag_name, size


@register_format("medmnist", required={"flag": f"one of {', '.join(FLAGS)}",
                                       "root": "the folder holding the MedMNIST .npz files"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read (and download when missing and online) one MedMNIST 2D ``.npz``."""
    flag_name, size = check(name, entry)
    flag = FLAGS[flag_name]
    root = Path(require(entry, "root", name))
    path = root / file_name(flag_name, size)
    if not path.exists():
        download(official_url(flag_name, size), path, flag.md5[size])
    checksum = verify(path, flag_name, size)
    try:
        with np.load(path) as npz:
            labels = {s: _labels(npz[f"{s}_labels"], flag, f"{path} {s}_labels") for s in SPLITS}
        splits = {s: (NpzImages(path, f"{s}_images.npy"), labels[s]) for s in SPLITS}
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable MedMNIST file ({err}); delete it and download "
                        f"{official_url(flag_name, size)} again") from None
    for split, (images, split_labels) in splits.items():
        if images.shape[1] != flag.channels or len(images) != len(split_labels):
            raise DataError(f"{path}: {split} has images {images.shape} and {len(split_labels)} labels; "
                            f"expected {flag.channels} channel(s) and one label per image")
    return RawDataset(
        splits=splits,
        task=flag.task,
        class_names=list(flag.classes),
        source=str(path),
        checksum=checksum,
        attributes={"medmnist_flag": flag_name, "medmnist_file_size": size,
                    "split_policy": "official MedMNIST splits"},
    )
