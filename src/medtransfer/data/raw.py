"""The format registry and its contract: how a config entry's source becomes a :class:`RawDataset`.

A format is one function ``read(name, entry) -> RawDataset`` registered in :data:`FORMATS`
with a decorator, in a module of its own under :mod:`medtransfer.data.formats` (importing that
package registers them all), saying which keys its entries must have (and, optionally, a check
of their values that reads no file)::

    @register_format("myformat", required={"root": "the folder holding the files"})
    def read(name: str, entry: dict) -> RawDataset: ...

The config's allowed ``format:`` values are ``FORMATS.names()``. :func:`check_entry` checks an
entry without reading anything (the format, the required keys, the format's value check): the
workflow calls it for every dataset when the Snakefile loads, and :func:`read_dataset` again
before reading, so a bad entry stops ``snakemake -n`` with the message the job would give.
:func:`read_dataset` is the only way in: it dispatches on ``entry["format"]`` and checks what the
format returned, so every format gets the same guarantees (all of train/val/test, uint8
[N, C, H, W] images, labels matching the task).

Entry keys every format shares: ``format``, ``root`` (a folder; not needed for ``synthetic``),
``size`` (H = W of the cache; required, and registered so, by the formats that decode image
files, optional for those that hold arrays) and ``resize`` (``nearest``, ``bilinear`` (default),
``area``, ``bicubic``), used by :func:`medtransfer.data.streaming.build_cache`.

This module imports no format: the formats import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtransfer.errors import ConfigError, DataError
from medtransfer.registry import Registry

SPLITS = ("train", "val", "test")
#: ``unlabeled``: images without labels (labels all -1, no class names), a pretraining dataset for
#: the self-supervised methods only; never a target.
#: ``segmentation``: a mask per image (``RawDataset.masks``); labels say whether an image has any
#: foreground (1) or none (0), for splits and data fractions.
TASKS = ("binary", "multiclass", "ordinal", "multilabel", "unlabeled", "segmentation")
NO_LABEL = -1
RESIZE_MODES = ("nearest", "bilinear", "area", "bicubic")

FORMATS: Registry = Registry("dataset format")
#: format name -> {key: what it holds}: the keys every entry of that format must have
REQUIRED_KEYS: dict[str, dict[str, str]] = {}
#: format name -> check(name, entry) of an entry's values that needs no file (names, counts)
ENTRY_CHECKS: dict[str, Callable[[str, Mapping[str, Any]], None]] = {}


def register_format(name: str, *, required: Mapping[str, str] | None = None,
                    check: Callable[[str, Mapping[str, Any]], None] | None = None) -> Callable:
    """Register a ``read(name, entry)`` as dataset format ``name``; ``required`` maps the keys its
    entries must have to what each holds (the message of a missing one says it), ``check`` checks
    their values without reading a file."""

    def decorator(read: Callable) -> Callable:
        FORMATS.register(name)(read)
        REQUIRED_KEYS[name] = dict(required or {})
        if check is not None:
            ENTRY_CHECKS[name] = check
        return read

    return decorator


@dataclass
class RawDataset:
    """A dataset as a format reads it, before resizing and caching.

    ``splits`` maps each of ``train``, ``val``, ``test`` to ``(images, labels)``:

    - ``images``: uint8 [N, C, H, W], C = 1 (gray) or 3 (RGB). A numpy array, or any array-like
      with ``shape``, ``dtype``, ``len()`` and ``images[i:j]`` returning a numpy array
      (e.g. an ``h5py.Dataset`` or a lazy decoder): ``build_cache`` only reads it in slices,
      so a large source never has to sit in memory whole.
    - ``labels``: int64 [N] (binary, multiclass, ordinal: class index) or float32 [N, K]
      (multilabel: 1 positive, 0 negative, NaN uncertain/unknown).

    ``task`` is one of :data:`TASKS`; ``class_names`` has one name per class (per label for
    multilabel); ``source`` is the file or folder it came from; ``checksum`` the md5 of the
    source file, or a digest of the file list (folders) or of the generator parameters
    (synthetic). ``attributes`` holds provenance the cache records as well, e.g. how a
    missing validation split was made.

    ``masks`` (segmentation only): per split an array-like of uint8 [N, 1, H, W] class ids
    (0 = background, ``class_names`` name each id), the same N, H, W as the split's images; the
    cache resizes it with nearest neighbour. The labels of a segmentation dataset are int64 [N]:
    1 where the mask has any foreground, else 0.
    """

    splits: dict[str, tuple[Any, np.ndarray]]
    task: str
    class_names: list[str]
    source: str
    checksum: str
    attributes: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, Any] | None = None
    #: optional, per split: the patient (or other group) of each image, [N] str or int; the cache
    #: keeps it (``{split}/groups``) and ``folds: {k}`` keeps patients whole with it
    groups: dict[str, np.ndarray] | None = None
    #: optional, per split: each image's file path relative to the dataset's root (N strings),
    #: which fold files (``folds: {files}``) are matched against
    names: dict[str, list[str]] | None = None

    @property
    def channels(self) -> int:
        return int(self.splits["train"][0].shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        shape = self.splits["train"][0].shape
        return int(shape[2]), int(shape[3])


def check_entry(name: str, entry: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` for what is wrong with dataset ``name``'s config ``entry`` before any
    file is read: an unknown format or resize mode, a key its format requires, a value its format
    rejects. What only the data can tell (files, checksums) is left to the format's reader."""
    if "format" not in entry:
        raise ConfigError(f"datasets.{name}: missing key 'format'; allowed: {', '.join(FORMATS.names())}")
    try:
        FORMATS.get(entry["format"], key=f"datasets.{name}.format")
    except KeyError as err:
        raise ConfigError(str(err)) from None
    resize = entry.get("resize", "bilinear")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"datasets.{name}.resize is {resize!r}; allowed: {', '.join(RESIZE_MODES)}")
    for key in REQUIRED_KEYS.get(entry["format"], {}):
        require(entry, key, name)
    check = ENTRY_CHECKS.get(entry["format"])
    if check is not None:
        check(name, entry)


