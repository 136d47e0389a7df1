"""The run directory held for the dashboard: read once, indexed, queried.

`RunData` reads the small tables with the report's loader (`lookuplens.report.data`),
builds the neuron and pair tables the overview sorts and filters, and answers the page
and API queries from them. The two large tables, attributions and labels, are never read
whole: a neuron's mean attributions and labels are read when a page needs them and kept
in small LRUs (`lookuplens.report.lazy.NeuronTables`, `RunData.by_neuron`). Everything
else is read-only after construction, so requests can share one instance across threads.
Ids are integers checked against the tables; no query ever names a file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from lookuplens.errors import UserError
from lookuplens.report.config import ReportConfig
from lookuplens.report.data import (
    RunTables,
    display_order,
    finite,
    load_run,
    neuron_rows,
    on_token_flags,
    pair_rows,
    pick_prompts,
    plan_report,
    primary_scores,
)
from lookuplens.report.details import NO_HEAD, Lookup, effect_summary
from lookuplens.report.lazy import NeuronTables
from lookuplens.report.overview import e_histogram_section, overview_section
from lookuplens.server.config import ServeConfig
from lookuplens.server.records import (
    Order,
    Page,
    contains,
    first_explanation,
    jsonable,
    record,
    sort_rows,
)
from lookuplens.store import RunDir, redact

log = logging.getLogger(__name__)

__all__ = ["NEURON_SORTS", "PAIR_SORTS", "NotFound", "RunData"]

NeuronKey = tuple[int, int]
PairKey = tuple[int, int, int, int]

NEURON_SORTS: tuple[str, ...] = (
    "layer",
    "neuron",
    "token",
    "group",
    "congruence",
    "congruence_z",
    "mechanism",
    "best_e",
    "effect",
    "n_examples",
    "n_kept",
)
"""Columns the neuron table sorts by."""

PAIR_SORTS: tuple[str, ...] = (
    "layer",
    "neuron",
    "token",
    "head_layer",
    "head",
    "active_rate",
    "mean_direct",
    "ks_stat",
    "mechanism",
    "e",
    "effect",
)
"""Columns the pair table sorts by."""

Group = Literal["tracked", "selected", "baseline", "all"]
KeptFilter = Literal["kept", "all"]

_NEURON_COLUMNS = [
    "layer",
    "neuron",
    "name",
    "token",
    "token_id",
    "group",
    "congruence",
    "congruence_z",
    "vocab_kurtosis",
    "mechanism",
    "best_e",
    "neuron_e",
    "effect",
    "n_examples",
    "n_kept",
    "top_head",
]
_PAIR_COLUMNS = [
    "layer",
    "neuron",
    "name",
    "token",
    "head_layer",
    "head",
    "head_name",
    "baseline",
    "kept",
    "active_rate",
    "n_train",
    "mean_direct",
    "ks_stat",
    "ks_pvalue",
    "mechanism",
    "e",
    "effect",
    "explanation",
]


class NotFound(UserError):
    """A neuron, pair or example id that the run does not hold (HTTP 404)."""


class RunData:
    """A run directory's tables in memory, with the dashboard's queries."""

    def __init__(self, run: RunDir, cfg: ServeConfig) -> None:
        self.run = run
        self.cfg = cfg
        self.meta: dict[str, object] = redact(run.meta)
        # run.json is redacted when written; redact again in case it was edited by hand
        t: RunTables = dataclasses.replace(load_run(run), meta=self.meta)
        self.tables = t
        self.lookup = Lookup.build(t)
        self.primary = primary_scores(t.get("scores"))
        plan = plan_report(t, ReportConfig(max_neurons=0, max_pairs=0, max_prompts=0))
        self.overview_html = str(overview_section(t, plan, ""))
        hist, _figures = e_histogram_section(t)
        self.histogram_html = str(hist)
        self._on_token: set[int] = set()
        self._examples_by_neuron = self._index_examples()
        self.by_neuron: NeuronTables | None = t.by_neuron
        self._e_pair, self._e_neuron = self._e_maps()
        self.pairs = self._pair_frame()
        self.neurons = self._neuron_frame()
        # membership by hash index, not sets of tuples: a large model's run has every
        # neuron of the searched layers (~460k on an 8B model) and ~200k pairs
        self._neuron_keys = pd.MultiIndex.from_arrays(
            [self.neurons.layer.astype("int64"), self.neurons.neuron.astype("int64")]
        )
        self._pair_keys = pd.MultiIndex.from_arrays(
            [
                self.pairs.layer.astype("int64"),
                self.pairs.neuron.astype("int64"),
                self.pairs.head_layer.astype("int64"),
                self.pairs["head"].astype("int64"),
            ]
        )
        log.info(
            "dashboard: %d neurons, %d pairs, %d prompts in memory",
            len(self.neurons),
            len(self.pairs),
            len(self.lookup.examples),
        )

    # ------------------------------------------------------------------ building

    def _index_examples(self) -> dict[NeuronKey, tuple[int, ...]]:
        ex = self.tables.get("examples")
        out: dict[NeuronKey, tuple[int, ...]] = {}
        if ex is None or ex.empty:
            return out
        for (layer, neuron), g in display_order(ex).groupby(["layer", "neuron"], sort=False):
            out[(int(layer), int(neuron))] = tuple(int(i) for i in g.example_id)
            self._on_token.update(
                int(i) for i, o in zip(g.example_id, on_token_flags(g), strict=True) if o
            )
        return out

    def _e_maps(self) -> tuple[dict[PairKey, float], dict[NeuronKey, float]]:
        scores = self.tables.get("scores")
        pair_e: dict[PairKey, float] = {}
        neuron_e: dict[NeuronKey, float] = {}
        if scores is None or scores.empty or self.primary is None:
            return pair_e, neuron_e
        s = scores[(scores.explainer == self.primary[0]) & (scores.scorer == self.primary[1])]
        for r in pair_rows(s).itertuples(index=False):
            e = finite(r.balanced_accuracy)
            if e is not None:
                pair_e[(int(r.layer), int(r.neuron), int(r.head_layer), int(r.head))] = e
        for r in neuron_rows(s).itertuples(index=False):
            e = finite(r.balanced_accuracy)
            if e is not None:
                neuron_e[(int(r.layer), int(r.neuron))] = e
        return pair_e, neuron_e

    def _pair_frame(self) -> pd.DataFrame:
        pairs = self.tables.get("pairs")
        if pairs is None or pairs.empty:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in _PAIR_COLUMNS}).astype(
                {"layer": "int64", "neuron": "int64", "head_layer": "int64", "head": "int64"}
            )
        df = pairs.copy()
        df["name"] = "L" + df.layer.astype(str) + "N" + df.neuron.astype(str)
        df["head_name"] = "L" + df.head_layer.astype(str) + "H" + df["head"].astype(str)
        keys = list(
            zip(
                df.layer.astype(int),
                df.neuron.astype(int),
                df.head_layer.astype(int),
                df["head"].astype(int),
                strict=True,
            )
        )
        df["e"] = [self._e_pair.get(k, math.nan) for k in keys]
        eff = self.lookup.head_effects
        df["effect"] = [
            float(np.mean(list(eff[k].values()))) if eff.get(k) else math.nan for k in keys
        ]
        expl = self.lookup.explanations
        df["explanation"] = [first_explanation(expl.get(k, []), self.primary) for k in keys]
        if "token" not in df.columns:
            tokens = self._token_map()
            df["token"] = [tokens.get((k[0], k[1]), "") for k in keys]
        for c in ("mean_direct", "baseline", "mechanism"):
            if c not in df.columns:
                df[c] = math.nan if c == "mean_direct" else (False if c == "baseline" else None)
        df["baseline"] = df.baseline.fillna(False).astype(bool)
        return df[_PAIR_COLUMNS].reset_index(drop=True)

    def _token_map(self) -> dict[NeuronKey, str]:
        n = self.tables.get("neurons")
        if n is None:
            return {}
        return {
            (int(a), int(b)): str(t) for a, b, t in zip(n.layer, n.neuron, n.token, strict=True)
        }

    def _neuron_frame(self) -> pd.DataFrame:
        n = self.tables.get("neurons")
        if n is None or n.empty:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in _NEURON_COLUMNS}).astype(
                {"layer": "int64", "neuron": "int64"}
            )
        df = n.copy()
        df["name"] = "L" + df.layer.astype(str) + "N" + df.neuron.astype(str)
        df["group"] = np.where(df.selected, "selected", np.where(df.baseline, "baseline", "other"))
        layers, neurons = df.layer.astype(int).tolist(), df.neuron.astype(int).tolist()

        def keys() -> Iterator[NeuronKey]:  # not held: ~460k neurons on an 8B model
            return zip(layers, neurons, strict=True)

        p = self.pairs
        mech: dict[NeuronKey, str] = {}
        kept: dict[NeuronKey, int] = {}
        best: dict[NeuronKey, float] = {}
        if not p.empty:
            by = [p.layer.astype(int), p.neuron.astype(int)]
            named = p.mechanism.map(lambda m: isinstance(m, str) and bool(m)).astype(bool)
            for (a, b), m in p.mechanism[named].groupby([x[named] for x in by]).first().items():
                mech[(int(a), int(b))] = str(m)
            is_kept = p.kept.astype(bool)
            for (a, b), c in is_kept[is_kept].groupby([x[is_kept] for x in by]).size().items():
                kept[(int(a), int(b))] = int(c)
            e = pd.to_numeric(p.e, errors="coerce")
            has_e = e.notna()
            for (a, b), v in e[has_e].groupby([x[has_e] for x in by]).max().items():
                best[(int(a), int(b))] = float(v)
        for k, e_n in self._e_neuron.items():
            best[k] = max(best.get(k, -math.inf), e_n)
        eff: dict[NeuronKey, float] = {}
        effects = self.tables.get("effects")
        if effects is not None and not effects.empty:
            z = effects[effects.intervention == "neuron_zero"]
            for (a, b), v in z.groupby(["layer", "neuron"]).delta_logprob.mean().items():
                eff[(int(a), int(b))] = float(v)
        top: dict[NeuronKey, str] = {}
        if self.tables.present("attributions") and self.by_neuron is not None:
            for k, (hl, h) in self.by_neuron.top_heads().items():
                top[k] = f"L{hl}H{h}"
        df["mechanism"] = [mech.get(k) for k in keys()]
        df["best_e"] = [best.get(k, math.nan) for k in keys()]
        df["neuron_e"] = [self._e_neuron.get(k, math.nan) for k in keys()]
        df["effect"] = [eff.get(k, math.nan) for k in keys()]
        df["n_examples"] = [len(self._examples_by_neuron.get(k, ())) for k in keys()]
        df["n_kept"] = [kept.get(k, 0) for k in keys()]
        df["top_head"] = [top.get(k) for k in keys()]
        return df[_NEURON_COLUMNS].reset_index(drop=True)

    # ------------------------------------------------------------------ queries

    def has_neuron(self, layer: int, neuron: int) -> bool:
        return bool((layer, neuron) in self._neuron_keys)

    def has_pair(self, layer: int, neuron: int, head_layer: int, head: int) -> bool:
        return bool((layer, neuron, head_layer, head) in self._pair_keys)

    def require_neuron(self, layer: int, neuron: int) -> None:
        if not self.has_neuron(layer, neuron):
            raise NotFound(f"this run has no neuron L{layer}N{neuron}")

    def require_pair(self, layer: int, neuron: int, head_layer: int, head: int) -> None:
        if not self.has_pair(layer, neuron, head_layer, head):
            raise NotFound(
                f"this run has no pair of head L{head_layer}H{head} and neuron L{layer}N{neuron}"
            )

    def neuron_page(
        self,
        q: str = "",
        layer: int | None = None,
        group: Group = "tracked",
        sort: str = "congruence",
        order: Order = "desc",
        page: int = 1,
        per_page: int | None = None,
    ) -> Page:
        """A page of the neuron table: `q` matches the name (``L1N5``) or the token."""
        df = self.neurons
        if group == "tracked":
            df = df[df.group != "other"]
        elif group != "all":
            df = df[df.group == group]
        if layer is not None:
            df = df[df.layer == layer]
        needle = q.strip().lower()
        if needle:
            df = df[(df.name.str.lower() == needle) | contains(df.token, needle)]
        return self._page(df, sort, order, page, per_page, NEURON_SORTS, ["layer", "neuron"])

    def pair_page(
        self,
        q: str = "",
        layer: int | None = None,
        kept: KeptFilter = "kept",
        sort: str = "e",
        order: Order = "desc",
        page: int = 1,
        per_page: int | None = None,
    ) -> Page:
        """A page of the pair table: `q` matches neuron or head names, tokens, explanations."""
        df = self.pairs
        if kept == "kept":
            df = df[df.kept.astype(bool)]
        if layer is not None:
            df = df[df.layer == layer]
        needle = q.strip().lower()
        if needle:
            df = df[
                (df.name.str.lower() == needle)
                | (df.head_name.str.lower() == needle)
                | contains(df.token, needle)
                | contains(df.explanation, needle)
            ]
        return self._page(
            df, sort, order, page, per_page, PAIR_SORTS, ["layer", "neuron", "head_layer", "head"]
        )

    def _page(
        self,
        df: pd.DataFrame,
        sort: str,
        order: Order,
        page: int,
        per_page: int | None,
        allowed: Sequence[str],
        tie: list[str],
    ) -> Page:
        if sort not in allowed:
            raise UserError(f"cannot sort by {sort!r}; choose one of {', '.join(allowed)}")
        size = self.cfg.page_size if per_page is None else per_page
        if not 1 <= size <= self.cfg.max_page_size:
            raise UserError(f"per_page must lie between 1 and {self.cfg.max_page_size}")
        if page < 1:
            raise UserError("page must be at least 1")
        total = len(df)
        start = (page - 1) * size
        part = sort_rows(df, sort, order, tie).iloc[start : start + size]
        rows = [record(r) for r in part.to_dict("records")]
        return Page(rows, total, page, size, sort, order)

    def example(self, example_id: int) -> dict[str, object]:
        """One prompt of the examples table (its tokens as a list of ids)."""
        ex = self.lookup.examples.get(example_id)
        if ex is None:
            raise NotFound(f"this run has no example {example_id}")
        return record(ex)

    def example_tokens(self, example_id: int) -> list[int]:
        toks = self.lookup.examples[example_id].get("tokens")
        return [int(x) for x in toks] if toks is not None else []  # type: ignore[attr-defined]

    def neuron_examples(self, layer: int, neuron: int, limit: int | None = None) -> list[int]:
        """The neuron's prompts by firing rank; with `limit`, as the report picks them
        (`lookuplens.report.data.pick_prompts`: a few on-token prompts among them)."""
        ids = self._examples_by_neuron.get((layer, neuron), ())
        if limit is None:
            return list(ids)
        return list(pick_prompts(ids, [i in self._on_token for i in ids], limit))

    def _example_brief(self, example_id: int) -> dict[str, object]:
        return record(self.lookup.examples[example_id], drop=("tokens",))

    def heads(self, layer: int, neuron: int) -> list[dict[str, object]]:
        """The neuron's upstream heads, by mean direct attribution (largest first): the
        mean of each attribution method, and the pair's statistics where there is one."""
        key = (layer, neuron)
        att = self.lookup.attributions.get(key, {})
        pairs = self.lookup.pairs.get(key, {})
        heads = list(att) + [h for h in pairs if h not in att]

        def rank(h: tuple[int, int]) -> tuple[float, tuple[int, int]]:
            v = att.get(h, {}).get("direct")
            if v is None:
                v = finite(pairs.get(h, {}).get("mean_direct"))
            return (-v if v is not None and math.isfinite(v) else math.inf, h)

        heads.sort(key=rank)
        out = []
        for hl, h in heads:
            pr = pairs.get((hl, h))
            eff = self.lookup.head_effects.get((*key, hl, h))
            out.append(
                {
                    "head_layer": hl,
                    "head": h,
                    "name": f"L{hl}H{h}",
                    "methods": jsonable(att.get((hl, h), {})),
                    "active_rate": None if pr is None else finite(pr.get("active_rate")),
                    "kept": None if pr is None else bool(pr.get("kept")),
                    "ks_stat": None if pr is None else finite(pr.get("ks_stat")),
                    "ks_pvalue": None if pr is None else finite(pr.get("ks_pvalue")),
                    "ablation_delta_logprob": float(np.mean(list(eff.values()))) if eff else None,
                    "e": self._e_pair.get((*key, hl, h)),
                    "has_pair": pr is not None,
                }
            )
        return out

    def neuron_effects(self, layer: int, neuron: int) -> list[dict[str, object]]:
        """Mean effect of each intervention on the neuron (the verify stage)."""
        rows = effect_summary(self.lookup.neuron_effects.get((layer, neuron)))
        return [jsonable(r) for r in rows]  # type: ignore[misc]

    def _explained(self, key: PairKey) -> dict[str, object]:
        return {
            "explanations": [record(r) for r in self.lookup.explanations.get(key, [])],
            "scores": [record(r) for r in self.lookup.scores.get(key, [])],
        }

    def neuron_detail(self, layer: int, neuron: int) -> dict[str, object]:
        """Everything the neuron page shows that the tables hold."""
        self.require_neuron(layer, neuron)
        row = self.neurons[(self.neurons.layer == layer) & (self.neurons.neuron == neuron)]
        info = self.tables.tables["neurons"]
        raw = info[(info.layer == layer) & (info.neuron == neuron)].iloc[0].to_dict()
        ids = self.neuron_examples(layer, neuron)
        pairs = self.pairs[(self.pairs.layer == layer) & (self.pairs.neuron == neuron)]
        pairs = sort_rows(pairs, "mean_direct", "desc", ["head_layer", "head"])
        heads = self.heads(layer, neuron)
        return {
            "layer": layer,
            "neuron": neuron,
            "name": f"L{layer}N{neuron}",
            "summary": record(row.iloc[0].to_dict()),
            "info": record(raw),
            "stats": jsonable(self.lookup.stats.get((layer, neuron))),
            "n_examples": len(ids),
            "examples": [self._example_brief(i) for i in ids[: self.cfg.max_prompts]],
            "methods": list(self.lookup.methods),
            "n_heads": len(heads),
            "heads": heads[: self.cfg.max_heads],
            "effects": self.neuron_effects(layer, neuron),
            "pairs": [record(r) for r in pairs.to_dict("records")],
            **self._explained((layer, neuron, NO_HEAD, NO_HEAD)),
        }

    def pair_labels(self, layer: int, neuron: int, head_layer: int, head: int) -> dict[int, bool]:
        """example_id -> whether the head is active on it (every labelled prompt)."""
        if self.by_neuron is None:
            return {}
        return self.by_neuron.pair_labels(layer, neuron, head_layer, head)

    def pair_examples(
        self, layer: int, neuron: int, head_layer: int, head: int
    ) -> tuple[list[int], list[int]]:
        """The neuron's prompts where the head is active, and the others (by rank)."""
        labels = self.pair_labels(layer, neuron, head_layer, head)
        ids = self.neuron_examples(layer, neuron)
        active = [i for i in ids if labels.get(i) is True]
        inactive = [i for i in ids if labels.get(i) is not True]
        return active, inactive

    def pair_detail(self, layer: int, neuron: int, head_layer: int, head: int) -> dict[str, object]:
        """Everything the pair page shows that the tables hold."""
        self.require_pair(layer, neuron, head_layer, head)
        key = (layer, neuron, head_layer, head)
        p = self.pairs
        row = p[
            (p.layer == layer)
            & (p.neuron == neuron)
            & (p.head_layer == head_layer)
            & (p["head"] == head)
        ].iloc[0]
        raw = self.lookup.pairs.get((layer, neuron), {}).get((head_layer, head), {})
        labels = self.pair_labels(*key)
        eff = self.lookup.head_effects.get(key, {})
        d_act = [v for i, v in eff.items() if labels.get(i) is True]
        d_in = [v for i, v in eff.items() if labels.get(i) is False]
        active, inactive = self.pair_examples(*key)
        cap = self.cfg.max_prompts
        return {
            "layer": layer,
            "neuron": neuron,
            "head_layer": head_layer,
            "head": head,
            "name": f"L{head_layer}H{head}-L{layer}N{neuron}",
            "summary": record(row.to_dict()),
            "info": record(raw),
            "e": self._e_pair.get(key),
            "ablation": {
                "all": float(np.mean(list(eff.values()))) if eff else None,
                "active": float(np.mean(d_act)) if d_act else None,
                "inactive": float(np.mean(d_in)) if d_in else None,
            },
            "n_active": len(active),
            "n_inactive": len(inactive),
            "active": [self._example_brief(i) for i in active[:cap]],
            "inactive": [self._example_brief(i) for i in inactive[:cap]],
            **self._explained(key),
        }

    def e_distribution(self) -> dict[str, object]:
        """E (balanced accuracy) of the selected and the random-baseline rows, for pairs
        and for neurons alone, under the primary explainer and scorer."""
        out: dict[str, object] = {"explainer": None, "scorer": None}
        scores = self.tables.get("scores")
        if scores is None or self.primary is None:
            return {**out, "pairs": None, "neurons": None}
        out["explainer"], out["scorer"] = self.primary
        s = scores[(scores.explainer == self.primary[0]) & (scores.scorer == self.primary[1])]
        for kind, part in (("pairs", pair_rows(s)), ("neurons", neuron_rows(s))):
            base = part.baseline.astype(bool)
            groups = {}
            for name, g in (("selected", part[~base]), ("baseline", part[base])):
                vals = [x for x in (finite(v) for v in g.balanced_accuracy) if x is not None]
                groups[name] = {
                    "n": len(vals),
                    "mean": float(np.mean(vals)) if vals else None,
                    "values": vals,
                    "unscored": int(g.balanced_accuracy.isna().sum()),
                }
            out[kind] = groups
        return out

    def run_info(self) -> dict[str, object]:
        """run.json (secrets redacted) with the headline numbers."""
        from lookuplens.summary import key_numbers

        meta = self.meta
        return jsonable(
            {
                "path": str(self.run.path),
                "name": self.run.path.name,
                "format_version": meta.get("format_version"),
                "created_at": meta.get("created_at"),
                "model": meta.get("model"),
                "corpus": meta.get("corpus"),
                "seed": meta.get("seed"),
                "stages": meta.get("stages"),
                "versions": meta.get("versions"),
                "config": meta.get("config"),
                "missing_stages": self.tables.missing_stages(),
                "unreadable_tables": self.tables.problems,
                "numbers": redact(key_numbers(self.run)),
                "primary_scores": list(self.primary) if self.primary else None,
                "n_neurons_tracked": int((self.neurons.group != "other").sum()),
                "n_pairs": len(self.pairs),
                "n_pairs_kept": int(self.pairs.kept.astype(bool).sum()),
            }
        )  # type: ignore[return-value]
