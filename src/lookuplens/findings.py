"""The run's headline findings: (neuron, head, cue) triples that pass its causal tests.

A (neuron, head) pair is a finding when the verify stage's cue swaps show the head
carries a looked-up word into the neuron: on the neuron's top prompts, the prompt's cue
(an earlier word whose swap for another filler of its slot removes at least
``VerifyConfig.swap_min_drop`` of the activation) is swapped and only the head's output
from that run is patched into the clean run (``head_source_swap`` rows of ``effects``;
a prompt with several cues counts once, with the cue the head carries most of). The pair
passes when, over at least `FindingsConfig.min_swaps` such prompts, the median share of
the neuron's activation the patch removes is at least `min_share`, at least
`min_fraction` of the prompts lose that much, and the median change of log p(token) is
below `max_delta_logprob` (the look-up drives the prediction of the neuron's token, not
only the neuron). The cue is what the head carries: the words swapped out, most frequent
first.

The test runs on two sets of prompts apart, and a pair passes on either: the neuron's
strongest firings, and its *on-token* prompts (``examples.on_token``: firings where the
neuron's token came next, `lookuplens.scan`), where a neuron that fires hardest in some
other context does the job its token names. Mixing them would let one set's median hide
the other's look-up. ``prompts`` says which set the finding rests on (the strongest firings
when both pass: the larger set, and the paper's).

Each finding carries its evidence: how many prompts were swapped, the median share
removed and change of log p(token), the share of prompts that pass, the zero-ablation KS
statistic of the pair (when tested) and whether the 25-75% filter kept it. Written as
``findings.parquet``, one row per finding, strongest first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

FINDINGS_SCHEMA = pa.schema(
    [
        ("layer", pa.int64()),
        ("neuron", pa.int64()),
        ("token", pa.string()),
        ("baseline", pa.bool_()),
        ("head_layer", pa.int64()),
        ("head", pa.int64()),
        ("cue", pa.string()),
        ("cue_token_ids", pa.list_(pa.int64())),
        ("n_swapped", pa.int64()),
        ("median_share_removed", pa.float64()),
        ("fraction_removed", pa.float64()),
        ("median_delta_logprob", pa.float64()),
        ("ks_stat", pa.float64()),
        ("kept", pa.bool_()),
        ("prompts", pa.string()),
    ]
)
"""Columns of ``findings.parquet``. ``cue``: up to five words the head reads, most
frequent first, comma-separated; ``cue_token_ids`` all of them in that order."""


@dataclass(frozen=True)
class FindingsConfig:
    """When a (neuron, head) pair counts as a finding."""

    min_share: float = 0.2
    """Share of the neuron's activation the cue swap must remove on a prompt."""
    min_fraction: float = 0.5
    """Share of the swapped prompts on which it must remove that much (and the median
    must reach `min_share`)."""
    min_swaps: int = 3
    """Fewest swapped prompts a finding rests on."""
    max_delta_logprob: float = 0.0
    """The swap's median change of log p(token) must be below this."""

    def __post_init__(self) -> None:
        if not 0 < self.min_share <= 1 or not 0 < self.min_fraction <= 1:
            raise ValueError("min_share and min_fraction must be in (0, 1]")
        if self.min_swaps < 1:
            raise ValueError(f"min_swaps must be at least 1, got {self.min_swaps}")


