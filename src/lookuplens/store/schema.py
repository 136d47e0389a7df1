"""The run directory's tables: their required columns and types, and the check that
conforms a table to them before it is written or after it is read."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from lookuplens.errors import TableSchemaError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMN_DOCS",
    "FORMAT_VERSION",
    "NULLABLE_COLUMNS",
    "STAGES",
    "DERIVED_TABLES",
    "ROW_GROUP_ROWS",
    "STAGE_TABLES",
    "TABLE_COLUMNS",
    "TABLE_SORT",
    "TABLE_STAGE",
    "VIEWS_ROW_GROUP_ROWS",
    "check_stage",
    "conform_columns",
    "conform_table",
    "required_columns",
    "table_schema",
    "to_arrow",
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
    "attribute": ("attributions", "labels", "pairs", "attribution_means"),
    "verify": ("effects", "findings"),
    "explain": ("explanations",),
    "score": ("scores", "score_controls"),
    "report": ("views", "report.html"),
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
    "attribution_means": {
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "method": _STR,
        "mean": _F64,
        "n": _I64,
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
    "views": {
        "kind": _STR,
        "layer": _I64,
        "neuron": _I64,
        "head_layer": _I64,
        "head": _I64,
        "example_id": _I64,
        "token_ids": pa.list_(_I64),
        "tokens": pa.list_(_STR),
        "values": pa.list_(_F64),
    },
}
"""Required columns and their types, per table. Tables may carry extra columns."""

TABLE_SORT: dict[str, tuple[str, ...]] = {
    "attributions": ("layer", "neuron", "example_id", "head_layer", "head", "method"),
    "labels": ("layer", "neuron", "example_id", "head_layer", "head"),
    "attribution_means": ("layer", "neuron", "head_layer", "head", "method"),
    "views": ("layer", "neuron"),
}
"""The tables read a neuron at a time, written sorted by these columns in row groups of
`ROW_GROUP_ROWS` rows (`VIEWS_ROW_GROUP_ROWS` for ``views``, whose rows hold whole
prompts), so that a read filtered on (layer, neuron) skips the row groups whose
statistics rule the neuron out. Files written before 2026-12-05 are unsorted and still
read (a filtered read then scans them whole). The sort is stable: ``views`` keeps its
rows' order within a neuron (the order the prompts are shown in)."""

ROW_GROUP_ROWS = 65_536
"""Rows per Parquet row group of the tables in `TABLE_SORT`."""

VIEWS_ROW_GROUP_ROWS = 1_024
"""Rows per Parquet row group of ``views`` (each row a prompt's tokens and values)."""

DERIVED_TABLES: frozenset[str] = frozenset({"attribution_means"})
"""Tables computed from other tables for fast reading (``attribution_means`` from
``attributions``): written since 2026-12-05, so older run directories lack them and
readers fall back to computing them; they do not count towards a stage's completeness."""

COLUMN_DOCS: dict[str, dict[str, str]] = {
    "attribution_means": {
        "layer": "The neuron's layer.",
        "neuron": "The neuron's index in its layer.",
        "head_layer": "The upstream head's layer.",
        "head": "The upstream head's index in its layer.",
        "method": "The attribution method (as attributions.method).",
        "mean": "The mean of attributions.value over the neuron's top prompts (all of its "
        "prompts when the examples table has no kind column).",
        "n": "How many attributions rows the mean is over.",
    },
    "views": {
        "kind": "activation: a prompt shown for its neuron; attention: a prompt shown for a "
        "(neuron, head) pair; promoted, suppressed: a neuron's vocabulary.",
        "layer": "The neuron's layer.",
        "neuron": "The neuron's index in its layer.",
        "head_layer": "The head's layer (attention rows; null otherwise).",
        "head": "The head's index in its layer (attention rows; null otherwise).",
        "example_id": "The prompt, an example_id of the examples table (activation and "
        "attention rows; null for the vocabulary).",
        "token_ids": "The prompt's token ids (as examples.tokens), or the promoted (largest "
        "first) or suppressed (most negative first) token ids.",
        "tokens": "The text of each token as the model's tokenizer shows it, so that the run "
        "directory renders without the model.",
        "values": "One value per token: the neuron's activation (mlp.hook_post) at the "
        "token; the head's attention weight from the last token (the firing position) to "
        "it; or the congruence W_out[neuron] @ W_U of the vocabulary token.",
    },
}
"""What each column means, for the tables not described in CONVENTIONS.md. ``views``
(written by the report stage) holds what the report and the dashboard's read-only pages
show from the model, so a run directory renders without it (`lookuplens.report.views`)."""

NULLABLE_COLUMNS: dict[str, frozenset[str]] = {
    # neuron-level rows have no head; failed rows (status column) have no explanation/score
    "explanations": frozenset({"llm_model", "head_layer", "head", "explanation"}),
    "scores": frozenset(
        {"auroc", "head_layer", "head", "tp", "fp", "tn", "fn", "balanced_accuracy"}
    ),
    "score_controls": frozenset({"auroc", "tp", "fp", "tn", "fn", "balanced_accuracy"}),
    "findings": frozenset({"ks_stat"}),
    # attention rows name a head and a prompt, vocabulary rows neither
    "views": frozenset({"head_layer", "head", "example_id"}),
}
"""Required columns that may hold nulls; every other required column may not."""


TABLE_STAGE: dict[str, str] = {t: s for s, ts in STAGE_TABLES.items() for t in ts}
"""The stage that writes each table."""


def table_schema(name: str) -> pa.Schema:
    """The required columns of table ``name`` as an arrow schema (with nullability)."""
    columns = required_columns(name)
    nullable = NULLABLE_COLUMNS.get(name, frozenset())
    return pa.schema([pa.field(c, t, nullable=c in nullable) for c, t in columns.items()])


def required_columns(name: str) -> dict[str, pa.DataType]:
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


def to_arrow(table: pa.Table | pd.DataFrame) -> pa.Table:
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
    columns = required_columns(name)
    t = to_arrow(table)
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
    return _conform(name, t, columns)


def conform_columns(name: str, table: pa.Table | pd.DataFrame, complete: bool = False) -> pa.Table:
    """:func:`conform_table` for a table read with some of the columns: the required
    columns it has are checked and cast (and come first), the ones it lacks are not
    asked for. With `complete`, exactly :func:`conform_table`."""
    if complete:
        return conform_table(name, table)
    t = to_arrow(table)
    columns = {c: typ for c, typ in required_columns(name).items() if c in t.column_names}
    return _conform(name, t, columns)


def _conform(name: str, t: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    names = t.column_names
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


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
