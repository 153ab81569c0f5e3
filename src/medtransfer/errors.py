"""Errors a user can cause. The CLI prints their message (one line that names the file or key
and the fix) and exits with status 2 instead of a traceback."""


class MedtransferError(Exception):
    """Base class: a problem with the user's config, data or weights, not a bug."""


class ConfigError(MedtransferError):
    """A config key has a wrong or missing value."""


class DataError(MedtransferError):
    """A dataset file is missing, corrupt, of the wrong checksum or of another schema version."""


class WeightsError(MedtransferError):
    """Pretrained weights are missing, unreachable or do not fit the model."""
