"""The run directory: atomic writes, schemas, manifest, config guard, shards, redaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lookuplens
from lookuplens.errors import RunDirError, TableSchemaError
from lookuplens.store import (
    COLUMN_DOCS,
    FORMAT_VERSION,
    STAGE_TABLES,
    STAGES,
    TABLE_COLUMNS,
    RunDir,
    ShardStore,
    atomic,
    canonical_json,
    config_sha256,
    redact,
    table_schema,
)

META: dict[str, object] = {
    "model": {"name": "tiny", "architecture": "gpt2", "n_layers": 2, "n_heads": 2, "d_mlp": 8},
    "corpus": {"source": "storyworld"},
    "config": {"scan": {"top_k": 20}},
    "seed": 0,
}


def neurons_df(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [1] * n,
            "neuron": list(range(n)),
            "token_id": [10 + i for i in range(n)],
            "token": [f" t{i}" for i in range(n)],
            "congruence": [0.5] * n,
            "congruence_z": [2.0] * n,
            "vocab_kurtosis": [3.0] * n,
            "vocab_skew": [0.1] * n,
            "selected": [True] * n,
            "baseline": [False] * n,
        }
    )


def examples_table() -> pa.Table:
    return pa.table(
        {
            "example_id": pa.array([0, 1], pa.int32()),
            "layer": [1, 1],
            "neuron": [0, 0],
            "rank": [0, 1],
            "doc_id": [5, 9],
            "position": [3, 4],
            "activation": pa.array([1.5, 1.0], pa.float32()),
            "start": [0, 2],
            "tokens": [[0, 1, 2, 3], [7, 8, 9]],
            "text": ["a b c", "x y"],
            "trimmed_activation": [1.4, 0.9],
            "split": ["train", "test"],
            "note": ["extra", "column"],
        }
    )


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path / "run", META)


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------- manifest


def test_create_writes_manifest(run: RunDir) -> None:
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model"] == META["model"] and meta["seed"] == 0
    assert meta["stages"] == {}
    assert set(meta["versions"]) >= {
        "python",
        "torch",
        "transformers",
        "lookuplens",
        "numpy",
        "pyarrow",
    }
    assert meta["versions"]["lookuplens"] == lookuplens.__version__
    assert RunDir.open(run.path).meta == meta


def test_create_refuses_existing_run_or_foreign_folder(run: RunDir, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="already holds a run.*--name"):
        RunDir.create(run.path, META)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.create(other, META)


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no run.json"):
        RunDir.open(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(RunDirError, match="newer.*upgrade lookuplens"):
        RunDir.open(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        RunDir.open(tmp_path)


def test_update_meta_and_stage_marks(run: RunDir) -> None:
    run.update_meta(corpus={"source": "x.txt", "documents": 3, "tokens": 30, "fingerprint": "ab"})
    assert not run.is_done("scan")
    run.mark_done("scan", 1.25)
    reopened = RunDir(run.path)
    assert reopened.is_done("scan") and not reopened.is_done("examples")
    stage = reopened.meta["stages"]["scan"]  # type: ignore[index]
    assert stage["seconds"] == 1.25 and "T" in stage["completed_at"]
    assert reopened.meta["corpus"]["documents"] == 3  # type: ignore[index]
    with pytest.raises(ValueError, match="managed by the run directory"):
        run.update_meta(stages={})
    with pytest.raises(ValueError, match="unknown stage"):
        run.mark_done("scna", 1.0)


# ------------------------------------------------------------------------ tables


def test_table_columns_match_conventions() -> None:
    # the public tables of CONVENTIONS.md, plus the scan's own two, the score stage's
    # mismatched-explanation control and the verify stage's headline findings (suggested
    # additions to CONVENTIONS.md)
    assert set(TABLE_COLUMNS) == {
        "score_controls",
        "findings",
        "firings",
        "activation_stats",
        "neurons",
        "examples",
        "attributions",
        "labels",
        "pairs",
        "effects",
        "explanations",
        "scores",
        "views",  # what the report and the dashboard show from the model (report stage)
        "attribution_means",  # the attributions' means, read instead of them (attribute)
    }
    assert TABLE_COLUMNS["examples"]["tokens"] == pa.list_(pa.int64())
    assert table_schema("scores").field("auroc").nullable
    assert table_schema("explanations").field("llm_model").nullable
    assert table_schema("scores").field("tp").nullable  # unscored rows carry a status
    assert not table_schema("scores").field("n_test").nullable
    tables = {t for ts in STAGE_TABLES.values() for t in ts if "." not in t}
    assert tables == set(TABLE_COLUMNS)
    assert list(STAGE_TABLES) == list(STAGES)
    # every column of the tables documented here has its description
    for name, docs in COLUMN_DOCS.items():
        assert list(docs) == list(TABLE_COLUMNS[name]), name
        assert all(d.strip() for d in docs.values()), name
    assert {"head_layer", "head", "example_id"} == {
        f.name for f in table_schema("views") if f.nullable
    }


def test_write_read_roundtrip_casts_and_keeps_extras(run: RunDir) -> None:
    run.write_table("examples", examples_table())
    assert run.has_table("examples")
    t = run.read_table("examples")
    schema = table_schema("examples")
    assert t.schema.names[: len(schema)] == schema.names
    assert t.schema.names[-1] == "note"
    for field in schema:
        assert t.schema.field(field.name).type == field.type
    assert t.column("tokens").to_pylist() == [[0, 1, 2, 3], [7, 8, 9]]
    assert (
        pq.ParquetFile(run.table_path("examples")).metadata.row_group(0).column(0).compression
        == "ZSTD"
    )

    run.write_table("neurons", neurons_df())
    df = run.read_df("neurons")
    pd.testing.assert_frame_equal(df, neurons_df(), check_dtype=False)
    assert df["layer"].dtype == "int64"


def test_write_replaces_previous_version(run: RunDir) -> None:
    run.write_table("neurons", neurons_df(3))
    run.write_table("neurons", neurons_df(5))
    assert run.read_table("neurons").num_rows == 5


def test_schema_rejects_missing_or_renamed_column(run: RunDir) -> None:
    with pytest.raises(TableSchemaError, match="lacks required column.*congruence_z.*renamed"):
        run.write_table("neurons", neurons_df().rename(columns={"congruence_z": "z"}))
    with pytest.raises(TableSchemaError, match="lacks required column.*baseline"):
        run.write_table("neurons", neurons_df().drop(columns=["baseline"]))
    assert not run.has_table("neurons")


def test_schema_rejects_bad_types_and_nulls(run: RunDir) -> None:
    df = neurons_df()
    df["layer"] = ["a", "b", "c"]
    with pytest.raises(TableSchemaError, match="'layer'.*expected int64"):
        run.write_table("neurons", df)
    df = neurons_df()
    df["selected"] = [1, 0, 1]
    with pytest.raises(TableSchemaError, match="'selected'.*expected bool"):
        run.write_table("neurons", df)
    df = neurons_df()
    df["token"] = [" a", None, " c"]
    with pytest.raises(TableSchemaError, match="'token'.*null"):
        run.write_table("neurons", df)
    with pytest.raises(ValueError, match="unknown table"):
        run.write_table("neuron", neurons_df())


def test_nullable_columns_accept_nulls(run: RunDir) -> None:
    explanations = pd.DataFrame(
        {
            "layer": [1],
            "neuron": [2],
            "head_layer": [0],
            "head": [3],
            "explainer": ["offline"],
            "explanation": ["fires after 'the'"],
            "llm_model": [None],
            "prompt_tokens": [0],
            "completion_tokens": [0],
        }
    )
    run.write_table("explanations", explanations)
    assert run.read_table("explanations").column("llm_model").to_pylist() == [None]


def test_read_missing_or_corrupted_table(run: RunDir) -> None:
    with pytest.raises(RunDirError, match="no examples table yet.*'examples' stage"):
        run.read_table("examples")
    pq.write_table(pa.table({"layer": [1]}), run.table_path("neurons"))
    with pytest.raises(TableSchemaError, match="--overwrite neurons"):
        run.read_table("neurons")


# --------------------------------------------------------------------- atomicity


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_crash_mid_write_leaves_no_table_and_no_stray_file(
    run: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(table: pa.Table, where: object, **kwargs: object) -> None:
        Path(str(where)).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.pq, "write_table", half_write)
    with pytest.raises(KeyboardInterrupt):
        run.write_table("neurons", neurons_df())
    monkeypatch.undo()
    reopened = RunDir.open(run.path)
    assert not reopened.has_table("neurons")
    assert _tmp_files(run.path) == []


def test_crash_during_rename_keeps_previous_version(
    run: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.write_table("neurons", neurons_df(3))

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        run.write_table("neurons", neurons_df(5))
    monkeypatch.undo()
    assert RunDir.open(run.path).read_table("neurons").num_rows == 3
    assert _tmp_files(run.path) == []


def test_hard_kill_mid_write_is_cleaned_on_open(run: RunDir) -> None:
    """A process killed mid-write (no cleanup runs) leaves only a .tmp- file, removed on open."""
    src = Path(lookuplens.__file__).parents[1]
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(src)!r})
        import pyarrow as pa
        from lookuplens import store
        from lookuplens.store import atomic

        def dying_write(table, where, **kwargs):
            with open(where, "wb") as f:
                f.write(b"PAR1 partial")
                f.flush()
            os._exit(9)

        atomic.pq.write_table = dying_write
        run = store.RunDir.open({str(run.path)!r})
        run.shards("scan").write(0, pa.table({{"x": [1]}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    assert len(_tmp_files(run.path)) == 1  # the crash left a temporary file behind
    reopened = RunDir.open(run.path)
    assert _tmp_files(run.path) == []
    assert reopened.shards("scan").done() == set()


def test_run_json_is_written_atomically(run: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (run.path / "run.json").read_text()

    def fail(*args: object) -> None:
        raise OSError("boom")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError):
        run.mark_done("neurons", 1.0)
    monkeypatch.undo()
    assert (run.path / "run.json").read_text() == before
    assert _tmp_files(run.path) == []


# ---------------------------------------------------------------------- reset


def test_reset_from_removes_stage_and_later(run: RunDir) -> None:
    run.write_table("neurons", neurons_df())
    run.mark_done("neurons", 1.0)
    run.shards("scan").write(0, pa.table({"x": [1]}))
    run.mark_done("scan", 2.0)
    run.write_table("examples", examples_table())
    run.mark_done("examples", 3.0)
    run.write_file("report.html", "<html></html>")
    run.mark_done("report", 0.5)

    reset = run.reset_from("scan")
    assert reset == list(STAGES[1:])
    assert run.is_done("neurons") and run.has_table("neurons")
    assert not run.is_done("scan") and not run.shards("scan").done()
    assert not run.is_done("examples") and not run.has_table("examples")
    assert not (run.path / "report.html").exists() and not run.is_done("report")
    reopened = RunDir(run.path)
    assert reopened.is_done("neurons") and not reopened.is_done("scan")

    with pytest.raises(RunDirError, match="unknown stage 'bogus'"):
        run.reset_from("bogus")


# ----------------------------------------------------------------- config guard


def test_check_config_guards_finished_stages(run: RunDir) -> None:
    cfg = {"neurons": {"model": "tiny", "per_layer": 20}, "scan": {"top_k": 20}}
    run.check_config(cfg)
    run.mark_done("neurons", 1.0)
    run.check_config(cfg)  # same settings: fine
    # scan has not started: its settings may change freely
    run.check_config({**cfg, "scan": {"top_k": 50}})
    stored = RunDir(run.path).meta["stage_configs"]["scan"]  # type: ignore[index]
    assert stored["json"] == canonical_json({"top_k": 50})
    assert stored["sha256"] == config_sha256({"top_k": 50})

    with pytest.raises(
        RunDirError,
        match=r"finished stage 'neurons'.*per_layer: 20 -> 30.*"
        r"--overwrite neurons.*--name",
    ):
        run.check_config({**cfg, "neurons": {"model": "tiny", "per_layer": 30}})

    run.reset_from("neurons")
    run.check_config({**cfg, "neurons": {"model": "tiny", "per_layer": 30}})


def test_check_config_guards_interrupted_stage_with_shards(run: RunDir) -> None:
    run.check_config({"scan": {"top_k": 20}})
    run.shards("scan").write(0, pa.table({"x": [1]}))
    with pytest.raises(RunDirError, match="interrupted.*--overwrite scan"):
        run.check_config({"scan": {"top_k": 10}})


def test_check_config_ignores_key_order_and_secrets(run: RunDir) -> None:
    run.check_config({"explain": {"a": 1, "b": {"c": 2}, "api_key": "k1"}})
    run.mark_done("explain", 1.0)
    run.check_config({"explain": {"b": {"c": 2}, "a": 1, "api_key": "k2"}})


# ------------------------------------------------------------------------ shards


def test_shards(run: RunDir) -> None:
    shards = ShardStore(run, "scan")
    assert shards.done() == set() and shards.read_all().num_rows == 0
    shards.write(2, pa.table({"doc": [20, 21]}))
    shards.write(0, pd.DataFrame({"doc": [0]}))
    shards.write(10, pa.table({"doc": [100]}))
    assert shards.path(2) == run.path / "shards" / "scan" / "00002.parquet"
    assert shards.done() == {0, 2, 10}
    assert shards.read_all().column("doc").to_pylist() == [0, 20, 21, 100]
    (shards.dir / "notes.txt").write_text("ignored")
    assert shards.done() == {0, 2, 10}
    shards.clear()
    assert shards.done() == set()
    with pytest.raises(ValueError, match="non-negative"):
        shards.path(-1)


# --------------------------------------------------------------------- redaction


def test_redact() -> None:
    cfg = {
        "OpenAI_API_KEY": "a",
        "hf_token": "b",
        "client_secret": "c",
        "top_k": 3,
        "nested": {"anthropic_api_key": "d", "keep": [{"x_token": "e", "y": 1}]},
    }
    assert redact(cfg) == {"top_k": 3, "nested": {"keep": [{"y": 1}]}}
    assert cfg["hf_token"] == "b"  # input not mutated


def test_secrets_never_reach_disk(tmp_path: Path) -> None:
    secret = "sk-THIS-MUST-NOT-LEAK-123"
    meta = {
        **META,
        "config": {"explain": {"openai_api_key": secret, "llm_model": "gpt"}},
        "hf_token": secret,
    }
    run = RunDir.create(tmp_path / "run", meta)
    run.update_meta(config={"explain": {"openai_api_key": secret, "llm_model": "gpt"}})
    run.check_config({"explain": {"openai_api_key": secret, "llm_model": "gpt"}})
    run.mark_done("explain", 1.0)
    files = _all_files(tmp_path)
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert RunDir(run.path).meta["config"] == {"explain": {"llm_model": "gpt"}}
    assert os.listdir(run.path) == ["run.json"]
