"""The run directory: tables, the run.json manifest, stage marks, shards and resume.

Layout (a public format; see CONVENTIONS.md)::

    RUN/
      run.json                  manifest (format version, model, corpus, config, stages)
      neurons.parquet ...       one parquet file (zstd) per table in TABLE_COLUMNS
      report.html
      shards/<stage>/00000.parquet   partial results of a resumable stage

Every write goes to a temporary file whose name starts with ``.tmp-`` in the same
folder and is then renamed over the target (``os.replace``), so a file either exists
complete or not at all; leftover temporary files of a crashed process are removed when
the run directory is opened. One process writes to a run directory at a time.

Secrets are never written: :func:`redact` drops every mapping key ending in
``api_key``, ``apikey``, ``token``, ``secret`` or ``password`` (case-insensitive, at any
depth) from everything that goes into run.json. Name non-secret settings accordingly
(``pad_token_id``, not ``pad_token``).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from lookuplens.errors import RunDirError, TableSchemaError, UserError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "NULLABLE_COLUMNS",
    "STAGES",
    "STAGE_TABLES",
    "TABLE_COLUMNS",
    "RunDir",
    "ShardStore",
    "atomic_write_bytes",
    "canonical_json",
    "conform_table",
    "config_sha256",
    "redact",
    "table_schema",
    "to_jsonable",
]

FORMAT_VERSION = 1
"""The run directory format this code writes; it opens this version and older ones."""

STAGES: tuple[str, ...] = (
    "neurons",
    "scan",
    "examples",
    "attribute",
    "verify",
    "explain",
    "score",
    "report",
)
"""The pipeline's stages, in order."""

STAGE_TABLES: dict[str, tuple[str, ...]] = {
    "neurons": ("neurons",),
    "scan": ("firings", "activation_stats"),
    "examples": ("examples",),
    "attribute": ("attributions", "labels", "pairs"),
    "verify": ("effects", "findings"),
    "explain": ("explanations",),
    "score": ("scores", "score_controls"),
    "report": ("report.html",),
}
"""What each stage writes: table names (``NAME.parquet``), or file names with a suffix.
A stage's shards (``shards/<stage>/``) belong to it as well."""

_I64 = pa.int64()
_F64 = pa.float64()
_STR = pa.string()
_BOOL = pa.bool_()

TABLE_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "neurons": {
        "layer": _I64,
        "neuron": _I64,
        "token_id": _I64,
        "token": _STR,
        "congruence": _F64,
        "congruence_z": _F64,
        "vocab_kurtosis": _F64,
        "vocab_skew": _F64,
        "selected": _BOOL,
        "baseline": _BOOL,
    },
    "firings": {
        "layer": _I64,
        "neuron": _I64,
        "rank": _I64,
        "doc_id": _I64,
        "position": _I64,
        "activation": _F64,
    },
    "activation_stats": {
        "layer": _I64,
        "neuron": _I64,
        "act_mean": _F64,
        "act_std": _F64,
        "act_frac_pos": _F64,
        "act_max": _F64,
        "n_tokens": _I64,
    },
    "examples": {
        "example_id": _I64,
        "layer": _I64,
        "neuron": _I64,
        "rank": _I64,
        "doc_id": _I64,
        "position": _I64,
        "activation": _F64,
        "start": _I64,
        "tokens": pa.list_(_I64),
        "text": _STR,
        "trimmed_activation": _F64,
        "split": _STR,
    },
    "attributions": {
        "example_id": _I64,
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "method": _STR,
        "value": _F64,
    },
    "labels": {
        "example_id": _I64,
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "active": _BOOL,
        "split": _STR,
    },
    "pairs": {
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "active_rate": _F64,
        "n_train": _I64,
        "kept": _BOOL,
        "ks_stat": _F64,
        "ks_pvalue": _F64,
        "mechanism": _STR,
    },
    "effects": {
        "example_id": _I64,
        "layer": _I64,
        "neuron": _I64,
        "intervention": _STR,
        "delta_logprob": _F64,
        "kl": _F64,
    },
    "explanations": {
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "explainer": _STR,
        "explanation": _STR,
        "llm_model": _STR,
        "prompt_tokens": _I64,
        "completion_tokens": _I64,
    },
    "scores": {
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "explainer": _STR,
        "scorer": _STR,
        "n_test": _I64,
        "tp": _I64,
        "fp": _I64,
        "tn": _I64,
        "fn": _I64,
        "balanced_accuracy": _F64,
        "auroc": _F64,
        "baseline": _BOOL,
    },
    "score_controls": {
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "baseline": _BOOL,
        "donor_layer": _I64,
        "donor_neuron": _I64,
        "donor_head_layer": _I64,
        "donor_head": _I64,
        "explainer": _STR,
        "scorer": _STR,
        "n_test": _I64,
        "tp": _I64,
        "fp": _I64,
        "tn": _I64,
        "fn": _I64,
        "balanced_accuracy": _F64,
        "auroc": _F64,
    },
    "findings": {
        "layer": _I64,
        "neuron": _I64,
        "token": _STR,
        "baseline": _BOOL,
        "head_layer": _I64,
        "head": _I64,
        "cue": _STR,
        "n_swapped": _I64,
        "median_share_removed": _F64,
        "fraction_removed": _F64,
        "median_delta_logprob": _F64,
        "kept": _BOOL,
    },
}
"""Required columns and their types, per table. Tables may carry extra columns."""

