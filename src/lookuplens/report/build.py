"""Assemble the report page and write it, with its figures, into the run directory."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lookuplens.model import LoadedModel
from lookuplens.report.assets import CSS, SCRIPT, script_hash
from lookuplens.report.compute import ModelViews, check_model_matches
from lookuplens.report.config import ReportConfig
from lookuplens.report.data import ReportPlan, RunTables, load_run, plan_report
from lookuplens.report.details import (
    ExampleRows,
    Lookup,
    neuron_anchor,
    neuron_section,
    pair_anchor,
    pair_section,
    prompt_tokens,
)
from lookuplens.report.markup import Html, esc, note, table
from lookuplens.report.overview import Figure, e_histogram_section, overview_section
from lookuplens.report.tokens import TokenText, token_label, token_pill
from lookuplens.report.views import StoredViews, ViewScope, build_views, report_scope
from lookuplens.store import RunDir, atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["Report", "build_report", "render_report", "write_report"]


@dataclass(frozen=True)
class Report:
    """A rendered report: the page and the figures saved next to it."""

    html: str
    figures: tuple[Figure, ...]


class _Decoder:
    """Token id -> text, cached."""

    def __init__(self, decode: Callable[[int], str]) -> None:
        self._decode = decode
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            try:
                text = str(self._decode(int(token_id)))
            except (ValueError, KeyError, IndexError, OverflowError, TypeError):
                text = f"<{int(token_id)}>"
            self._cache[token_id] = text
        return text


def _load_tokenizer(meta: dict[str, object]) -> tuple[Any | None, str]:
    """The run's tokenizer from local files only, or None and why not."""
    model = meta.get("model")
    if not isinstance(model, dict):
        return None, "no model recorded in run.json"
    source = model.get("path") or model.get("name")
    if not isinstance(source, str) or not source:
        return None, "no model path recorded in run.json"
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - best effort: any failure means "no tokenizer"
        return None, f"the tokenizer of {source} is not available offline ({type(e).__name__})"
    return tok, ""


def _tokenizer_decode(tok: Any) -> Callable[[int], str]:
    """Each token's running text under the tokenizer's convention (as `LoadedModel.token_str`)."""
    from lookuplens.model.vocab import Vocab

    return Vocab(tok).text


class _TableDecoder:
    """Token id -> text from the views table, else from `fallback` (the model or the
    tokenizer) when there is one; `covers` says whether a prompt can be shown token by
    token."""

    def __init__(self, strings: Mapping[int, str], fallback: TokenText | None) -> None:
        self._strings = strings
        self._fallback = fallback

    def covers(self, ids: Sequence[int]) -> bool:
        return self._fallback is not None or all(int(i) in self._strings for i in ids)

    def __call__(self, token_id: int) -> str:
        text = self._strings.get(int(token_id))
        if text is not None:
            return text
        return self._fallback(token_id) if self._fallback is not None else f"<{int(token_id)}>"


class _ExampleTokens(Mapping[int, list[int]]):
    """example_id -> its token ids, read from the examples table when asked for."""

    def __init__(self, lookup: Lookup) -> None:
        self._examples = lookup.examples

    def __getitem__(self, example_id: int) -> list[int]:
        ex = self._examples
        if isinstance(ex, ExampleRows):
            return ex.tokens(example_id)
        return prompt_tokens(ex[example_id])

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._examples

    def __iter__(self) -> Iterator[int]:
        return iter(self._examples)

    def __len__(self) -> int:
        return len(self._examples)


def _example_tokens(lookup: Lookup) -> Mapping[int, list[int]]:
    return _ExampleTokens(lookup)


def report_views(
    run: RunDir,
    lm: LoadedModel | None,
    t: RunTables,
    scope: ViewScope,
    tokens: Mapping[int, Sequence[int]],
    cfg: ReportConfig,
) -> tuple[StoredViews | None, ViewScope]:
    """What the report shows from the model: read from the run's views table; with `lm`,
    what the table lacks (all of it for a run made before the table existed) is computed.
    Returns the views and what is still missing."""
    stored = StoredViews.read(run)
    if stored is None and lm is None:
        return None, scope
    missing = scope if stored is None else stored.missing(scope, tokens)
    if lm is not None and not missing.empty:
        # (`lookuplens report` says so when it loads the model)
        log.debug(
            "report: computing with the model what %s lacks",
            "the views table" if stored is not None else "the run (no views table)",
        )
        fresh = StoredViews.from_table(build_views(lm, t, missing, cfg.batch_prompts))
        stored = fresh if stored is None else stored.merged(fresh)
        missing = stored.missing(scope, tokens)
    return stored, missing