def find_findings(
    effects: pa.Table,
    examples: pa.Table,
    neurons: pa.Table,
    pairs: pa.Table,
    token_text: dict[int, str],
    cfg: FindingsConfig | None = None,
) -> pa.Table:
    """The `findings` table (see the module docstring). `token_text` maps the cue token
    ids to their running text (``LoadedModel.token_str``)."""
    cfg = cfg or FindingsConfig()
    eff = effects.to_pandas()
    if "intervention" not in eff.columns or eff.empty:
        return FINDINGS_SCHEMA.empty_table()
    swap = eff[eff.intervention == "head_source_swap"]
    if swap.empty:
        return FINDINGS_SCHEMA.empty_table()
    cols = ["example_id", "tokens", "trimmed_activation"]
    if "on_token" in examples.column_names:
        cols.append("on_token")
    ex = examples.select(cols).to_pandas()
    if "on_token" not in ex:
        ex["on_token"] = False
    ex["on_token"] = ex.on_token.fillna(False).astype(bool)
    swap = swap.merge(ex, on="example_id", how="left")
    act = swap.trimmed_activation.to_numpy(dtype=float)
    share = np.where(act > 0, -swap.delta_activation.to_numpy(dtype=float) / act, np.nan)
    swap = swap.assign(share=share)
    info = neurons.to_pandas().set_index(["layer", "neuron"])
    p = pairs.to_pandas().set_index(["layer", "neuron", "head_layer", "head"])
    rows: list[dict[str, Any]] = []
    keys = ["layer", "neuron", "head_layer", "head"]
    for key, pair_rows in swap.groupby(keys, sort=True):
        passed = []
        for on_token, g in pair_rows.groupby("on_token", sort=True):
            g = _one_per_prompt(g)
            got = _test(g, cfg)
            if got is not None:
                passed.append((got[0], bool(on_token), g, got))
        if not passed:
            continue
        # the strongest firings when both pass
        _, on_token, g, (median, frac, dlp) = min(passed, key=lambda p: p[1])
        read = Counter(
            int(toks[int(pos)])
            for toks, pos in zip(g.tokens, g.swap_position, strict=True)
            if pos is not None and not pd.isna(pos) and 0 <= int(pos) < len(toks)
        )
        cue_ids = [t for t, _ in read.most_common()]
        layer, neuron, hl, h = (int(k) for k in key)  # type: ignore[union-attr]
        n_info = info.loc[(layer, neuron)]
        pair = p.loc[(layer, neuron, hl, h)] if (layer, neuron, hl, h) in p.index else None
        ks = None if pair is None or pd.isna(pair.ks_stat) else float(pair.ks_stat)
        rows.append(
            {
                "layer": layer,
                "neuron": neuron,
                "token": str(n_info.token),
                "baseline": bool(n_info.baseline) and not bool(n_info.selected),
                "head_layer": hl,
                "head": h,
                "cue": ", ".join(_unique(token_text.get(t, f"<{t}>").strip() for t in cue_ids)[:5]),
                "cue_token_ids": cue_ids,
                "n_swapped": len(g),
                "median_share_removed": median,
                "fraction_removed": frac,
                "median_delta_logprob": dlp,
                "ks_stat": ks,
                "kept": bool(pair.kept) if pair is not None else False,
                "prompts": "on_token" if on_token else "top",
            }
        )
    rows.sort(key=lambda r: (-r["median_share_removed"], r["layer"], r["neuron"]))
    return pa.Table.from_pylist(rows, schema=FINDINGS_SCHEMA)


def _one_per_prompt(g: pd.DataFrame) -> pd.DataFrame:
    """A prompt with several cues counts once, with the cue the head carries most of."""
    g = g[np.isfinite(g.share)]
    g = g.sort_values(["example_id", "share"], ascending=[True, False])
    return g.drop_duplicates("example_id")


def _test(g: pd.DataFrame, cfg: FindingsConfig) -> tuple[float, float, float] | None:
    """(median share removed, share of prompts that lose `min_share`, median change of
    log p) of one set of a pair's swapped prompts (one row per prompt) when they pass,
    else None."""
    if len(g) < cfg.min_swaps:
        return None
    median = float(np.median(g.share))
    frac = float((g.share >= cfg.min_share).mean())
    dlp = float(np.median(g.delta_logprob))
    if median < cfg.min_share or frac < cfg.min_fraction or dlp >= cfg.max_delta_logprob:
        return None
    return median, frac, dlp


def _unique(words: Iterable[str]) -> list[str]:
    out: list[str] = []
    for w in words:
        if w not in out:
            out.append(w)
    return out


def cue_token_ids(effects: pa.Table, examples: pa.Table) -> set[int]:
    """Every token a ``head_source_swap`` swapped out (for looking up their text)."""
    eff = effects.to_pandas()
    if "intervention" not in eff.columns:
        return set()
    swap = eff[eff.intervention == "head_source_swap"]
    ex = examples.select(["example_id", "tokens"]).to_pandas().set_index("example_id")
    out: set[int] = set()
    for eid, pos in zip(swap.example_id, swap.swap_position, strict=True):
        if pos is None or pd.isna(pos):
            continue
        toks = ex.tokens.get(int(eid))
        if toks is not None and 0 <= int(pos) < len(toks):
            out.add(int(toks[int(pos)]))
    return out