NULLABLE_COLUMNS: dict[str, frozenset[str]] = {
    # neuron-level rows have no head; failed rows (status column) have no explanation/score
    "explanations": frozenset({"llm_model", "head_layer", "head", "explanation"}),
    "scores": frozenset(
        {"auroc", "head_layer", "head", "tp", "fp", "tn", "fn", "balanced_accuracy"}
    ),
    "score_controls": frozenset({"auroc", "tp", "fp", "tn", "fn", "balanced_accuracy"}),
    "findings": frozenset({"ks_stat"}),
}
"""Required columns that may hold nulls; every other required column may not."""

_TABLE_STAGE: dict[str, str] = {t: s for s, ts in STAGE_TABLES.items() for t in ts}
_RESERVED_META = frozenset({"format_version", "created_at", "stages", "stage_configs", "versions"})
_SECRET_SUFFIXES = ("api_key", "apikey", "token", "secret", "password")
_TMP_PREFIX = ".tmp-"
_SHARD_RE = re.compile(r"^(\d{5,})\.parquet$")
_PACKAGES = ("torch", "transformers", "numpy", "pyarrow")


# ---------------------------------------------------------------------- JSON helpers


def to_jsonable(obj: object) -> object:
    """Plain JSON data from configs: dataclasses, mappings, sequences, paths, enums, numpy
    scalars. Raises TypeError for anything else."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return to_jsonable(item())
    raise TypeError(f"cannot store a {type(obj).__name__} in run.json; convert it to plain data")


def _is_secret(key: str) -> bool:
    return key.lower().endswith(_SECRET_SUFFIXES)


def redact(config: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``config`` without secrets: keys ending in api_key, apikey, token, secret
    or password (case-insensitive) are dropped at every depth, also inside lists."""

    def walk(value: object) -> object:
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items() if not _is_secret(str(k))}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    out = walk(config)
    assert isinstance(out, dict)
    return out