def _views_and_decoder(
    run: RunDir,
    lm: LoadedModel | None,
    t: RunTables,
    plan: ReportPlan,
    lookup: Lookup,
    cfg: ReportConfig,
) -> tuple[ModelViews | None, TokenText | None, str]:
    """What the report shows from the model, how it decodes tokens, and the overview's
    note about what is left out."""
    decode: TokenText | None = None
    views: ModelViews | None = None
    model_note = ""
    scope = report_scope(plan, cfg)
    tokens = _example_tokens(lookup)
    stored, missing = report_views(run, lm, t, scope, tokens, cfg)
    if stored is not None:
        fallback: TokenText | None = _Decoder(lm.token_str) if lm is not None else None
        if fallback is None and cfg.load_tokenizer:
            shown = [*scope.neuron_prompts.values(), *scope.pair_prompts.values()]
            ids = {int(x) for exs in shown for e in exs for x in tokens.get(e, ())}
            if not ids <= stored.strings.keys():
                tok, _ = _load_tokenizer(t.meta)
                fallback = _Decoder(_tokenizer_decode(tok)) if tok is not None else None
        decode = _TableDecoder(stored.strings, fallback)
        views = stored.model_views(scope, tokens)
        n_missing = sum(len(v) for v in missing.neuron_prompts.values())
        n_missing += sum(len(v) for v in missing.pair_prompts.values())
        lacks = [f"{n_missing} of the prompts shown"] if n_missing else []
        if missing.vocab_neurons:
            lacks.append(f"the vocabulary of {len(missing.vocab_neurons)} neurons")
        if lacks:
            model_note = (
                f"The run's views table lacks {' and '.join(lacks)} (a report with other "
                "settings than the run's, or prompts changed since): they are left out. "
                "Build the report with the model to see them."
            )
    else:
        reason = "the tokenizer was not loaded (load_tokenizer is off)"
        tok = None
        if cfg.load_tokenizer and lookup.examples:
            tok, reason = _load_tokenizer(t.meta)
        if tok is not None:
            decode = _Decoder(_tokenizer_decode(tok))
            model_note = (
                "Built without the model: prompts are shown token by token but without "
                "activation and attention shading, and promoted and suppressed tokens are "
                "left out. Build the report with the model to see them."
            )
        else:
            model_note = (
                "Built without the model: activation and attention shading and promoted and "
                "suppressed tokens are left out"
                + (f", and prompts are shown as text ({reason})" if lookup.examples else "")
                + ". Build the report with the model to see them."
            )
    return views, decode, model_note


def findings_section(t: RunTables) -> Html:
    """The headline (neuron, head, cue) findings with their evidence (selected neurons
    first, then the random baseline's)."""
    head = '<section id="findings"><h2>Headline findings</h2>'
    f = t.get("findings")
    if f is None:
        return Html(head + note("No findings yet: run the verify stage.") + "</section>")
    if f.empty:
        return Html(head + note("No (neuron, head) pair passes the cue-swap test.") + "</section>")
    f = f.sort_values("baseline", kind="stable")
    rows = [
        [
            Html(
                f'<a href="#{neuron_anchor(int(r.layer), int(r.neuron))}">L{r.layer}N{r.neuron}</a>'
            ),
            token_pill(str(r.token)),
            f"L{r.head_layer}H{r.head}",
            str(r.cue),
            int(r.n_swapped),
            float(r.median_share_removed),
            float(r.fraction_removed),
            float(r.median_delta_logprob),
            None if r.ks_stat is None or r.ks_stat != r.ks_stat else float(r.ks_stat),
            "baseline" if r.baseline else ("kept" if r.kept else ""),
        ]
        for r in f.itertuples()
    ]
    text = (
        "Each row is a (neuron, head, cue) triple that passes the run's causal test: on "
        "the neuron's top prompts, the word the head reads is swapped for one it reads "
        "where the neuron stays silent, and only the head's output from that run is "
        "patched into the clean run. It passes when the median share of the activation "
        "removed is at least 0.2 on at least half the prompts and p(token) falls."
    )
    headers = [
        "neuron", "token", "head", "cue (words read)", "prompts", "share removed",
        "prompts passing", "Δ log p", "KS D", "",
    ]  # fmt: skip
    return Html(head + note(text) + table(headers, rows, cls="sortable") + "</section>")