def read_dataset(name: str, entry: Mapping[str, Any]) -> RawDataset:
    """Read the dataset ``name`` described by its config ``entry`` with its registered format."""
    check_entry(name, entry)
    raw = FORMATS.get(entry["format"])(name, dict(entry))
    check_raw(name, raw)
    return raw


def check_raw(name: str, raw: RawDataset) -> None:
    """Raise ``DataError`` if a format broke the :class:`RawDataset` contract (a bug in the format)."""
    where = f"dataset {name!r} ({raw.source})"
    if raw.task not in TASKS:
        raise DataError(f"{where}: task {raw.task!r} is not one of {', '.join(TASKS)}")
    missing = [s for s in SPLITS if s not in raw.splits]
    if missing:
        raise DataError(f"{where}: split(s) {', '.join(missing)} missing")
    shape = None
    for split in SPLITS:
        images, labels = raw.splits[split]
        if images.dtype != np.uint8 or len(images.shape) != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"{where}: {split} images must be uint8 [N, 1|3, H, W], "
                            f"got {images.dtype} {tuple(images.shape)}")
        if shape is not None and tuple(images.shape[1:]) != shape:
            raise DataError(f"{where}: {split} images are {tuple(images.shape[1:])}, train {shape}")
        shape = tuple(images.shape[1:])
        if len(labels) != images.shape[0]:
            raise DataError(f"{where}: {split} has {images.shape[0]} images but {len(labels)} labels")
        if raw.task == "multilabel":
            if labels.dtype != np.float32 or labels.ndim != 2 or labels.shape[1] != len(raw.class_names):
                raise DataError(f"{where}: multilabel {split} labels must be float32 [N, {len(raw.class_names)}]")
        elif raw.task == "unlabeled":
            if labels.dtype != np.int64 or labels.ndim != 1 or (labels != NO_LABEL).any() or raw.class_names:
                raise DataError(f"{where}: unlabeled {split} labels must be int64 [N] of {NO_LABEL}, no class names")
        else:
            if labels.dtype != np.int64 or labels.ndim != 1:
                raise DataError(f"{where}: {split} labels must be int64 [N], got {labels.dtype} {labels.shape}")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(raw.class_names)):
                raise DataError(f"{where}: {split} labels outside 0..{len(raw.class_names) - 1}")
    if raw.task == "binary" and len(raw.class_names) != 2:
        raise DataError(f"{where}: a binary task needs 2 class names, got {raw.class_names}")
    if (raw.task == "segmentation") != (raw.masks is not None):
        raise DataError(f"{where}: a segmentation task comes with masks, and only it")
    if raw.masks is not None:
        check_masks(where, raw)
    for what, per_split in (("groups", raw.groups), ("names", raw.names)):
        for split in SPLITS if per_split is not None else ():
            if split not in per_split or len(per_split[split]) != len(raw.splits[split][1]):
                raise DataError(f"{where}: {what} must give one value per image of every split ({split})")


def check_masks(where: str, raw: RawDataset) -> None:
    """The masks of every split: uint8 [N, 1, H, W] beside images [N, C, H, W]; class ids below
    ``len(class_names)`` (checked here only for masks in memory: a lazy mask checks its file when
    it is decoded, naming it)."""
    if len(raw.class_names) < 2:
        raise DataError(f"{where}: segmentation needs >= 2 class names (background first), got {raw.class_names}")
    for split in SPLITS:
        images, labels = raw.splits[split]
        masks = raw.masks.get(split)
        if masks is None:
            raise DataError(f"{where}: {split} has images but no masks")
        expected = (int(images.shape[0]), 1, *map(int, images.shape[2:]))
        if masks.dtype != np.uint8 or tuple(masks.shape) != expected:
            raise DataError(f"{where}: {split} masks must be uint8 {expected} (one per image, the image's size), "
                            f"got {masks.dtype} {tuple(masks.shape)}")
        if isinstance(masks, np.ndarray) and masks.size and int(masks.max()) >= len(raw.class_names):
            raise DataError(f"{where}: {split} masks hold class id {int(masks.max())}, but only "
                            f"{len(raw.class_names)} classes are declared ({', '.join(raw.class_names)})")



def require(entry: Mapping[str, Any], key: str, name: str, hint: str = "") -> Any:
    """``entry[key]`` or a ConfigError naming ``datasets.{name}.{key}`` and (``hint``, else what
    the entry's format registered for the key) what it holds."""
    hint = hint or REQUIRED_KEYS.get(str(entry.get("format")), {}).get(key, "")
    if key not in entry or entry[key] is None:
        raise ConfigError(f"datasets.{name}: missing key '{key}'" + (f" ({hint})" if hint else ""))
    return entry[key]
