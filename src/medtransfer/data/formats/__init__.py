"""The built-in dataset formats, one module each; importing this package registers them all in
:data:`medtransfer.data.raw.FORMATS`.

A new format is one module here with one ``@register_format("name", required={...})`` reader
(:mod:`medtransfer.data.raw` has the contract), added to the imports below. What several
formats share is public in :mod:`medtransfer.data.formats.common` (entry keys, checksums, label
tables) and :mod:`medtransfer.data.images` (decoding image files).
"""

from medtransfer.data.formats import synthetic, medmnist, arrays, folders  # noqa: F401  isort: skip
from medtransfer.data.formats import chexpert, aptos, isic, pcam, cbis_ddsm  # noqa: F401  isort: skip
from medtransfer.data.formats import masks  # noqa: F401  isort: skip
from medtransfer.data.formats import siim_acr, rsna_pe, busi, ddti  # noqa: F401  isort: skip
from medtransfer.data.formats import lists, chestxray14, isic2018, eyepacs  # noqa: F401  isort: skip