def canonical_json(obj: object) -> str:
    """Compact JSON with sorted keys: equal configs give equal strings."""
    return json.dumps(
        to_jsonable(obj),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def config_sha256(obj: object) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def _flatten(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict) and obj:
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _diff(old: object, new: object, limit: int = 5) -> str:
    a, b = _flatten(old), _flatten(new)
    missing = object()
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            fa = "(unset)" if va is missing else json.dumps(va)
            fb = "(unset)" if vb is missing else json.dumps(vb)
            changes.append(f"{key or '(value)'}: {fa} -> {fb}")
    more = f", and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more


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


# ---------------------------------------------------------------------- atomic files


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` through a ``.tmp-`` file and a rename."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    _atomic_write(Path(path), lambda tmp: tmp.write_bytes(payload))


def _clean_tmp(folder: Path) -> None:
    for p in folder.rglob(f"{_TMP_PREFIX}*"):
        if p.is_file():
            logger.info("removing %s, left behind by an interrupted write", p)
            p.unlink(missing_ok=True)


# -------------------------------------------------------------------------- schemas


def table_schema(name: str) -> pa.Schema:
    """The required columns of table ``name`` as an arrow schema (with nullability)."""
    columns = _columns(name)
    nullable = NULLABLE_COLUMNS.get(name, frozenset())
    return pa.schema([pa.field(c, t, nullable=c in nullable) for c, t in columns.items()])


def _columns(name: str) -> dict[str, pa.DataType]:
    try:
        return TABLE_COLUMNS[name]
    except KeyError:
        raise ValueError(
            f"unknown table {name!r}; the run directory holds {', '.join(TABLE_COLUMNS)}"
        ) from None


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected or pa.types.is_null(actual):
        return True
    if pa.types.is_dictionary(actual):
        return _compatible(actual.value_type, expected)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_string(expected):
        is_view = getattr(pa.types, "is_string_view", lambda _t: False)
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or is_view(actual)
    if pa.types.is_list(expected):
        is_list_like = (
            pa.types.is_list(actual)
            or pa.types.is_large_list(actual)
            or pa.types.is_fixed_size_list(actual)
        )
        return is_list_like and _compatible(actual.value_type, expected.value_type)
    return False


def _to_arrow(table: pa.Table | pd.DataFrame) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    try:
        import pandas as pandas_mod
    except ImportError:
        pandas_mod = None
    if pandas_mod is not None and isinstance(table, pandas_mod.DataFrame):
        return pa.Table.from_pandas(table, preserve_index=False)
    raise TypeError(f"expected a pyarrow Table or pandas DataFrame, got {type(table).__name__}")


def conform_table(name: str, table: pa.Table | pd.DataFrame) -> pa.Table:
    """Check ``table`` against table ``name``'s required columns and cast them to the
    canonical types; the required columns come first, extra columns follow unchanged.

    Raises TableSchemaError for a missing column, an incompatible type, a lossy cast or
    a null in a non-nullable column.
    """
    columns = _columns(name)
    t = _to_arrow(table)
    names = t.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TableSchemaError(
            f"table {name!r} has duplicate columns {', '.join(dupes)}; keep one of each"
        )
    missing = [c for c in columns if c not in names]
    if missing:
        extra = [n for n in names if n not in columns]
        hint = f" (it has extra columns {', '.join(extra)}: renamed?)" if extra else ""
        raise TableSchemaError(
            f"table {name!r} lacks required column(s) {', '.join(missing)}{hint}; the run "
            f"directory format requires {', '.join(columns)} (extra columns are allowed)"
        )
    nullable = NULLABLE_COLUMNS.get(name, frozenset())
    arrays: list[pa.ChunkedArray] = []
    fields: list[pa.Field] = []
    for col, typ in columns.items():
        arr = t.column(col)
        if not _compatible(arr.type, typ):
            raise TableSchemaError(
                f"column {col!r} of table {name!r} has type {arr.type}, expected {typ}; "
                "convert the column before writing"
            )
        if arr.type != typ:
            try:
                arr = arr.cast(typ, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise TableSchemaError(
                    f"column {col!r} of table {name!r} cannot be stored as {typ} without "
                    f"loss ({e}); fix its values"
                ) from None
        if col not in nullable and arr.null_count:
            raise TableSchemaError(
                f"column {col!r} of table {name!r} has {arr.null_count} null value(s) but "
                "may not be null; fill them in or drop those rows"
            )
        arrays.append(arr)
        fields.append(pa.field(col, typ, nullable=col in nullable))
    for i, col in enumerate(names):
        if col not in columns:
            arrays.append(t.column(i))
            fields.append(t.schema.field(i).remove_metadata())
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _write_parquet(path: Path, table: pa.Table) -> None:
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


# -------------------------------------------------------------------------- RunDir


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
        _clean_tmp(self.path)

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
        _check_stage(stage)
        if seconds < 0:
            raise ValueError(f"seconds must be non-negative, got {seconds}")
        self._stages()[stage] = {"completed_at": _now(), "seconds": float(seconds)}
        self._save()

    def is_done(self, stage: str) -> bool:
        """Whether ``stage`` has finished in this run directory."""
        _check_stage(stage)
        return stage in self._stages()

    def reset_from(self, stage: str, order: Sequence[str] = STAGES) -> list[str]:
        """Forget ``stage`` and every later stage of ``order`` (``--overwrite STAGE``):
        their completion marks, recorded configs, tables, files and shards. Returns them."""
        if stage not in order:
            raise RunDirError(f"unknown stage {stage!r}; choose one of {', '.join(order)}")
        reset = list(order[order.index(stage) :])
        for name in reset:
            _check_stage(name)
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
            _check_stage(stage)
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
                    f"({_diff(old_config, section)}); pass --overwrite {stage} to redo it and "
                    "every later stage, or pick another --name to start a new run"
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
        _columns(name)
        return self.path / f"{name}.parquet"

    def has_table(self, name: str) -> bool:
        """Whether table ``name`` has been written (completely: writes are atomic)."""
        return self.table_path(name).is_file()

    def write_table(self, name: str, table: pa.Table | pd.DataFrame) -> Path:
        """Validate (see :func:`conform_table`) and atomically write table ``name`` as
        zstd parquet, replacing any previous version. A DataFrame's index is not stored."""
        conformed = conform_table(name, table)
        path = self.table_path(name)
        _write_parquet(path, conformed)
        logger.debug("wrote %s (%d rows)", path, conformed.num_rows)
        return path

    def read_table(self, name: str) -> pa.Table:
        """Read table ``name`` with its required columns in their canonical types."""
        path = self.table_path(name)
        stage = _TABLE_STAGE.get(name, name)
        if not path.is_file():
            raise RunDirError(
                f"run directory {self.path} has no {name} table yet; run the {stage!r} stage first"
            )
        try:
            return conform_table(name, pq.read_table(path))
        except TableSchemaError as e:
            raise TableSchemaError(
                f"{path}: {e} (rerun the stage with --overwrite {stage} to rewrite it)"
            ) from None
        except (pa.ArrowException, OSError) as e:
            raise RunDirError(
                f"{path} cannot be read ({e}); rerun the stage with --overwrite {stage}"
            ) from None

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


def _json_dict(fields: Mapping[str, object]) -> dict[str, object]:
    out = to_jsonable(dict(fields))
    assert isinstance(out, dict)
    return out


def _write_json(path: Path, obj: object) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text)


# ---------------------------------------------------------------------------- shards


class ShardStore:
    """Numbered partial results of a resumable stage: ``shards/<stage>/00000.parquet``.

    A shard file exists only when it was written completely; resume by skipping the
    numbers in :meth:`done`.
    """

    def __init__(self, run_dir: RunDir, stage: str) -> None:
        _check_stage(stage)
        self.stage = stage
        self.dir = run_dir.path / "shards" / stage

    def path(self, i: int) -> Path:
        """The file of shard ``i``."""
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"shard index must be a non-negative integer, got {i!r}")
        return self.dir / f"{i:05d}.parquet"

    def write(self, i: int, table: pa.Table | pd.DataFrame) -> Path:
        """Atomically write shard ``i`` (replacing it if present)."""
        path = self.path(i)
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_parquet(path, _to_arrow(table).replace_schema_metadata(None))
        return path

    def done(self) -> set[int]:
        """The indices of the shards written so far."""
        if not self.dir.is_dir():
            return set()
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := _SHARD_RE.match(p.name))}

    def read(self, i: int) -> pa.Table:
        """Read shard ``i``."""
        return pq.read_table(self.path(i))

    def read_all(self) -> pa.Table:
        """All shards concatenated in index order (an empty table if there are none)."""
        indices = sorted(self.done())
        if not indices:
            return pa.table({})
        return pa.concat_tables([self.read(i) for i in indices], promote_options="default")

    def clear(self) -> None:
        """Delete every shard of this stage."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
