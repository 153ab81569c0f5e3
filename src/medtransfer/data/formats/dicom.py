"""Reading DICOM files for the formats that ship them (``siim_acr``, ``rsna_pe``): pydicom is
an optional extra (``pip install 'medtransfer[dicom]'``), imported only when a DICOM dataset is read.

A decoder here raises ``ValueError`` for a file it cannot use (not DICOM, no pixel data, a
compressed transfer syntax without a decoder plugin, more than one frame); the lazy arrays wrap
it in a DataError naming the file and the CSV row it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.errors import DataError

INSTALL = "pip install 'medtransfer[dicom]'"


def pydicom_module(where: str = "") -> Any:
    """The ``pydicom`` module (>= 3.0), or a DataError saying how to install it."""
    try:
        import pydicom
        import pydicom.pixels  # pydicom 3.0 pixel API; absent before 3.0
    except ImportError:
        raise DataError(f"{where + ': ' if where else ''}reading DICOM files needs pydicom >= 3.0: {INSTALL}") from None
    return pydicom


def read_header(path: str | Path) -> Any:
    """A DICOM file's data elements with the pixel data left on disk (``defer_size``: the
    elements are parsed, large values are read only if asked for), so that ``"PixelData" in ds``
    tells whether the file has an image without reading it. ValueError if it is not DICOM."""
    pydicom = pydicom_module()
    try:
        return pydicom.dcmread(path, defer_size=1024)
    except (pydicom.errors.InvalidDicomError, EOFError, KeyError, TypeError) as err:
        raise ValueError(f"not a DICOM file ({err})") from None


def pixels(path: str | Path) -> tuple[Any, np.ndarray]:
    """``(dataset, pixel array)`` of a one-frame DICOM file; ValueError naming what is wrong."""
    pydicom = pydicom_module()
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, EOFError, KeyError, TypeError) as err:
        raise ValueError(f"not a DICOM file ({err})") from None
    if "PixelData" not in ds:
        raise ValueError("the DICOM file has no pixel data (no (7FE0,0010) element)")
    try:
        array = ds.pixel_array
    except (AttributeError, KeyError, RuntimeError, NotImplementedError, ValueError) as err:
        raise ValueError(f"pydicom cannot decode its pixel data ({err}); a compressed transfer syntax needs a "
                         "decoder plugin, e.g. pip install pylibjpeg pylibjpeg-libjpeg") from None
    if array.ndim != 2:
        raise ValueError(f"expected one 2-D gray frame, got a pixel array of shape {array.shape}")
    return ds, array


def gray_uint8(path: str | Path) -> np.ndarray:
    """A radiograph's pixels as uint8 [H, W], bright = dense (MONOCHROME1 is inverted).

    8-bit images without a rescale (SIIM-ACR's) keep their stored values, as the papers' loaders
    read them (``ds.pixel_array`` as uint8: Hosseinzadeh Taher et al.'s ``PNEDataset`` in
    MR-HosseinzadehTaher/BenchmarkTransferLearning, ``Version1/dataloader.py``); deeper images go
    through the modality and VOI LUTs and are scaled by their own min and max to 0..255.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds, array = pixels(path)
    if array.dtype == np.uint8 and "RescaleSlope" not in ds and "WindowCenter" not in ds:
        out = array
    else:
        values = apply_voi_lut(apply_modality_lut(array, ds), ds).astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


def hounsfield(path: str | Path) -> np.ndarray:
    """A CT slice in Hounsfield units, float64 [H, W]: stored value x RescaleSlope + RescaleIntercept
    (the modality LUT)."""
    from pydicom.pixels import apply_modality_lut

    ds, array = pixels(path)
    return np.asarray(apply_modality_lut(array, ds), dtype=np.float64)


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """A CT window: HU in [center - width/2, center + width/2] mapped linearly to 0..255 (uint8),
    values outside clipped to the ends."""
    low, high = center - width / 2.0, center + width / 2.0
    scaled = (np.clip(hu, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)
