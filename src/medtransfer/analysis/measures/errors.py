"""What the similarity measures raise and warn: torch-free, so callers can catch them without the numerics."""

from __future__ import annotations

from medtransfer.errors import MedtransferError


class SimilarityInputError(MedtransferError, ValueError):
    """The activations cannot be compared as given (shape, size, NaN/inf)."""


class UndefinedSimilarityError(SimilarityInputError):
    """The measure is mathematically undefined for these activations; the message says what to do."""


class InflatedCorrelationWarning(UserWarning):
    """Too many directions for the number of data points: top canonical correlations are inflated."""
