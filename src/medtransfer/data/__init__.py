"""Data stage: dataset sources -> HDF5 cache -> batch loaders.

Public API::

    FORMATS, RawDataset, read_dataset        # formats.py: the format registry and its contract
    register_format, check_entry             # a format's required keys; an entry checked without its files
    build_cache, read_info, read_split, read_masks, CacheInfo, SCHEMA_VERSION   # cache.py
    subset_indices, segmentation_subset, train_subset   # fractions.py
    make_loader, BatchLoader                 # loader.py

A new dataset format is one module with one ``@register_format("name", required={...})``
function, imported below so that it registers itself.
"""

from medtransfer.data.cache import (SCHEMA_VERSION, CacheInfo, build_cache, read_info, read_labels, read_masks,
                                    read_split)
from medtransfer.data.formats import FORMATS, TASKS, RawDataset, check_entry, read_dataset, register_format
from medtransfer.data.fractions import segmentation_subset, subset_indices, train_subset
from medtransfer.data.loader import BatchLoader, make_loader, normalisation
from medtransfer.data.streaming import DecodedImages, build_cache_resumable, write_cache

# built-in formats (each registers itself in FORMATS on import)
from medtransfer.data import synthetic, medmnist, folders, arrays  # noqa: E402,F401  isort: skip
from medtransfer.data import chexpert, aptos, isic, pcam, cbis_ddsm  # noqa: E402,F401  isort: skip
from medtransfer.data import masks  # noqa: E402,F401  isort: skip

__all__ = [
    "normalisation",
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
