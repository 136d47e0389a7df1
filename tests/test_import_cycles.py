"""No import cycle within lookuplens.explain and lookuplens.zoo, deferred imports counted
(scripts/check_import_cycles.py), and the checker finds the cycles it is meant to find."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_import_cycles.py"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "src"


@pytest.fixture(autouse=True)
def _source_tree() -> None:
    if not SCRIPT.is_file() or not (ROOT / "src" / "lookuplens").is_dir():
        pytest.skip("no source tree next to the tests")


def test_explain_and_zoo_have_no_import_cycle() -> None:
    res = check("--strict", "lookuplens.explain", "lookuplens.zoo")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no import cycle within lookuplens.explain, lookuplens.zoo" in res.stdout


def test_a_deferred_import_closing_a_cycle_is_found(tmp_path: Path) -> None:
    src = write(
        tmp_path,
        {
            "lookuplens/__init__.py": "",
            "lookuplens/zoo/__init__.py": "",
            "lookuplens/zoo/a.py": "from lookuplens.zoo import b\n",
            "lookuplens/zoo/b.py": """
                def later():
                    from .a import x
            """,
            "lookuplens/other.py": "import lookuplens.zoo.a\n",
        },
    )
    res = check("--src", str(src), "--strict", "lookuplens.zoo")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "lookuplens.zoo.a, lookuplens.zoo.b" in res.stdout
    assert "in a function" in res.stdout


def test_type_checking_imports_are_not_cycles_and_other_cycles_are_information(
    tmp_path: Path,
) -> None:
    src = write(
        tmp_path,
        {
            "lookuplens/__init__.py": "",
            "lookuplens/zoo/__init__.py": "",
            "lookuplens/zoo/a.py": "from lookuplens.zoo.b import B\n",
            "lookuplens/zoo/b.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from lookuplens.zoo.a import A
                B = 1
            """,
            "lookuplens/c.py": "from lookuplens import d\n",
            "lookuplens/d.py": "import lookuplens.c\n",
        },
    )
    res = check("--src", str(src), "--strict", "lookuplens.zoo")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "information: 1 import cycle(s)" in res.stdout
    assert "lookuplens.c, lookuplens.d" in res.stdout
