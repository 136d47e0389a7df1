"""`RunDir`: an existing run directory, its run.json manifest, stage marks, the resume
guard, and reading and writing its tables."""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookuplens.errors import RunDirError, TableSchemaError, UserError
from lookuplens.store.atomic import (
    atomic_write_bytes,
    clean_tmp,
    write_parquet,
    write_parquet_chunks,
)
from lookuplens.store.jsondata import (
    canonical_json,
    config_diff,
    config_sha256,
    redact,
    to_jsonable,
)
from lookuplens.store.schema import (
    FORMAT_VERSION,
    ROW_GROUP_ROWS,
    STAGE_TABLES,
    STAGES,
    TABLE_SORT,
    TABLE_STAGE,
    VIEWS_ROW_GROUP_ROWS,
    check_stage,
    conform_columns,
    conform_table,
    required_columns,
    table_schema,
)
from lookuplens.store.shards import ShardStore

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["RunDir"]

_RESERVED_META = frozenset({"format_version", "created_at", "stages", "stage_configs", "versions"})
_PACKAGES = ("torch", "transformers", "numpy", "pyarrow")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str | None]:
    from lookuplens import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "lookuplens": __version__}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class RunDir:
    """An existing run directory. ``RunDir(path)`` is :meth:`open`; use :meth:`create`
    for a new one. Opening removes temporary files left by interrupted writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest = self.path / "run.json"
        if not manifest.is_file():
            raise RunDirError(
                f"{self.path} is not a run directory (no run.json); check the path, or create "
                "the run by running the pipeline with this --name"
            )
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(
                f"{manifest} is not valid JSON ({e}); restore it or start a new run with "
                "another --name"
            ) from None
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if not isinstance(version, int):
            raise RunDirError(
                f"{manifest} has no format_version; it was not written by lookuplens, so start "
                "a new run with another --name"
            )
        if version > FORMAT_VERSION:
            raise RunDirError(
                f"{self.path} has run directory format {version}, newer than the {FORMAT_VERSION} "
                "this lookuplens reads; upgrade lookuplens (pip install -U lookuplens)"
            )
        meta.setdefault("stages", {})
        meta.setdefault("stage_configs", {})
        self._meta: dict[str, object] = meta
        clean_tmp(self.path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """Open an existing run directory (raises RunDirError with the fix if it is not one)."""
        return cls(path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: Mapping[str, object]) -> RunDir:
        """Create a run directory with run.json from ``meta`` (model, corpus, config, seed,
        and any other plain data; secrets redacted). The folder must not hold files yet."""
        root = Path(path)
        if (root / "run.json").exists():
            raise RunDirError(
                f"{root} already holds a run (run.json exists); open it to resume, or pick "
                "another --name"
            )
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise RunDirError(
                f"{root} exists and is not a run directory; pick another --name or remove it"
            )
        reserved = sorted(_RESERVED_META & set(meta))
        if reserved:
            raise ValueError(f"meta keys {', '.join(reserved)} are set by the run directory")
        body = redact(_json_dict(meta))
        manifest: dict[str, object] = {
            "format_version": FORMAT_VERSION,
            "created_at": _now(),
            "model": body.pop("model", None),
            "corpus": body.pop("corpus", None),
            "config": body.pop("config", {}),
            "seed": body.pop("seed", None),
            **body,
            "stages": {},
            "stage_configs": {},
            "versions": _versions(),
        }
        root.mkdir(parents=True, exist_ok=True)
        _write_json(root / "run.json", manifest)
        logger.info("created run directory %s", root)
        return cls(root)

    # -- manifest ---------------------------------------------------------------

    @property
    def meta(self) -> dict[str, object]:
        """A copy of run.json's content."""
        return copy.deepcopy(self._meta)

    def _save(self) -> None:
        _write_json(self.path / "run.json", self._meta)

    def update_meta(self, **fields: object) -> None:
        """Set top-level run.json fields (e.g. ``corpus=...``); secrets are redacted."""
        reserved = sorted(_RESERVED_META & set(fields))
        if reserved:
            raise ValueError(
                f"run.json fields {', '.join(reserved)} are managed by the run directory "
                "(use mark_done, check_config or reset_from)"
            )
        self._meta.update(redact(_json_dict(fields)))
        self._save()

    def _stages(self) -> dict[str, dict[str, object]]:
        stages = self._meta["stages"]
        assert isinstance(stages, dict)
        return stages

    def _stage_configs(self) -> dict[str, dict[str, object]]:
        configs = self._meta["stage_configs"]
        assert isinstance(configs, dict)
        return configs

    def mark_done(self, stage: str, seconds: float) -> None:
        """Record that ``stage`` finished, when, and how long it took."""
        check_stage(stage)
        if seconds < 0:
            raise ValueError(f"seconds must be non-negative, got {seconds}")
        self._stages()[stage] = {"completed_at": _now(), "seconds": float(seconds)}
        self._save()

    def is_done(self, stage: str) -> bool:
        """Whether ``stage`` has finished in this run directory."""
        check_stage(stage)
        return stage in self._stages()

    def reset_from(self, stage: str, order: Sequence[str] = STAGES) -> list[str]:
        """Forget ``stage`` and every later stage of ``order`` (``--overwrite STAGE``):
        their completion marks, recorded configs, tables, files and shards. Returns them."""
        if stage not in order:
            raise RunDirError(f"unknown stage {stage!r}; choose one of {', '.join(order)}")
        reset = list(order[order.index(stage) :])
        for name in reset:
            check_stage(name)
            self._stages().pop(name, None)
            self._stage_configs().pop(name, None)
        self._save()
        for name in reset:
            for item in STAGE_TABLES[name]:
                (self.path / (item if "." in item else f"{item}.parquet")).unlink(missing_ok=True)
            ShardStore(self, name).clear()
        logger.info("reset stages %s in %s", ", ".join(reset), self.path)
        return reset

    def check_config(self, stage_config: Mapping[str, object]) -> None:
        """Guard against resuming a run with other settings.

        ``stage_config`` maps stage names to the settings their outputs depend on (put
        settings shared by all stages, such as the model and seed, under the first stage).
        A stage that has finished, or that left shards behind, must see the same settings
        it ran with, else RunDirError says to pass ``--overwrite STAGE`` or another
        ``--name``. The settings of the other stages are recorded (canonical JSON and
        sha256 in run.json's ``stage_configs``); secrets are redacted first.
        """
        for stage in stage_config:
            check_stage(stage)
        recorded = self._stage_configs()
        updates: dict[str, dict[str, object]] = {}
        for stage in STAGES:
            if stage not in stage_config:
                continue
            section = to_jsonable(stage_config[stage])
            if isinstance(section, Mapping):
                section = redact(section)
            digest = config_sha256(section)
            old = recorded.get(stage)
            started = self.is_done(stage) or bool(ShardStore(self, stage).done())
            if old is not None and old.get("sha256") != digest and started:
                verb = "finished" if self.is_done(stage) else "started (and was interrupted)"
                old_config = json.loads(str(old.get("json", "null")))
                raise RunDirError(
                    f"run directory {self.path} {verb} stage {stage!r} with different settings "
                    f"({config_diff(old_config, section)}); pass --overwrite {stage} to redo it "
                    "and every later stage, or pick another --name to start a new run"
                )
            if old is None and self.is_done(stage):
                logger.warning(
                    "stage %s finished without recorded settings; recording the current ones",
                    stage,
                )
            if old is None or old.get("sha256") != digest:
                updates[stage] = {"sha256": digest, "json": canonical_json(section)}
        if updates:
            recorded.update(updates)
            self._save()

    # -- tables -----------------------------------------------------------------

    def table_path(self, name: str) -> Path:
        """Where table ``name`` lives (whether or not it exists yet)."""
        required_columns(name)
        return self.path / f"{name}.parquet"

    def has_table(self, name: str) -> bool:
        """Whether table ``name`` has been written (completely: writes are atomic)."""
        return self.table_path(name).is_file()

    def write_table(self, name: str, table: pa.Table | pd.DataFrame) -> Path:
        """Validate (see :func:`conform_table`) and atomically write table ``name`` as
        zstd parquet, replacing any previous version. A DataFrame's index is not stored.
        The tables of `TABLE_SORT` are sorted by their keys and written in row groups of
        `ROW_GROUP_ROWS` rows (see :meth:`read_neuron`)."""
        conformed = conform_table(name, table)
        path = self.table_path(name)
        keys = TABLE_SORT.get(name)
        if keys is not None:
            order = pc.sort_indices(conformed, sort_keys=[(k, "ascending") for k in keys])
            conformed = conformed.take(order)
            write_parquet(path, conformed, _row_group_rows(name))
        else:
            write_parquet(path, conformed)
        logger.debug("wrote %s (%d rows)", path, conformed.num_rows)
        return path

    def write_table_chunks(self, name: str, chunks: Iterable[pa.Table | pd.DataFrame]) -> Path:
        """Write table ``name`` from `chunks`, one at a time (a table too large to hold
        whole): each is conformed as by :meth:`write_table` and must have the first one's
        columns. For a table of `TABLE_SORT` the chunks must come in its sort order (this
        is not checked); they are written in row groups of `ROW_GROUP_ROWS` rows."""
        path = self.table_path(name)
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            write_parquet(path, table_schema(name).empty_table())
            return path
        head = conform_table(name, first)

        def conformed() -> Iterator[pa.Table]:
            yield head
            for chunk in it:
                yield conform_table(name, chunk)

        rows = write_parquet_chunks(path, head.schema, conformed(), _row_group_rows(name))
        logger.debug("wrote %s (%d rows, in chunks)", path, rows)
        return path

    def _table_error(self, name: str, e: Exception) -> RunDirError:
        path = self.table_path(name)
        stage = TABLE_STAGE.get(name, name)
        if isinstance(e, TableSchemaError):
            return TableSchemaError(
                f"{path}: {e} (rerun the stage with --overwrite {stage} to rewrite it)"
            )
        return RunDirError(f"{path} cannot be read ({e}); rerun the stage with --overwrite {stage}")

    def read_table(self, name: str) -> pa.Table:
        """Read table ``name`` with its required columns in their canonical types."""
        path = self.table_path(name)
        stage = TABLE_STAGE.get(name, name)
        if not path.is_file():
            raise RunDirError(
                f"run directory {self.path} has no {name} table yet; run the {stage!r} stage first"
            )
        try:
            return conform_table(name, pq.read_table(path))
        except (TableSchemaError, pa.ArrowException, OSError) as e:
            raise self._table_error(name, e) from None

    def table_info(self, name: str) -> pq.FileMetaData:
        """The Parquet footer of table ``name`` (rows, row groups, schema), read without
        its data; raises RunDirError when the table is missing or unreadable and
        TableSchemaError when it lacks a required column or has one of a wrong type."""
        if not self.has_table(name):
            stage = TABLE_STAGE.get(name, name)
            raise RunDirError(
                f"run directory {self.path} has no {name} table yet; run the {stage!r} stage first"
            )
        try:
            meta = pq.read_metadata(self.table_path(name))
            conform_columns(name, meta.schema.to_arrow_schema().empty_table(), complete=True)
        except (TableSchemaError, pa.ArrowException, OSError) as e:
            raise self._table_error(name, e) from None
        return meta

    def read_neuron(
        self, name: str, layer: int, neuron: int, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The rows of table ``name`` about neuron (layer, neuron), with `columns` (all
        when None; the required ones among them in their canonical types). A table of
        `TABLE_SORT` is read from the few row groups that hold the neuron; an unsorted one
        (written before 2026-12-05) is scanned whole, a row group at a time."""
        return self.scan_table(
            name, columns, (pc.field("layer") == layer) & (pc.field("neuron") == neuron)
        ).read_all()

    def scan_table(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        where: pc.Expression | None = None,
    ) -> pa.RecordBatchReader:
        """Table ``name``'s rows that match `where` (a ``pyarrow.compute`` expression;
        all rows when None), with `columns`, as a stream of record batches: row groups
        whose statistics rule `where` out are skipped, and only a few batches are held
        at a time. The required columns come in their canonical types."""
        import pyarrow.dataset as ds

        self.table_info(name)  # missing, unreadable, or lacking columns: the same errors
        try:
            dataset = ds.dataset(self.table_path(name), format="parquet")
            cols = list(columns) if columns is not None else None
            reader = dataset.scanner(columns=cols, filter=where, use_threads=False).to_reader()
        except (pa.ArrowException, OSError) as e:
            raise self._table_error(name, e) from None
        schema = conform_columns(name, reader.schema.empty_table()).schema

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    table = conform_columns(name, pa.Table.from_batches([batch]))
                    yield from table.to_batches()
            except (TableSchemaError, pa.ArrowException, OSError) as e:
                raise self._table_error(name, e) from None

        return pa.RecordBatchReader.from_batches(schema, batches())

    def table_rows(self, name: str) -> int:
        """How many rows table ``name`` has (from its footer: nothing else is read)."""
        return int(self.table_info(name).num_rows)

    def read_df(self, name: str) -> pd.DataFrame:
        """:meth:`read_table` as a pandas DataFrame (needs pandas)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise UserError(
                "read_df needs pandas: pip install pandas (or use read_table)"
            ) from None
        return self.read_table(name).to_pandas()

    def write_file(self, name: str, data: bytes | str) -> Path:
        """Atomically write a non-table file such as ``report.html`` into the run directory."""
        if "/" in name or "\\" in name or name.startswith(".") or name == "run.json":
            raise ValueError(f"file name {name!r} must be a plain name other than run.json")
        path = self.path / name
        atomic_write_bytes(path, data)
        return path

    def shards(self, stage: str) -> ShardStore:
        """The shard store of a resumable stage."""
        return ShardStore(self, stage)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def _row_group_rows(name: str) -> int:
    return VIEWS_ROW_GROUP_ROWS if name == "views" else ROW_GROUP_ROWS


def _json_dict(fields: Mapping[str, object]) -> dict[str, object]:
    out = to_jsonable(dict(fields))
    assert isinstance(out, dict)
    return out


def _write_json(path: Path, obj: object) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text)
