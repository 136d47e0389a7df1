"""The public API: ``from lookuplens import run_pipeline, RunConfig, RunDir, load_model``
and the stage functions, imported lazily, so that ``import lookuplens`` stays cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import lookuplens


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_lookuplens_imports_nothing_else() -> None:
    res = run(
        "import sys, lookuplens\n"
        "heavy = [m for m in ('torch', 'transformers', 'pyarrow', 'numpy') if m in sys.modules]\n"
        "ours = sorted(m for m in sys.modules if m.startswith('lookuplens.'))\n"
        "print(heavy, ours)"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[] []"


def test_the_main_names_import_from_the_package() -> None:
    res = run(
        "from lookuplens import run_pipeline, RunConfig, RunDir, load_model\n"
        "import lookuplens.pipeline, lookuplens.store, lookuplens.model\n"
        "assert run_pipeline is lookuplens.pipeline.run_pipeline\n"
        "assert RunConfig is lookuplens.pipeline.RunConfig\n"
        "assert RunDir is lookuplens.store.RunDir\n"
        "assert load_model is lookuplens.model.load_model\n"
        "print(RunConfig().model_source != '')"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True"


@pytest.mark.parametrize("name", [n for n in lookuplens.__all__ if n != "__version__"])
def test_every_public_name_is_its_modules_object(name: str) -> None:
    module = importlib.import_module(lookuplens._EXPORTS[name])
    assert getattr(lookuplens, name) is getattr(module, name)
    assert name in dir(lookuplens)


def test_all_lists_the_exports_and_the_stages() -> None:
    assert set(lookuplens.__all__) == {"__version__", *lookuplens._EXPORTS}
    stages = {"find_neurons", "scan_corpus", "build_examples", "attribute_examples"}
    stages |= {"verify_run", "explain_run", "score_stage", "write_report"}
    assert stages <= set(lookuplens.__all__)
    assert {"explain_prediction", "WhyConfig"} <= set(lookuplens.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        lookuplens.nothing_here  # noqa: B018
    with pytest.raises(ImportError):
        exec("from lookuplens import nothing_here", {})
