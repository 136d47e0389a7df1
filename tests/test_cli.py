"""The command line as a user meets it: help, version, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import cli

pytestmark = pytest.mark.slow  # each test starts the CLI in a new process (about 3-8 s each)


def test_help_lists_commands_and_version() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("run", "neurons", "scan", "inspect", "zoo"):
        assert command in out.stdout
    v = cli("--version")
    assert v.returncode == 0 and v.stdout.startswith("lookuplens ")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    good = root / "good.txt"
    good.write_text("An owl sat on the tree.\nShe bought an apple at the market.\n")
    empty = root / "empty.txt"
    empty.write_text("\n\n  \n")
    latin = root / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    return {"good": good, "empty": empty, "latin": latin}


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_model", "no model directory"),
        ("missing_corpus", "does not exist"),
        ("empty_corpus", "empty"),
        ("non_utf8", "UTF-8"),
        ("bad_layer", "out of range"),
        ("k_zero", "k must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: str, needle: str, corpora: dict[str, Path], tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_dirs["gpt2"])
    out = tmp_path / "run"
    args = {
        "missing_model": ["--model", "./no-such-model", "--corpus", str(corpora["good"])],
        "missing_corpus": ["--model", model, "--corpus", str(tmp_path / "nope.txt")],
        "empty_corpus": ["--model", model, "--corpus", str(corpora["empty"])],
        "non_utf8": ["--model", model, "--corpus", str(corpora["latin"])],
        "bad_layer": ["--model", model, "--corpus", str(corpora["good"]), "--layers", "7"],
        "k_zero": ["--model", model, "--corpus", str(corpora["good"]), "--k", "0"],
    }[case]
    res = cli("scan", *args, "--out", str(out))
    assert res.returncode == 2, res.stderr
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), res.stderr
    assert needle.lower() in err[0].lower()
    assert "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("run", "--no-such-option"), "No such option: --no-such-option"),
        (("why",), "Missing argument"),
        (("zoo", "train", "--steps", "many"), "Invalid value for '--steps'"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: tuple[str, ...], needle: str) -> None:
    res = cli(*args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert needle in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = cli("--debug", "inspect", "--model", str(tmp_path / "nothing"))
    assert res.returncode != 0 and "Traceback" in res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("",), "prompt is empty"),
        (("An owl", "--position", "40"), "out of range"),
        (("An owl", "--target", " xylophonequux"), "not a single token"),
        (("owl " * 100,), "context window"),
        (("An owl", "--ablate-until", "1.5"), "ablate_until must be between 0 and 1"),
    ],
)
def test_why_bad_input_is_one_line_exit_2(
    args: tuple[str, ...], needle: str, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    page = tmp_path / "why.html"
    res = cli("why", "--model", str(tiny_dirs["gpt2"]), "--html", str(page), *args)
    assert res.returncode == 2, res.stderr
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), res.stderr
    assert needle in err[0] and "Traceback" not in res.stderr
    assert not page.exists()
