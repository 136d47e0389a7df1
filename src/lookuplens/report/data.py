"""The run directory's tables as the report reads them, and what the report shows.

`load_run` reads every table that exists (a missing table is not an error: the report
shows what exists and says which stages are missing), except the two large ones,
attributions and labels, which it opens for reading a neuron at a time
(`lookuplens.report.lazy.NeuronTables`). `plan_report` picks the neurons, pairs and
prompts the report shows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lookuplens.errors import RunDirError
from lookuplens.report.config import ReportConfig
from lookuplens.report.lazy import NeuronTables
from lookuplens.store import DERIVED_TABLES, STAGE_TABLES, STAGES, RunDir

log = logging.getLogger(__name__)

__all__ = [
    "METHOD_ORDER",
    "REPORT_TABLES",
    "NeuronPlan",
    "PairPlan",
    "ReportPlan",
    "RunTables",
    "load_run",
    "plan_report",
]

REPORT_TABLES: tuple[str, ...] = (
    "neurons",
    "activation_stats",
    "examples",
    "attributions",
    "labels",
    "pairs",
    "effects",
    "explanations",
    "scores",
    "findings",
)
"""The tables the report reads (``firings`` is summarised by ``examples``; attributions and
labels are read a neuron at a time, see `RunTables.by_neuron`)."""

LAZY_TABLES: tuple[str, ...] = ("attributions", "labels")
"""The tables `load_run` never reads whole."""

METHOD_ORDER: tuple[str, ...] = (
    "direct",
    "raw",
    "zero_ablation",
    "mean_ablation",
    "resample_ablation",
    "attribution_patching",
    "path_patching",
)
"""Attribution methods in the order the report lists them (unknown ones follow)."""

NeuronKey = tuple[int, int]
PairKey = tuple[int, int, int, int]


@dataclass(frozen=True)
class RunTables:
    """What the report reads from a run directory."""

    path: Path
    """The run directory."""
    meta: dict[str, object]
    """run.json's content."""
    tables: dict[str, pd.DataFrame]
    """Each table that exists and could be read (attributions and labels excluded, see
    below)."""
    by_neuron: NeuronTables | None = None
    """The attributions (as means) and labels, read a neuron at a time."""
    problems: dict[str, str] = field(default_factory=dict)
    """Tables that exist but could not be read, with the reason."""

    def get(self, name: str) -> pd.DataFrame | None:
        """Table `name`, or None when it is missing or unreadable (always None for the
        attributions and labels: see `by_neuron`)."""
        return self.tables.get(name)

    def present(self, name: str) -> bool:
        """Whether table `name` was read (attributions, labels: whether they can be)."""
        if name == "attributions":
            return self.by_neuron is not None and self.by_neuron.has_attributions
        if name == "labels":
            return self.by_neuron is not None and self.by_neuron.has_labels
        return name in self.tables

    def missing_stages(self) -> list[str]:
        """Stages (before the report) that have not written all their tables."""
        out = []
        for stage in STAGES:
            if stage == "report":
                continue
            tables = [t for t in STAGE_TABLES[stage] if "." not in t and t not in DERIVED_TABLES]
            if stage == "scan":
                tables = ["activation_stats"]  # firings are not read by the report
            # run directories from before the mismatched-explanation control lack it
            tables = [x for x in tables if x != "score_controls"]
            if not all(self.present(t) for t in tables):
                out.append(stage)
        return out


def load_run(run: RunDir) -> RunTables:
    """Read every table the report uses that exists in `run` (missing ones are skipped;
    unreadable ones are recorded in `RunTables.problems` and logged); the attributions
    and labels are only opened (`RunTables.by_neuron`)."""
    tables: dict[str, pd.DataFrame] = {}
    problems: dict[str, str] = {}
    for name in REPORT_TABLES:
        if name in LAZY_TABLES or not run.has_table(name):
            continue
        try:
            table = run.read_table(name)
        except RunDirError as e:  # TableSchemaError included
            log.warning("report: skipping table %s: %s", name, e)
            problems[name] = str(e)
            continue
        tables[name] = table.to_pandas()
    by_neuron = NeuronTables(run, tables.get("examples"))
    problems.update(by_neuron.problems)
    return RunTables(run.path, run.meta, tables, by_neuron, problems)


# ------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class NeuronPlan:
    """One neuron the report gives a section."""

    layer: int
    neuron: int
    info: dict[str, object]
    """Its row of the neurons table."""
    example_ids: tuple[int, ...]
    """The prompts shown (by firing rank)."""
    n_examples: int
    """How many prompts the neuron has in all."""

    @property
    def key(self) -> NeuronKey:
        return (self.layer, self.neuron)

    @property
    def name(self) -> str:
        return f"L{self.layer}N{self.neuron}"


