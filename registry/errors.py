"""The registry's errors: each says what is wrong and what to do, for the CLI to print."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation cannot be done (the message says why)."""


class PreserveError(RegistryError):
    """A run cannot be preserved (unknown id, not finished, missing artifacts)."""


class TamperedArchiveError(PreserveError):
    """An archived file no longer matches the sha256 recorded when it was preserved."""


class PromoteError(RegistryError):
    """An alias cannot be set (unknown version, verdict does not allow it)."""


class LoadError(RegistryError):
    """A `models:/...` URI cannot be resolved or loaded."""


class StoreError(RuntimeError):
    """The MLflow store cannot be used safely as configured."""
