"""Decoding image files: one at a time, many in threads, or lazily as an array-like.

:class:`DecodedImages` is the lazy "array-like" that :class:`~medtransfer.data.raw.RawDataset`
allows as a split's images, for sources too large to hold in memory (CheXpert's 224k
radiographs): ``images[i:j]`` decodes and resizes files i..j-1 in parallel threads (PIL and
pydicom release the GIL while decoding and resizing) and returns uint8 [j-i, C, S, S].
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from medtransfer.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
}


def available_cores() -> int:
    """Cores this process may run on (a SLURM or taskset allocation, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_decode_threads() -> int:
    """Decoding threads when config gives no ``workers``: the usable cores plus one. PIL releases
    the GIL while it decodes and resizes, but not while it parses headers or while the writer
    thread is in h5py; the extra thread fills those gaps (measured on 2 cores: JPEG 1.73x -> 1.92x,
    PNG 1.76x -> 1.84x over a one-process loop; BENCHMARKS.md)."""
    return available_cores() + 1


def load_image(path: str | Path, size: int, channels: int, resize: str = "bilinear") -> np.ndarray:
    """One image file -> uint8 [channels, size, size], resized with PIL (no crop)."""
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit gray (common for X-rays): scale to 8 bits instead of clipping at 255
            data = np.asarray(img, dtype=np.float64) / 257.0
            img = Image.fromarray(np.clip(np.rint(data), 0, 255).astype(np.uint8), mode="L")
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), PIL_FILTERS[resize])
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def load_images(paths: Sequence[str | Path], size: int, channels: int, resize: str, workers: int | None,
                describe: Sequence[str] | None = None, desc: str = "images") -> np.ndarray:
    """Decode and resize ``paths`` in parallel -> uint8 [N, channels, size, size].

    Threads suffice: PIL releases the GIL while decoding and resizing. ``describe[i]`` names the
    item in error messages (e.g. "labels.csv row 12"); by default the path itself.
    """
    out = np.empty((len(paths), channels, size, size), np.uint8)

    def work(i: int) -> None:
        try:
            out[i] = load_image(paths[i], size, channels, resize)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            what = f"{describe[i]}: image {paths[i]}" if describe is not None else f"image {paths[i]}"
            raise DataError(f"{what} cannot be read ({err}); fix or remove it") from None

    workers = workers or default_decode_threads()
    if workers == 1:
        for i in tqdm(range(len(paths)), desc=desc, unit="img"):
            work(i)
        return out
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(work, range(len(paths)), chunksize=64), total=len(paths), desc=desc, unit="img"):
            pass
    return out


Decoder = Callable[[Path, int, int, str], np.ndarray]
"""``decode(path, size, channels, resize) -> uint8 [channels, size, size]``; raises OSError or
ValueError for an unreadable file (as :func:`load_image`)."""


class LazyDecoded:
    """What the array-likes decoded when sliced share: ``np.asarray`` reads them whole, ``close``
    ends their decoding threads, and a pickled copy (a loader worker, a resumed writer) leaves
    the threads and locks behind and makes its own (``_setup``, which ``__init__`` also calls)."""

    _pool: ThreadPoolExecutor | None
    #: attributes a pickled copy does not carry (``_setup`` makes them again)
    _transient: tuple[str, ...] = ("_pool",)

    def _setup(self) -> None:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __getstate__(self) -> dict:  # a thread pool or lock does not pickle
        return {k: v for k, v in self.__dict__.items() if k not in self._transient}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()


class DecodedImages(LazyDecoded):
    """Image files as a uint8 [N, C, size, size] array-like, decoded when sliced.

    Args:
        paths: one file per image.
        size, channels, resize: output size (square, no crop), 1 or 3 channels, PIL filter name.
        workers: decoding threads (default :func:`default_decode_threads`).
        describe: ``describe[i]`` names image i in error messages (e.g. ``"train.csv row 12"``).
        decode: the decoder (default :func:`load_image`: PNG, JPEG, ...).
    """

    def __init__(self, paths: Sequence[str | Path], size: int, channels: int, resize: str = "bilinear", *,
                 workers: int | None = None, describe: Sequence[str] | None = None,
                 decode: Decoder | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.size, self.channels, self.resize = int(size), int(channels), resize
        self.describe = list(describe) if describe is not None else None
        if self.describe is not None and len(self.describe) != len(self.paths):
            raise ValueError("describe needs one entry per path")
        self.decode = decode or load_image
        self.workers = int(workers) if workers else default_decode_threads()
        self.shape = (len(self.paths), self.channels, self.size, self.size)
        self.dtype = np.dtype(np.uint8)
        self._setup()

    _transient = ("_pool", "_pool_lock")

    def _setup(self) -> None:
        self._pool = None
        self._pool_lock = threading.Lock()  # slices may be read from several threads at once

    def __len__(self) -> int:
        return self.shape[0]

    def subset(self, indices: Sequence[int] | np.ndarray) -> DecodedImages:
        """The images at ``indices``, still lazy."""
        indices = np.asarray(indices, np.int64)
        return DecodedImages([self.paths[i] for i in indices], self.size, self.channels, self.resize,
                             workers=self.workers, decode=self.decode,
                             describe=None if self.describe is None else [self.describe[i] for i in indices])

    def _rows(self, index: Any) -> Sequence[int]:
        if isinstance(index, slice):
            return range(*index.indices(len(self)))
        rows = np.asarray(index)
        if rows.ndim == 1 and rows.dtype == np.bool_ and len(rows) == len(self):
            rows = np.flatnonzero(rows)  # a mask, as numpy takes it
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or len(rows) == 0):
            raise TypeError("DecodedImages takes an int, a slice, a boolean mask or a 1-d array of indices")
        return [int(i) for i in rows]

    def _load(self, i: int) -> np.ndarray:
        try:
            return self.decode(self.paths[i], self.size, self.channels, self.resize)
        except (OSError, ValueError, DataError) as err:
            what = f"{self.describe[i]}: image {self.paths[i]}" if self.describe else f"image {self.paths[i]}"
            raise DataError(f"{what} cannot be read ({err}); fix or remove it") from None

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, (int, np.integer)):  # one image [C, S, S]; IndexError past the end ends iteration
            if not -len(self) <= index < len(self):
                raise IndexError(f"image {index} of {len(self)}")
            return self._load(int(index) % len(self))
        rows = self._rows(index)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)

        def work(k: int) -> None:
            out[k] = self._load(rows[k])

        if len(rows) < 2:
            for k in range(len(rows)):
                work(k)
        else:  # through the pool even for one worker: slices read at once still share `workers` threads
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
            for _ in self._pool.map(work, range(len(rows))):  # re-raises the first error
                pass
        return out

