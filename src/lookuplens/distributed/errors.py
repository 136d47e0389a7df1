"""Typed exceptions of the Ray backend (subclasses of `lookuplens.errors`)."""

from __future__ import annotations

from lookuplens.errors import LookuplensError, UserError


class RayUnavailableError(UserError):
    """The ``ray`` package is not installed (the backend is an optional extra)."""


class ClusterError(UserError):
    """The Ray cluster cannot be reached, or lacks the resources the workers ask for."""


class ShardFailedError(LookuplensError):
    """A shard failed for good: its worker raised, or it died on every attempt."""
