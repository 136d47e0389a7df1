"""Running the `lookuplens` command line in a subprocess, as a user does (importable from
every test folder: pytest puts this folder, which holds the root conftest.py, on
sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(
    *args: str, cwd: Path | None = None, columns: int = 100, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m lookuplens.cli ARGS`` with one thread, no hub, and a terminal `columns`
    wide (rich wraps error lines at that width)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": str(columns),
    }
    return subprocess.run(
        [sys.executable, "-m", "lookuplens.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