def _nav(plan: ReportPlan, t: RunTables) -> Html:
    parts = [
        '<nav class="toc" aria-label="Contents"><h2>Contents</h2><ul>',
        '<li><a href="#overview">Run overview</a></li>',
    ]
    if t.meta.get("ground_truth") is not None:
        parts.append('<li><a href="#ground-truth">Ground truth</a></li>')
    parts.append('<li><a href="#findings">Headline findings</a></li>')
    parts.append('<li><a href="#scores">Explanation scores (E)</a></li>')
    parts.append(f'<li><a href="#neurons">Neurons ({len(plan.neurons)})</a></li>')
    parts.append(f'<li><a href="#pairs">Kept pairs ({len(plan.pairs)})</a></li></ul>')
    if plan.neurons:
        parts.append("<details open><summary>Neurons</summary><ul>")
        for p in plan.neurons:
            token = token_label(str(p.info.get("token", "")))
            parts.append(
                f'<li><a href="#{neuron_anchor(*p.key)}">{p.name}</a> '
                f'<span class="mono">{token}</span></li>'
            )
        parts.append("</ul></details>")
    if plan.pairs:
        parts.append("<details open><summary>Kept pairs</summary><ul>")
        for q in plan.pairs:
            e = f" \u00b7 E {q.e:.2f}" if q.e is not None else ""
            parts.append(
                f'<li><a href="#{pair_anchor(*q.key)}">L{q.head_layer}H{q.head} \u2192 '
                f"L{q.layer}N{q.neuron}</a>{e}</li>"
            )
        parts.append("</ul></details>")
    parts.append("</nav>")
    return Html("".join(parts))


def render_report(run: RunDir, lm: LoadedModel | None, cfg: ReportConfig) -> Report:
    """The report page and its figures (nothing is written)."""
    t = load_run(run)
    if lm is not None:
        check_model_matches(lm, t.meta.get("model"))
    plan = plan_report(t, cfg)
    lookup = Lookup.build(t)
    views, decode, model_note = _views_and_decoder(run, lm, t, plan, lookup, cfg)
    title = cfg.title or f"lookuplens report: {run.path.name}"
    overview = overview_section(t, plan, model_note)
    scores_html, figures = e_histogram_section(t)
    body = [overview, findings_section(t), scores_html, '<section id="neurons"><h2>Neurons</h2>']
    if not plan.neurons:
        body.append('<p class="note">No neurons yet: run the neurons stage.</p>')
    else:
        shown = len(plan.neurons)
        body.append(
            f'<p class="note">{shown} of {plan.n_neurons_total} tracked neurons (selected first, '
            "then the random baseline, each by congruence).</p>"
        )
        for p in plan.neurons:
            body.append(neuron_section(p, lookup, plan, views, decode, cfg.max_heads))
    body.append("</section>")
    body.append('<section id="pairs"><h2>Kept (neuron, head) pairs</h2>')
    if t.get("pairs") is None:
        body.append('<p class="note">No pairs yet: run the attribute stage.</p>')
    elif not plan.pairs:
        body.append('<p class="note">No pair was kept (active rate within the bounds).</p>')
    else:
        order = (
            "E"
            if plan.primary_scores is not None
            else ("active rate closeness to 0.5, then mean direct attribution")
        )
        body.append(
            f'<p class="note">{len(plan.pairs)} of {plan.n_pairs_total} kept pairs, ordered by '
            f"{order}. Prompts with the head active come first.</p>"
        )
        for q in plan.pairs:
            body.append(pair_section(q, lookup, plan, views, decode))
    body.append("</section>")
    from lookuplens import __version__

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src {script_hash()}; base-uri 'none'; form-action 'none'"
    )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="lookuplens {esc(__version__)}">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"{_nav(plan, t)}<main>"
        f'<header class="top"><h1>{html.escape(title)}</h1>'
        f"<p>Run directory <code>{esc(run.path)}</code></p></header>"
        + "".join(body)
        + f"<footer>Generated by lookuplens {esc(__version__)} at {esc(now)}. "
        "The page is self-contained: it loads nothing from the network.</footer>"
        f"</main><script>{SCRIPT}</script></body></html>\n"
    )
    return Report(page, tuple(figures))


def build_report(run: RunDir, lm: LoadedModel | None, cfg: ReportConfig) -> str:
    """The report of `run` as one self-contained HTML page.

    The per-token activation shading, each kept pair's attention from the last token
    and the promoted and suppressed tokens come from the run's views table (written by
    the report stage). With `lm` (the run's model), what the table lacks (all of it for a
    run directory made before the table existed) is computed; without it, that is left
    out with a note.
    """
    return render_report(run, lm, cfg).html


def write_report(run: RunDir, lm: LoadedModel | None, cfg: ReportConfig) -> Path:
    """Write ``report.html`` and its figures (``figures/*.svg``) into `run`, atomically;
    returns the report's path."""
    report = render_report(run, lm, cfg)
    folder = run.path / "figures"
    if report.figures:
        folder.mkdir(exist_ok=True)
        for fig in report.figures:
            atomic_write_bytes(folder / fig.name, fig.svg)
    if folder.is_dir():  # histograms of an earlier report that this one no longer has
        names = {fig.name for fig in report.figures}
        for old in folder.glob("e_histogram*.svg"):
            if old.name not in names:
                old.unlink()
    path = run.write_file("report.html", report.html)
    log.info("wrote %s (%d figures)", path, len(report.figures))
    return path