@dataclass(frozen=True)
class PairPlan:
    """One kept (neuron, head) pair the report gives a section."""

    layer: int
    neuron: int
    head_layer: int
    head: int
    info: dict[str, object]
    """Its row of the pairs table."""
    example_ids: tuple[int, ...]
    """The prompts shown: active ones first, then inactive ones."""
    active: tuple[bool | None, ...]
    """Whether the head is active on each shown prompt (None: no label)."""
    e: float | None
    """Its balanced accuracy E under the primary explainer and scorer, if scored."""
    labels: dict[int, bool] = field(default_factory=dict)
    """Whether the head is active, for every labelled prompt of the neuron."""

    @property
    def key(self) -> PairKey:
        return (self.layer, self.neuron, self.head_layer, self.head)

    @property
    def name(self) -> str:
        return f"L{self.layer}N{self.neuron}-L{self.head_layer}H{self.head}"


@dataclass(frozen=True)
class ReportPlan:
    """What the report shows."""

    neurons: tuple[NeuronPlan, ...]
    pairs: tuple[PairPlan, ...]
    n_neurons_total: int
    """Selected and baseline neurons that could have been shown."""
    n_pairs_total: int
    """Kept pairs that could have been shown."""
    primary_scores: tuple[str, str] | None
    """The (explainer, scorer) whose E orders the pairs and fills the histogram."""

    @property
    def neuron_keys(self) -> set[NeuronKey]:
        return {p.key for p in self.neurons}

    @property
    def pair_keys(self) -> set[PairKey]:
        return {p.key for p in self.pairs}


def is_missing(value: object) -> bool:
    """None or NaN (pandas turns nullable integers into floats with NaN)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def finite(value: object) -> float | None:
    """`value` as a finite float, or None."""
    if is_missing(value) or isinstance(value, (bool, str)):
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def primary_scores(scores: pd.DataFrame | None) -> tuple[str, str] | None:
    """The (explainer, scorer) with the most scored rows (ties: by name)."""
    if scores is None or scores.empty:
        return None
    counts = scores.groupby(["explainer", "scorer"]).size().reset_index(name="n")
    counts = counts.sort_values(["n", "explainer", "scorer"], ascending=[False, True, True])
    row = counts.iloc[0]
    return (str(row.explainer), str(row.scorer))


def pair_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows about a (neuron, head) pair (head set), as opposed to a neuron alone."""
    return df[df["head"].notna() & df["head_layer"].notna()]


def neuron_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows about a neuron alone (head null)."""
    return df[df["head"].isna() | df["head_layer"].isna()]


def _pair_e(t: RunTables, combo: tuple[str, str] | None) -> dict[PairKey, float]:
    scores = t.get("scores")
    if scores is None or combo is None:
        return {}
    s = pair_rows(scores)
    s = s[(s.explainer == combo[0]) & (s.scorer == combo[1])]
    out: dict[PairKey, float] = {}
    for r in s.itertuples(index=False):
        e = finite(r.balanced_accuracy)
        if e is not None:
            out[(int(r.layer), int(r.neuron), int(r.head_layer), int(r.head))] = e
    return out


def _interleave(active: list[int], inactive: list[int], cap: int) -> list[int]:
    """Half active, half inactive (filling from the other side when one runs short)."""
    n_act = min(len(active), max(cap - len(inactive), (cap + 1) // 2))
    n_in = min(len(inactive), cap - n_act)
    return active[:n_act] + inactive[:n_in]


_PAIR_COLS = ["layer", "neuron", "head_layer", "head"]


def _labels_by_pair(t: RunTables, pairs: pd.DataFrame) -> dict[PairKey, dict[int, bool]]:
    """example_id -> active, for each of `pairs` (read a neuron at a time)."""
    if t.by_neuron is None or pairs.empty:
        return {}
    keys = pairs[_PAIR_COLS].astype("int64").drop_duplicates()
    return t.by_neuron.labels_of_pairs(
        (int(a), int(b), int(c), int(d))
        for a, b, c, d in zip(keys.layer, keys.neuron, keys.head_layer, keys["head"], strict=True)
    )


def display_order(examples: pd.DataFrame) -> pd.DataFrame:
    """Examples as reports list them: top prompts by rank, then contrast prompts (rank -1)."""
    examples = examples.assign(_contrast=examples.get("kind", "top") == "contrast")
    cols = [c for c in ("_contrast", "rank", "example_id") if c in examples.columns]
    return examples.sort_values(cols, kind="stable")


ON_TOKEN_SHOWN = 2
"""On-token prompts a neuron's section shows at most (in place of its weakest top ones)."""


