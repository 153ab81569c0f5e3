"""Writing the HDF5 cache (:mod:`medtransfer.data.cache` has its schema): :func:`build_cache` reads a
dataset with its format and :func:`write_cache` writes it, resumably.

:func:`write_cache` works chunk by chunk, for datasets too large to hold in memory (CheXpert's
224k radiographs, PCam's 327k patches), reading the next chunks (decoding them, for a
:class:`~medtransfer.data.images.DecodedImages`) while the current one is written, with one
progress bar in images. It works in ``.{name}.partial`` beside the output and records after every
chunk how far it got (plus the running pixel sums for the train mean/std), so a killed job
continues where it stopped when run again with the same source and config. Only when every split
is written is the file renamed to its final name; a partial file never looks finished.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from medtransfer.data.cache import CHUNK_BYTES, SCHEMA_VERSION, resize_uint8
from medtransfer.data.raw import SPLITS, RawDataset, read_dataset
from medtransfer.errors import ConfigError, DataError

log = logging.getLogger("medtransfer")

# entry keys that change how fast a cache is written, not what it holds: a resume ignores them
SPEED_KEYS = ("workers",)

# chunks being read while one is written (memory: READ_AHEAD + 1 chunks of uint8 pixels)
READ_AHEAD = 2


def build_cache(name: str, entry: Mapping[str, Any], out_path: str | Path, *, progress: bool = False) -> None:
    """Read dataset ``name`` from its config ``entry`` and write its HDF5 cache to ``out_path``.

    Images are resized to ``entry["size"]`` when given and different (mode ``entry["resize"]``,
    default bilinear), converted in chunks of ~64 MB so the source never sits in memory whole.
    The writer is :func:`write_cache`: one implementation of the schema, which also resumes a
    conversion that was killed.
    """
    build_cache_resumable(name, entry, out_path, progress=progress)


# --- the resumable writer --------------------------------------------------------------------------

# glibc's mallopt parameter, and the size from which an allocation gets pages of its own
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20
_heap_bounded = False


def bound_heap_growth() -> None:
    """Make glibc give every allocation of 4 MiB or more (each chunk of pixels) pages of its own,
    returned to the system when freed.

    By default glibc raises that threshold to the size of the largest block freed so far (up to
    32 MiB), so after the first chunk every chunk is carved from the heaps of the threads that
    decode it, and their fragments stay resident: converting 4,000 images at 224 px peaked 47 MiB
    above 1,000 (8,000: 51 MiB), with this setting within the ±10 MiB run-to-run noise
    (BENCHMARKS.md, "Conversion memory"). Process-wide and permanent (glibc cannot restore the
    sliding threshold), so it is set once, by the conversion; nothing on other C libraries."""
    global _heap_bounded
    if _heap_bounded or not sys.platform.startswith("linux"):
        return
    _heap_bounded = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def partial_path(out_path: str | Path) -> Path:
    """Where :func:`write_cache` works before the rename: ``.{name}.partial`` beside the output."""
    out_path = Path(out_path)
    return out_path.parent / f".{out_path.name}.partial"


def _cache_size(name: str, entry: Mapping[str, Any], raw: RawDataset) -> int:
    height, width = raw.image_size
    if entry.get("size") is not None:
        return int(entry["size"])
    if height != width:
        raise ConfigError(f"datasets.{name}: images are {height}x{width}; set 'size' to resize them to a square")
    return height


def fingerprint(name: str, entry: Mapping[str, Any], raw: RawDataset, size: int, mode: str) -> str:
    """md5 of everything that decides the cache's content; a partial file is resumed only when equal."""
    labels = {}
    for split in SPLITS:
        images, split_labels = raw.splits[split]
        array = np.ascontiguousarray(split_labels)
        labels[split] = [int(images.shape[0]), str(array.dtype), list(array.shape),
                         hashlib.md5(array.tobytes()).hexdigest()]
    content = {
        "schema_version": SCHEMA_VERSION, "name": name, "size": size, "resize": mode,
        "entry": {k: v for k, v in entry.items() if k not in SPEED_KEYS},
        "task": raw.task, "class_names": list(raw.class_names), "source": raw.source,
        "checksum": raw.checksum, "channels": raw.channels, "labels": labels,
        "attributes": raw.attributes, "masks": raw.masks is not None,
    }
    return hashlib.md5(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _open(partial: Path, stamp: str, resume: bool) -> tuple[h5py.File, bool]:
    """(file, fresh): the partial file to continue, or a new one."""
    if partial.exists():
        if resume:
            try:
                h5 = h5py.File(partial, "r+")
            except OSError as err:  # killed while HDF5 metadata was being written
                log.warning("cannot resume %s (%s); starting over", partial, err)
            else:
                if h5.attrs.get("resume_fingerprint") == stamp:
                    return h5, False
                h5.close()
                log.info("%s was written for another source or config; starting over", partial)
        partial.unlink()
    return h5py.File(partial, "w"), True


def _create(h5: h5py.File, raw: RawDataset, size: int, stamp: str) -> None:
    channels = raw.channels
    for split in SPLITS:
        images, labels = raw.splits[split]
        n = int(images.shape[0])
        group = h5.create_group(split)
        group.create_dataset("images", shape=(n, channels, size, size), dtype=np.uint8,
                             chunks=(1, channels, size, size) if n else None)
        group.create_dataset("labels", data=np.asarray(labels))
        if raw.masks is not None:
            group.create_dataset("masks", shape=(n, 1, size, size), dtype=np.uint8,
                                 chunks=(1, 1, size, size) if n else None)
        if raw.groups is not None:  # patients: optional, so caches without them read as before
            group.create_dataset("groups", data=np.asarray([str(g) for g in raw.groups[split]], dtype=object),
                                 dtype=h5py.string_dtype())
        group.attrs["rows_written"] = 0
    h5["train"].attrs["pixel_sum"] = np.zeros(channels, np.int64)
    h5["train"].attrs["square_sum"] = np.zeros(channels, np.int64)
    h5.attrs["resume_fingerprint"] = stamp  # last: a file without it is never resumed
    h5.flush()


def write_cache(name: str, entry: Mapping[str, Any], raw: RawDataset, out_path: str | Path, *,
                resume: bool = True, progress: bool = True, chunk_images: int | None = None) -> None:
    """Write ``raw`` to the HDF5 cache ``out_path`` (the schema of :mod:`medtransfer.data.cache`).

    Images are read ``chunk_images`` at a time (default: ~64 MB of float pixels, as ``build_cache``),
    resized to ``entry["size"]`` (mode ``entry["resize"]``) unless already that size, and written;
    the next chunks are read (decoded, for :class:`DecodedImages`) while the current one is written.
    With ``resume`` a partial file left by an interrupted run with the same source, labels and
    config (:func:`fingerprint`) is continued; otherwise it is discarded.
    """
    bound_heap_growth()
    out_path = Path(out_path)
    size = _cache_size(name, entry, raw)
    mode = entry.get("resize", "bilinear")
    channels = raw.channels
    height, width = raw.image_size
    step = chunk_images or max(1, CHUNK_BYTES // (4 * channels * max(height * width, size * size)))
    partial = partial_path(out_path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    stamp = fingerprint(name, entry, raw, size, mode)
    h5, fresh = _open(partial, stamp, resume)
    try:
        if fresh:
            _create(h5, raw, size, stamp)
        done = sum(int(h5[s].attrs["rows_written"]) for s in SPLITS)
        total = sum(int(raw.splits[s][0].shape[0]) for s in SPLITS)
        if done:
            log.info("%s: resuming %s at %d of %d images", name, partial, done, total)
        with tqdm(total=total, initial=done, unit="img", desc=name, disable=not progress) as bar, \
                ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="prefetch") as reader:
            for split in SPLITS:
                masks = None if raw.masks is None else raw.masks[split]
                _write_split(h5[split], raw.splits[split][0], split == "train", step, size, mode, reader, bar,
                             masks=masks, num_classes=len(raw.class_names))
        train = h5["train"]
        count = max(1, int(train["images"].shape[0]) * size * size)
        mean = train.attrs["pixel_sum"] / count
        std = np.sqrt(np.maximum(train.attrs["square_sum"] / count - mean**2, 0.0))
        if entry.get("folds") is not None and "pool" not in h5:
            write_pool(h5, name, entry, raw)
        for split in SPLITS:
            del h5[split].attrs["rows_written"]
        del train.attrs["pixel_sum"], train.attrs["square_sum"], h5.attrs["resume_fingerprint"]
        h5.attrs.update({
            "name": name,
            "format": str(entry.get("format", "")),
            "task": raw.task,
            "class_names": json.dumps(list(raw.class_names)),
            "source": raw.source,
            "source_checksum": raw.checksum,
            "image_size": size,
            "channels": channels,
            "mean": mean / 255.0,
            "std": std / 255.0,
            "schema_version": SCHEMA_VERSION,
            "attributes": json.dumps(raw.attributes, default=str),
        })
    finally:
        h5.close()
        lazy = [images for images, _ in raw.splits.values()] + list((raw.masks or {}).values())
        for images in lazy:
            close = getattr(images, "close", None)
            if callable(close):
                close()
    os.replace(partial, out_path)


def _write_split(group: h5py.Group, images: Any, is_train: bool, step: int, size: int, mode: str,
                 reader: ThreadPoolExecutor, bar: tqdm, masks: Any = None, num_classes: int = 0) -> None:
    target = group["images"]
    n = int(target.shape[0])
    starts = list(range(int(group.attrs["rows_written"]), n, step))
    # READ_AHEAD chunks are read at once: their decode tasks share one queue, so a decoder that
    # finishes its share of one chunk starts on the next instead of idling at the boundary
    pending = deque(reader.submit(_read, images, start, min(start + step, n), masks) for start in starts[:READ_AHEAD])
    for k, start in enumerate(starts):
        stop = min(start + step, n)
        block, mask_block = pending.popleft().result()
        if k + READ_AHEAD < len(starts):
            ahead = starts[k + READ_AHEAD]
            pending.append(reader.submit(_read, images, ahead, min(ahead + step, n), masks))
        block = resize_uint8(block, size, mode)
        if block.shape != (stop - start, *target.shape[1:]):
            raise DataError(f"images {start}..{stop - 1} of {group.name} came as {block.shape}, "
                            f"expected {(stop - start, *target.shape[1:])}")
        if mask_block is not None:  # class ids: nearest neighbour, never interpolated between classes
            mask_block = resize_uint8(mask_block, size, "nearest")
            if mask_block.shape != (stop - start, 1, size, size) or int(mask_block.max(initial=0)) >= num_classes:
                raise DataError(f"masks {start}..{stop - 1} of {group.name} came as {mask_block.shape} with class "
                                f"ids up to {int(mask_block.max(initial=0))}, expected {(stop - start, 1, size, size)} "
                                f"below {num_classes}")
            group["masks"][start:stop] = mask_block
        target[start:stop] = block
        if is_train:
            pixel_sum, square_sum = channel_sums(block)
            group.attrs["pixel_sum"] = group.attrs["pixel_sum"] + pixel_sum
            group.attrs["square_sum"] = group.attrs["square_sum"] + square_sum
        group.attrs["rows_written"] = stop  # after the pixels: a resume never skips unwritten rows
        group.file.flush()
        bar.update(stop - start)


def write_pool(h5: h5py.File, name: str, entry: Mapping[str, Any], raw: RawDataset) -> None:
    """The ``pool`` group of a dataset with folds (:mod:`medtransfer.data.folds`): ``images``, a
    virtual dataset over train, val and test images in that order (no copy; its source is the file
    itself, '.', so it survives the rename), their ``labels``, ``groups`` when the format records
    patients, and ``folds`` int8 [N, K] (each image's role in each fold)."""
    from medtransfer.data.folds import pool_roles

    if raw.task in ("segmentation", "unlabeled"):
        raise ConfigError(f"datasets.{name}.folds: folds are for classification datasets, not {raw.task}")
    labels = np.concatenate([np.asarray(raw.splits[s][1]) for s in SPLITS])
    groups = None if raw.groups is None else np.concatenate([np.asarray(raw.groups[s]).astype(str) for s in SPLITS])
    names = [n for s in SPLITS for n in raw.names[s]] if raw.names is not None else decoded_file_names(raw, entry)
    roles = pool_roles(name, entry, labels, groups, names)
    shape = h5["train"]["images"].shape[1:]
    layout = h5py.VirtualLayout(shape=(len(labels), *shape), dtype=np.uint8)
    start = 0
    for split in SPLITS:
        n = int(h5[split]["images"].shape[0])
        if n:
            layout[start:start + n] = h5py.VirtualSource(".", f"{split}/images", shape=(n, *shape))
        start += n
    pool = h5.create_group("pool")
    pool.create_virtual_dataset("images", layout)
    pool.create_dataset("labels", data=labels)
    if groups is not None:
        pool.create_dataset("groups", data=groups.astype(object), dtype=h5py.string_dtype())
    pool.create_dataset("folds", data=roles)
    pool.attrs["folds"] = json.dumps({"entry": dict(entry["folds"]), "order": "train, val, test rows of the cache",
                                      "roles": {"train": 0, "val": 1, "test": 2, "unused": -1}}, default=str)


def decoded_file_names(raw: RawDataset, entry: Mapping[str, Any]) -> list[str] | None:
    """Each image's file path relative to the entry's ``root``, in train, val, test order, where
    every split decodes its images from files (:class:`~medtransfer.data.images.DecodedImages`:
    every image-file format); None otherwise. What fold files (``folds: {files}``) are matched
    against when the format records no names of its own."""
    from medtransfer.data.images import DecodedImages

    root = os.path.abspath(entry.get("root", "."))
    names: list[str] = []
    for split in SPLITS:
        images = raw.splits[split][0]
        if not isinstance(images, DecodedImages):
            return None
        names += [os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/") for path in images.paths]
    return names


def channel_sums(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel sums of pixel values and of their squares (int64 [C] each) of uint8
    [N, C, H, W]. Squares are taken in uint16 (255² = 65025 still fits), so nothing is widened to
    int64 before the reduction: 2–5× cheaper than a 256-bin histogram per channel, which matters
    because this runs on the writer thread while the decoders want both cores."""
    values = np.moveaxis(block, 1, 0).reshape(block.shape[1], -1)
    squares = values.astype(np.uint16)
    squares *= squares
    return values.sum(axis=1, dtype=np.int64), squares.sum(axis=1, dtype=np.int64)


def _read(images: Any, start: int, stop: int, masks: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    return np.asarray(images[start:stop]), None if masks is None else np.asarray(masks[start:stop])


def build_cache_resumable(name: str, entry: Mapping[str, Any], out_path: str | Path, *,
                          resume: bool = True, progress: bool = True) -> None:
    """:func:`build_cache`, written by :func:`write_cache` (resumable)."""
    write_cache(name, entry, read_dataset(name, entry), out_path, resume=resume, progress=progress)
