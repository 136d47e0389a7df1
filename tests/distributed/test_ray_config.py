"""Ray backend settings and the missing-Ray error: these run without Ray installed."""

from __future__ import annotations

import sys

import pytest

from lookuplens.corpus import CorpusSpec
from lookuplens.distributed import RayConfig, RayUnavailableError, scan_corpus_ray
from lookuplens.scan import ScanConfig


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"cpus_per_worker": 0},
        {"gpus_per_worker": 1.5},
        {"gpus_per_worker": 0},
        {"max_restarts": -1},
        {"max_attempts": 0},
        {"inflight_per_worker": 0},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RayConfig(**kwargs)  # type: ignore[arg-type]


def test_fractional_and_whole_gpus_are_accepted() -> None:
    assert RayConfig(gpus_per_worker=0.25).gpus_per_worker == 0.25
    assert RayConfig(gpus_per_worker=2).gpus_per_worker == 2


def test_importing_the_package_does_not_import_ray() -> None:
    import subprocess

    code = "import sys, lookuplens.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_ray_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(RayUnavailableError, match=r"lookuplens\[ray\]"):
        scan_corpus_ray("gpt2", [(0, 0)], CorpusSpec("storyworld"), ScanConfig())
