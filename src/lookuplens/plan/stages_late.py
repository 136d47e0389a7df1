"""The work of the verify, explain, score and report stages, counted from the code that
does it (see `lookuplens.plan.stages`)."""

from __future__ import annotations

import math

from lookuplens.plan.layout import PROMPT_PADDING, Layout
from lookuplens.plan.shape import ModelShape
from lookuplens.plan.stages import _prompt_pass
from lookuplens.plan.work import Item, Pass, Rates, StageWork, Table
from lookuplens.run_config import RunConfig

__all__ = ["explain_work", "report_work", "score_work", "verify_work"]

EFFECT_ROW_S = 2.5e-5
"""One effects row (its log-prob differences and KL), beside the KL's vocabulary work."""
SCREEN_POSITION_S = 3.5e-5
"""One prompt position screened for a cue swap (its fillers' first-order estimates)."""
TASK_TOKEN_S = 1.5e-5
"""The offline explainer's cue counting, per training prompt token of a task."""
SIM_TOKEN_S = 2e-6
"""The offline simulator, per held-out prompt token of a task."""
REPORT_S = 2.0
"""Rendering report.html (figures, tables)."""
LLM_REQUEST_S = 4.0
"""An LLM request's latency (the requests are made one after another)."""

GROUND_TRUTH_DOCS = 200
"""Held-out stories the bundled worlds' ground truth reads (`GroundTruthConfig.n_docs`)."""
GROUND_TRUTH_SWAPS_PER_DOC = 1.2
"""Annotated predictions with a swappable cue per held-out story (1.65 storyworld, 0.57
tripworld)."""
GROUND_TRUTH_NEURONS_PER_SWAP = 1.0
"""Selected neurons predicting a swap's target, each patched with every upstream head."""


def _upstream_mean(layout: Layout) -> float:
    return sum(layout.tracked(i) * layout.up_heads(i) for i in range(len(layout.layers))) / max(
        layout.n_tracked, 1
    )


def verify_work(cfg: RunConfig, shape: ModelShape, layout: Layout, rates: Rates) -> StageWork:
    v = cfg.verify
    w = StageWork("verify")
    n = shape.n_layers
    br = v.batch_rows
    lp, lt = layout.mean_len, layout.top_len
    n_int = (2 + len(v.scales)) if v.neuron_interventions else 0
    effects = 0.0
    jobs_total = cues_total = patched_total = 0.0
    for i, layer in enumerate(layout.layers):
        e = layout.examples(i)
        if e <= 0:
            continue
        after = n - layer  # layers from the neuron's on: what an edit changes
        w.passes.append(_prompt_pass("clean, recorded", e, lp, n, batch_rows=br))
        w.passes.append(
            _prompt_pass("clean, replayed", e, lp, after, batch_rows=br, unembed=e, replay=True)
        )
        if n_int:
            w.passes.append(
                _prompt_pass(
                    "neuron interventions",
                    e * n_int,
                    lp,
                    after,
                    batch_rows=br,
                    groups=n_int,
                    unembed=e * n_int,
                    replay=True,
                )
            )
            effects += e * n_int
        u = layout.up_heads(i)
        if v.head_ablations:
            per_neuron = min(
                u, rates.kept_pairs_per_neuron + 0.5 * (v.top_heads + v.top_heads_total)
            )
            jobs = e * per_neuron
            jobs_total += jobs
            w.passes.append(
                _prompt_pass("head ablations", jobs, lp, n, batch_rows=br, unembed=jobs)
            )
            effects += jobs
        if v.head_ablations and v.source_swap:
            r = layout.tracked(i) * layout.top_per_neuron
            batches = math.ceil(r / br)
            w.passes.append(
                _prompt_pass(
                    "cue screen (backward)", r, lt, layer + 1, batch_rows=br, backward=True
                )
            )
            w.items.append(
                Item(
                    "cue positions screened",
                    r * max(lt - v.swap_skip_last - 1, 0),
                    SCREEN_POSITION_S,
                )
            )
            cands = r * min(v.swap_screen, max(lt - v.swap_skip_last - 1, 0)) * 0.9
            if v.swap_attended:
                # the readers' most attended positions: 0.40 of them new on the
                # storyworld, 0.35 on the tripworld (the rest the screen took already)
                readers = v.top_heads + v.top_heads_total + rates.kept_pairs_per_neuron
                cands += r * min(u, readers) * 0.4
            w.passes.append(_prompt_pass("cue swaps", cands, lt, layer + 1, batch_rows=br))
            cues = r * rates.cue_rate
            cues_total += cues
            w.passes.append(_prompt_pass("cue log-probs", cues, lt, n, batch_rows=br, unembed=cues))
            w.passes.append(_prompt_pass("cue runs recorded", r, lt, n, batch_rows=br))
            ups = layout.upstream[i]
            heads = u if v.swap_heads <= 0 else min(v.swap_heads, u)
            patched = cues * heads
            patched_total += patched
            if ups:
                depth = sum(n - j for j in range(ups)) / ups
                chunks = ups * max(batches, patched / ups / br)
                w.passes.append(
                    Pass(
                        "head source swaps",
                        chunks,
                        patched,
                        patched * lt * PROMPT_PADDING,
                        lt,
                        depth,
                        unembed=patched,
                        replay=True,
                    )
                )
            effects += cues + patched
    w.items.append(Item("effects rows", effects, EFFECT_ROW_S))
    w.host_bytes = effects * shape.d_vocab * 8.0 * 6  # log-softmax rows, KL
    w.tables += [
        Table("effects", effects, 10 * 8 + 16),
        Table("findings", layout.n_tracked * rates.kept_pairs_per_neuron * 0.2, 14 * 8),
    ]
    donors = br * v.swap_screen * lt * max(layout.upstream, default=0) * shape.n_heads
    w.activation_bytes = (
        br * lp * shape.d_model * n * 4.0
        + donors * shape.d_head * 4.0
        + br * lp * (3 * shape.d_mlp + 8 * shape.d_model) * 4.0 * shape.n_heads
    )
    w.knobs.append(
        f"{layout.n_examples:,.0f} prompts x ({n_int} neuron interventions + clean), "
        f"{jobs_total:,.0f} head ablations"
    )
    if v.source_swap and v.head_ablations:
        which = "every upstream head" if v.swap_heads <= 0 else f"{v.swap_heads} heads"
        w.knobs.append(
            f"cue swaps: ~{cues_total:,.0f} cues (assumed {rates.cue_rate:.0%} of top prompts) "
            f"x {which} (~{_upstream_mean(layout):,.0f}) = {patched_total:,.0f} head patches"
        )
    return w


