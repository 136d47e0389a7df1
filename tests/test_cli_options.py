"""Run options: defaults < --preset < --config file < command line, for every option, and
every bad value refused with one line, exit code 2 and nothing written."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from lookuplens import cli
from lookuplens.pipeline import RunConfig, build_config, setting_choices
from lookuplens.run_options import OPTIONS, option_default

# a value for each option's first setting that differs from the built-in default, as it
# is written in a TOML file
OTHER: dict[str, Any] = {
    "model": "/elsewhere/model",
    "corpus": "elsewhere.txt",
    "text_field": "body",
    "max_docs": 5,
    "max_tokens": 1000,
    "max_context": 64,
    "storyworld_docs": 100,
    "device": "cpu",
    "dtype": "bfloat16",
    "seed": 3,
    "layers": [1],
    "top_n": 5,
    "tokens": [" an"],
    "token_filter": "none",
    "k": 10,
    "batch_tokens": 4096,
    "shard_docs": 16,
    "methods": ["direct", "raw", "zero_ablation"],
    "label_rule": "mean_std",
    "candidates": 4,
    "candidate_share": 0.25,
    "backend": "ray",
    "ray_address": "auto",
    "workers": 2,
}


def get(cfg: object, path: str) -> object:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def toml_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


def write_toml(path: Path, settings: dict[str, Any]) -> Path:
    tables: dict[str, list[str]] = {}
    for dotted, value in settings.items():
        *parent, leaf = dotted.split(".")
        tables.setdefault(".".join(parent), []).append(f"{leaf} = {toml_value(value)}")
    lines = tables.pop("", [])
    for name, rows in tables.items():
        lines += [f"[{name}]", *rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """The RunConfig `lookuplens run` builds; nothing is run."""
    got: list[RunConfig] = []

    def fake_run(cfg: RunConfig, *args: object, **kwargs: object) -> None:
        got.append(cfg)
        raise SystemExit(0)

    import lookuplens.pipeline

    monkeypatch.setattr(lookuplens.pipeline, "run_pipeline", fake_run)
    return got


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["lookuplens", *args])
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_every_option_is_tested_and_its_default_is_runconfigs() -> None:
    assert set(OTHER) == set(OPTIONS)
    base = dataclasses.asdict(RunConfig())
    for name, opt in OPTIONS.items():
        value: Any = base
        for part in opt.paths[0].split("."):
            value = value[part]
        assert opt.to_config(option_default(name)) == value, name


@pytest.mark.parametrize("name", sorted(OTHER))
def test_an_option_given_on_the_command_line_wins_even_at_its_default(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured: list[RunConfig]
) -> None:
    opt = OPTIONS[name]
    toml = write_toml(tmp_path / "c.toml", {p: OTHER[name] for p in opt.paths[:1]})
    flag = "--" + name.replace("_", "-")
    default = str(option_default(name))
    # the file alone sets the value
    assert run_cli(monkeypatch, "run", "--config", str(toml), "--out", str(tmp_path / "r")) == 0
    from_file = get(captured[-1], opt.paths[0])
    assert from_file != get(RunConfig(), opt.paths[0])
    # the command line, at the built-in default, wins over the file
    code = run_cli(
        monkeypatch, "run", "--config", str(toml), flag, default, "--out", str(tmp_path / "r")
    )
    assert code == 0
    for path in opt.paths:
        assert get(captured[-1], path) == get(RunConfig(), path), (name, path)
    assert not (tmp_path / "r").exists()


def test_preset_then_config_file_then_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured: list[RunConfig]
) -> None:
    out = ("--out", str(tmp_path / "r"))
    assert run_cli(monkeypatch, "run", "--preset", "paper", *out) == 0
    assert captured[-1].attribute.label_rule == "mean_std"
    assert run_cli(monkeypatch, "run", "--preset", "paper", "--label-rule", "ablation_typical",
                   *out) == 0  # fmt: skip
    assert captured[-1].attribute.label_rule == "ablation_typical"
    assert captured[-1].examples.keep_fraction == 0.8  # the rest of the preset stays
    toml = write_toml(tmp_path / "c.toml", {"attribute.label_rule": "top_k", "scan.k": 7})
    assert run_cli(monkeypatch, "run", "--preset", "paper", "--config", str(toml), *out) == 0
    assert captured[-1].attribute.label_rule == "top_k" and captured[-1].scan.k == 7
    assert captured[-1].scan.one_per_doc  # from the preset, under the file
    # the library's own builder, the same order
    cfg = build_config("paper", toml, {"scan.k": 30})
    assert cfg.scan.k == 30 and cfg.attribute.label_rule == "top_k"


# a bad value for every option, and what the one line says
BAD: dict[str, tuple[str, str]] = {
    "model": ("./no/such/model/", "no model directory"),
    "corpus": ("no-such-corpus.txt", "does not exist"),
    "text_field": ("", "text_field"),
    "max_docs": ("-3", "max_docs"),
    "max_tokens": ("-3", "max_tokens"),
    "max_context": ("-3", "max_context"),
    "storyworld_docs": ("0", "storyworld_docs"),
    "device": ("gpu", "device must be"),
    "dtype": ("float8", "--dtype must be one of"),
    "seed": ("abc", "Invalid value for '--seed'"),
    "layers": ("1,x", "comma-separated integers"),
    "top_n": ("0", "top_n must be at least 1"),
    "tokens": (" xylophonequux", "not a single token"),
    "token_filter": ("words", "--token-filter must be one of paper, none"),
    "k": ("0", "k must be at least 1"),
    "batch_tokens": ("0", "batch_tokens"),
    "shard_docs": ("0", "shard_docs"),
    "methods": ("direct,telepathy", "unknown attribution methods"),
    "label_rule": ("bogus", "--label-rule must be one of"),
    "candidates": ("-1", "candidates must be at least 0"),
    "candidate_share": ("1.5", "candidate_share must be in [0, 1]"),
    "backend": ("cloud", "--backend must be one of local, ray"),
    "ray_address": ("ray://", "address"),
    "workers": ("-2", "workers"),
}


def test_every_option_has_a_bad_value() -> None:
    assert set(BAD) == set(OPTIONS)
    closed = {n for n, o in OPTIONS.items() if setting_choices(o.paths[0]) is not None}
    # the device is checked by its pattern (auto, cpu, cuda, cuda:N)
    assert closed == {"dtype", "token_filter", "label_rule", "backend"}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_one_line_exit_2_and_nothing_written(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    value, needle = BAD[name]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    flag = "--" + name.replace("_", "-")
    # a small corpus, should the value not be refused
    small = ("--storyworld-docs", "5") if name == "max_docs" else ("--max-docs", "5")
    code = run_cli(monkeypatch, "run", flag, value, "--out", str(out), *small)
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("caf\xe9 = 1\n".encode("latin-1"), "not UTF-8"),
        (b"[attribute\nlabel_rule = 1\n", "not valid TOML"),
        (b'[attribute]\nlabel_rule = "bogus"\n', "attribute.label_rule must be one of"),
        (b'[neurons]\ntoken_filter = "words"\n', "neurons.token_filter must be one of"),
        (b'[examples]\nsplit = "halves"\n', "examples.split must be one of"),
        (b'backend = "cloud"\n', "backend must be one of"),
        (b'dtype = "float8"\n', "dtype must be one of"),
        (b'device = "tpu"\n', "device must be"),
        (b"[neurons]\ntop_n = 0\n", "top_n must be at least 1"),
        (b"[nope]\nx = 1\n", "unknown setting(s) nope"),
    ],
)
def test_a_bad_config_file_is_one_line_exit_2_and_nothing_written(
    content: bytes,
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_bytes(content)
    out = tmp_path / "run"
    code = run_cli(monkeypatch, "run", "--config", str(toml), "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert not out.exists()
