"""Typed exceptions. Every message says what is wrong and how to fix it.

The library raises these; only the CLI turns them into one line and exit code 2.
"""

from __future__ import annotations


class LookuplensError(Exception):
    """Base class of every error lookuplens raises on purpose."""


class UserError(LookuplensError):
    """Bad input from the user (a path, an option, a corpus). The CLI exits with code 2."""


class ModelLoadError(UserError):
    """A model or tokenizer could not be loaded."""


class UnsupportedArchitectureError(UserError):
    """The model's architecture has no entry in the architecture table."""


class ContextLengthError(UserError):
    """An input is longer than the model's context window."""


class CorpusError(UserError):
    """A corpus source is missing, empty, or unreadable."""


class RunDirError(UserError):
    """A run directory is missing, from another format version, or inconsistent."""


class TableSchemaError(RunDirError):
    """A table lacks a required column of the run directory format, or has an incompatible type."""


class LookuplensWarning(UserWarning):
    """Warnings issued by lookuplens itself (tests turn them into errors)."""