def _tasks(cfg: RunConfig, layout: Layout, rates: Rates) -> tuple[float, float]:
    """(pair tasks, neuron tasks) of the explain and score stages."""
    t = cfg.explain.tasks
    neurons = layout.n_tracked if t.include_baseline else layout.n_selected
    pairs = neurons * rates.kept_pairs_per_neuron if t.pairs else 0.0
    return pairs, float(neurons) if t.neurons else 0.0


def _negatives(cfg: RunConfig, layout: Layout, rates: Rates, w: StageWork) -> None:
    """Non-firing contexts of the neuron tasks, measured (`neuron_tasks`)."""
    _, neurons = _tasks(cfg, layout, rates)
    if not neurons:
        return
    t = cfg.explain.tasks
    rows = neurons * t.negative_candidates * layout.top_per_neuron
    depth = sum(layout.layers) / max(len(layout.layers), 1) + 0.6
    w.passes.append(
        _prompt_pass(
            "non-firing contexts",
            rows,
            layout.mean_len,
            depth,
            t.batch_tokens,
            groups=len(layout.layers),
        )
    )


def explain_work(cfg: RunConfig, shape: ModelShape, layout: Layout, rates: Rates) -> StageWork:
    w = StageWork("explain")
    pairs, neurons = _tasks(cfg, layout, rates)
    _negatives(cfg, layout, rates, w)
    per_neuron = layout.top_per_neuron + layout.contrast_per_neuron
    train = per_neuron * 2 / 3
    lp = layout.mean_len
    mean_up = sum(layout.upstream) / max(len(layout.layers), 1)
    if cfg.explain.explainer == "offline":
        if pairs:
            w.passes.append(
                Pass(
                    "pair attention",
                    pairs * max(1.0, train * lp / cfg.explain.tasks.batch_tokens),
                    pairs * train,
                    pairs * train * lp * PROMPT_PADDING,
                    lp,
                    (mean_up + 1) / 2,
                )
            )
            if cfg.explain.offline.lookup_fraction > 0:
                v = shape.d_vocab
                w.passes.append(
                    Pass(
                        "look-up value vectors",
                        pairs * math.ceil(v / 4096),
                        pairs * v,
                        pairs * v,
                        1,
                        (mean_up + 1) / 2,
                    )
                )
        w.items.append(Item("training prompt tokens", (pairs + neurons) * train * lp, TASK_TOKEN_S))
    else:
        w.llm_requests = pairs + neurons
        w.llm_tokens = w.llm_requests * (
            2 * cfg.explain.llm.max_examples_per_class * lp * 1.3 + 400
        )
        w.items.append(Item("LLM requests", w.llm_requests, LLM_REQUEST_S))
    w.tables.append(Table("explanations", pairs + neurons, 12 * 8 + 900))
    w.knobs.append(
        f"{pairs:,.0f} pair tasks (assumed {rates.kept_pairs_per_neuron:g} kept pairs per neuron) "
        f"+ {neurons:,.0f} neuron tasks, {cfg.explain.explainer} explainer"
    )
    if cfg.explain.explainer == "offline" and cfg.explain.offline.lookup_fraction > 0 and pairs:
        w.knobs.append(
            f"look-up scores: {shape.d_vocab:,} one-token prompts per pair (the value vectors "
            "are cached for one head layer at a time)"
        )
    return w


