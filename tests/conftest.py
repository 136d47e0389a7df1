"""Shared fixtures: tiny random-weight models of every family, saved and reloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lookuplens.model.tiny import TINY_FAMILIES, build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(1)  # tiny models: threads only add overhead


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model per family (built once per test session)."""
    root = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny_model(f, root / f, seed=i) for i, f in enumerate(TINY_FAMILIES)}


@pytest.fixture(params=TINY_FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)
