"""Data stage: dataset sources -> HDF5 cache -> batch loaders.

Public API::

    FORMATS, RawDataset, read_dataset        # raw.py: the format registry and its contract
    register_format, check_entry             # a format's required keys; an entry checked without its files
    read_info, read_split, read_masks, CacheInfo, SCHEMA_VERSION   # cache.py: the HDF5 cache's schema
    build_cache, write_cache                 # streaming.py: its (resumable) writer
    DecodedImages                            # images.py: image files decoded when sliced
    subset_indices, segmentation_subset, train_subset   # fractions.py
    make_loader, BatchLoader, input_transform   # loader.py

A new dataset format is one module under ``formats/`` with one ``@register_format("name",
required={...})`` function; importing :mod:`medtransfer.data.formats` (below) registers them all.
"""

from medtransfer.data import formats  # noqa: F401  registers the built-in formats in FORMATS
from medtransfer.data.cache import SCHEMA_VERSION, CacheInfo, read_info, read_labels, read_masks, read_split
from medtransfer.data.fractions import segmentation_subset, subset_indices, train_subset
from medtransfer.data.images import DecodedImages
from medtransfer.data.loader import BatchLoader, input_transform, make_loader, normalisation
from medtransfer.data.raw import FORMATS, TASKS, RawDataset, check_entry, read_dataset, register_format
from medtransfer.data.streaming import build_cache, build_cache_resumable, write_cache

__all__ = [
    "normalisation",
    "input_transform",
    "FORMATS",
    "TASKS",
    "RawDataset",
    "read_dataset",
    "register_format",
    "check_entry",
    "SCHEMA_VERSION",
    "CacheInfo",
    "build_cache",
    "read_info",
    "read_split",
    "read_labels",
    "read_masks",
    "segmentation_subset",
    "train_subset",
    "subset_indices",
    "BatchLoader",
    "make_loader",
    "DecodedImages",
    "write_cache",
    "build_cache_resumable",
]