def score_work(cfg: RunConfig, shape: ModelShape, layout: Layout, rates: Rates) -> StageWork:
    w = StageWork("score")
    pairs, neurons = _tasks(cfg, layout, rates)
    _negatives(cfg, layout, rates, w)
    s = cfg.score
    test = (layout.top_per_neuron + layout.contrast_per_neuron) / 3
    tasks = pairs + neurons
    controls = pairs if s.control_on else 0.0
    if s.scorer_name == "offline":
        w.items.append(
            Item("held-out prompt tokens", (tasks + controls) * test * layout.mean_len, SIM_TOKEN_S)
        )
    else:
        per = math.ceil(test / s.batch_size) if s.scheme == "batched" else test
        w.llm_requests = (tasks + controls) * per
        w.llm_tokens = w.llm_requests * (min(test, s.batch_size) * layout.mean_len * 1.3 + 300)
        w.items.append(Item("LLM requests", w.llm_requests, LLM_REQUEST_S))
    w.tables += [
        Table("scores", tasks, 20 * 8 + 40),
        Table("score_controls", controls, 22 * 8 + 40),
    ]
    w.knobs.append(f"{tasks:,.0f} tasks x ~{test:.0f} held-out prompts, {s.scorer_name} scorer")
    return w


def report_work(
    cfg: RunConfig, shape: ModelShape, layout: Layout, rates: Rates, planted: bool, doc_len: float
) -> StageWork:
    """Views for every tracked neuron (12 prompts each) and kept pair (24 prompts), the
    vocabulary read from the weights, report.html; for a bundled planted world also the
    ground-truth comparison."""
    w = StageWork("report")
    bp = cfg.report.batch_prompts
    lp = layout.mean_len
    neurons = layout.n_tracked
    pairs = neurons * rates.kept_pairs_per_neuron
    mean_layer = sum(layout.layers) / max(len(layout.layers), 1)
    w.passes.append(
        _prompt_pass(
            "activation views",
            neurons * 12,
            lp,
            mean_layer + 1,
            batch_rows=bp,
            groups=len(layout.layers),
        )
    )
    w.passes.append(
        _prompt_pass(
            "attention views",
            pairs * 24 * 0.6,
            lp,
            (mean_layer + 2) / 2,
            batch_rows=bp,
            groups=max(layout.upstream, default=1),
        )
    )
    w.flops_extra = 2.0 * shape.d_model * shape.d_vocab * neurons
    w.items.append(Item("report.html rendered", 1, REPORT_S))
    if planted:
        docs = GROUND_TRUTH_DOCS
        swaps = docs * GROUND_TRUTH_SWAPS_PER_DOC
        n = shape.n_layers
        w.passes.append(Pass("ground truth: attention", docs, docs, docs * doc_len, doc_len, n))
        jobs = swaps * GROUND_TRUTH_NEURONS_PER_SWAP * _upstream_mean(layout)
        w.passes.append(
            _prompt_pass(
                "ground truth: patches", jobs * 2 + swaps * 3, 0.8 * doc_len, n, batch_rows=64
            )
        )
        w.knobs.append(f"ground truth of the planted world: {docs} held-out stories")
    w.tables += [
        Table("views", neurons * 14 + pairs * 24, 4 * 8 + lp * 24 + 20),
        Table("report.html", 1, 5e6, "about 5 MB, whatever the run's size"),
    ]
    w.knobs.append(f"{neurons:,} neurons x 12 prompts, ~{pairs:,.0f} kept pairs x 24 prompts")
    return w