def pick_prompts(ids: Sequence[int], on_token: Sequence[bool], n: int) -> tuple[int, ...]:
    """The first `n` of a neuron's example ids (in `display_order`), with up to
    `ON_TOKEN_SHOWN` of its on-token prompts among them: a look-up that shows only where
    the neuron's token comes next is then on the page too."""
    on = [int(i) for i, o in zip(ids, on_token, strict=True) if o]
    rest = [int(i) for i, o in zip(ids, on_token, strict=True) if not o]
    k = min(ON_TOKEN_SHOWN, len(on), n // 2)
    return (*rest[: n - k], *on[:k])


def on_token_flags(g: pd.DataFrame) -> list[bool]:
    """Each example's ``on_token`` (False where the table has no such column)."""
    if "on_token" not in g.columns:
        return [False] * len(g)
    return [bool(x) for x in g.on_token.fillna(False)]


def neuron_prompts(g: pd.DataFrame, n: int) -> tuple[int, ...]:
    """`pick_prompts` of a neuron's examples `g`, in `display_order`."""
    return pick_prompts(list(g.example_id), on_token_flags(g), n)


def plan_report(t: RunTables, cfg: ReportConfig) -> ReportPlan:
    """Pick the neurons (selected first, then baseline, each by congruence), the kept
    pairs (by E when scored, else by active rate near 0.5 and mean direct attribution)
    and the prompts shown for each."""
    neurons = t.get("neurons")
    examples = t.get("examples")
    by_neuron: dict[NeuronKey, pd.DataFrame] = {}
    if examples is not None and not examples.empty:
        for (layer, neuron), g in display_order(examples).groupby(["layer", "neuron"], sort=False):
            by_neuron[(int(layer), int(neuron))] = g

    n_plans: list[NeuronPlan] = []
    n_total = 0
    if neurons is not None:
        tracked = neurons[neurons.selected | (neurons.baseline & cfg.include_baseline)].copy()
        tracked["_group"] = (~tracked.selected).astype(int)
        tracked = tracked.sort_values(
            ["_group", "congruence", "layer", "neuron"],
            ascending=[True, False, True, True],
            kind="stable",
        )
        n_total = len(tracked)
        for row in tracked.head(cfg.max_neurons).itertuples(index=False):
            key = (int(row.layer), int(row.neuron))
            g = by_neuron.get(key)
            ids = () if g is None else neuron_prompts(g, cfg.max_prompts)
            info = {k: v for k, v in row._asdict().items() if not k.startswith("_")}
            n_plans.append(NeuronPlan(key[0], key[1], info, ids, 0 if g is None else len(g)))

    combo = primary_scores(t.get("scores"))
    e_by_pair = _pair_e(t, combo)
    p_plans: list[PairPlan] = []
    p_total = 0
    pairs = t.get("pairs")
    if pairs is not None and not pairs.empty:
        kept = pairs[pairs.kept].copy()
        if not cfg.include_baseline and "baseline" in kept.columns:
            kept = kept[~kept.baseline.astype(bool)]
        p_total = len(kept)
        keys = list(
            zip(
                kept.layer.astype(int),
                kept.neuron.astype(int),
                kept.head_layer.astype(int),
                kept["head"].astype(int),
                strict=True,
            )
        )
        kept["_e"] = [e_by_pair.get(k, math.nan) for k in keys]
        kept["_has_e"] = kept._e.notna().astype(int)
        kept["_closeness"] = (kept.active_rate - 0.5).abs()
        direct = kept.mean_direct if "mean_direct" in kept.columns else 0.0
        kept["_direct"] = pd.to_numeric(direct, errors="coerce").fillna(-math.inf)
        kept = kept.sort_values(
            ["_has_e", "_e", "_closeness", "_direct", "layer", "neuron", "head_layer", "head"],
            ascending=[False, False, True, False, True, True, True, True],
            kind="stable",
        )
        shown = kept.head(cfg.max_pairs)
        lab_by_pair = _labels_by_pair(t, shown)
        for row in shown.itertuples(index=False):
            pkey: PairKey = (int(row.layer), int(row.neuron), int(row.head_layer), int(row.head))
            g = by_neuron.get((pkey[0], pkey[1]))
            ex_ids = [] if g is None else [int(i) for i in g.example_id]
            lab = lab_by_pair.get(pkey, {})
            act = [i for i in ex_ids if lab.get(i) is True]
            inact = [i for i in ex_ids if lab.get(i) is not True]
            chosen = _interleave(act, inact, cfg.max_prompts)
            info = {k: v for k, v in row._asdict().items() if not k.startswith("_")}
            p_plans.append(
                PairPlan(
                    *pkey,
                    info=info,
                    example_ids=tuple(chosen),
                    active=tuple(lab.get(i) for i in chosen),
                    e=e_by_pair.get(pkey),
                    labels=lab,
                )
            )
    return ReportPlan(tuple(n_plans), tuple(p_plans), n_total, p_total, combo)
