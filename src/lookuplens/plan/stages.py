"""The work of the first four stages (neurons, scan, examples, attribute), counted from the
code that does it; `lookuplens.plan.stages_late` counts the others.

Each function mirrors its stage: which prompts go through which layers in which batches.
Host-side costs (`Item`) are per-item seconds measured with cProfile on the bundled
storyworld run on the 2-core reference machine.
"""

from __future__ import annotations

import math

from lookuplens.attribute.config import ABLATIONS
from lookuplens.plan.corpus import CorpusProfile
from lookuplens.plan.layout import PROMPT_PADDING, Layout
from lookuplens.plan.shape import ModelShape
from lookuplens.plan.work import Item, Pass, Rates, StageWork, Table
from lookuplens.run_config import RunConfig

__all__ = ["attribute_work", "examples_work", "neurons_work", "scan_work", "simulate_batches"]

HEAD_VALUE_S = 26e-6
"""A head's exact direct attribution read in Python (per prompt and head)."""
DECOMPOSE_S = 6e-4
"""One prompt's decomposition into terms, outside its forward pass."""
TOKENISE_S = 1.5e-6
"""Tokenising one corpus token (a fast tokenizer, in batches of 64 documents)."""
SHARD_WRITE_S = 0.012
"""Writing one shard atomically (fsync included)."""
NEURON_ROW_S = 3e-5
"""One neuron's row of the neurons table (its top token's text looked up)."""
ROW_S = 2e-6
"""One attribution row through the labels and pairs (pandas)."""


def simulate_batches(lengths: tuple[int, ...], batch_tokens: int) -> tuple[float, float, float]:
    """(batches, padded tokens, padded width^2 x rows) of `make_batches` over documents of
    these lengths in order: each batch holds consecutive documents while
    ``rows x longest <= batch_tokens``."""
    calls = padded = square = 0.0
    rows, width = 0, 0
    for n in lengths:
        new = max(width, n)
        if rows and new * (rows + 1) > batch_tokens:
            calls += 1
            padded += rows * width
            square += rows * width * width
            rows, new = 0, n
        rows += 1
        width = new
    if rows:
        calls += 1
        padded += rows * width
        square += rows * width * width
    return calls, padded, square


def _prompt_pass(
    what: str,
    rows: float,
    length: float,
    layers: float,
    batch_tokens: float | None = None,
    batch_rows: float | None = None,
    groups: float = 1.0,
    **kw: object,
) -> Pass:
    """A pass over `rows` prompts of mean `length`, sorted by length into batches of
    `batch_tokens` padded tokens or `batch_rows` rows, in `groups` separate sequences
    (one per layer, say) that each end with a partial batch."""
    tokens = rows * length * PROMPT_PADDING
    if batch_rows is not None:
        calls = rows / batch_rows
    else:
        calls = tokens / float(batch_tokens or 8192)
    calls = max(calls + groups / 2, min(groups, rows)) if rows else 0.0
    return Pass(what, calls, rows, tokens, length, layers, **kw)  # type: ignore[arg-type]


def neurons_work(cfg: RunConfig, shape: ModelShape, layout: Layout) -> StageWork:
    w = StageWork("neurons")
    n_layers = len(layout.layers)
    cells = shape.d_mlp * shape.d_vocab * n_layers
    w.flops_extra = 2.0 * shape.d_model * cells  # W_out @ W_U, block by block
    w.host_bytes = cells * 8.0 * 12  # float64 copies, max, four power sums
    nb, vb = cfg.neurons.neuron_block, cfg.neurons.vocab_block
    w.activation_bytes = min(nb, shape.d_mlp) * min(vb, shape.d_vocab) * 8.0 * 4
    w.tables.append(Table("neurons", shape.d_mlp * n_layers, 13 * 8 + 8))
    w.items.append(Item("neuron rows", shape.d_mlp * n_layers, NEURON_ROW_S))
    w.knobs.append(
        f"{n_layers} layers x {shape.d_mlp:,} neurons x {shape.d_vocab:,} vocabulary tokens"
    )
    return w


def scan_work(
    cfg: RunConfig, shape: ModelShape, layout: Layout, corpus: CorpusProfile
) -> StageWork:
    w = StageWork("scan")
    calls, padded, square = simulate_batches(corpus.lengths, cfg.scan.batch_tokens)
    scale = corpus.tokens / max(sum(corpus.lengths), 1)
    n_tracked = layout.n_tracked
    layers = layout.last_layer + 1
    seq = square / max(padded, 1)
    w.passes.append(Pass("corpus", calls * scale, corpus.docs, padded * scale, seq, layers))
    w.host_bytes = padded * scale * n_tracked * 4.0 * 6  # gathered, masked, summed, maxed
    # the scan counts the source's documents first (for its progress), then reads them
    w.items.append(Item("documents read", corpus.source_docs + corpus.docs, corpus.doc_seconds))
    w.items.append(Item("tokens tokenised", corpus.tokens, TOKENISE_S))
    shards = math.ceil(corpus.docs / cfg.scan.shard_docs)
    w.items.append(Item("scan shards written", shards, SHARD_WRITE_S))
    w.tables += [
        Table("firings", n_tracked * layout.firings, 7 * 8),
        Table("activation_stats", n_tracked, 7 * 8),
    ]
    bt = cfg.scan.batch_tokens
    width = min(max(corpus.lengths, default=1), bt)
    attn = (bt / width) * shape.n_heads * width * width * 4.0
    w.activation_bytes = bt * (3 * shape.d_mlp + 8 * shape.d_model + n_tracked) * 4.0 + attn
    w.knobs.append(
        f"{corpus.tokens:,} corpus tokens ({padded * scale:,.0f} padded) x {layers} layers, "
        f"{n_tracked:,} neurons tracked"
    )
    return w


def _trim_jobs(untrimmed: float, trimmed: float, window: int) -> tuple[float, float, int]:
    """(prompts, tokens, rounds) the batched binary search evaluates for one firing: the
    galloping round (starts 1, 2, 4, ... tokens before the firing, and the cap's), then
    rounds of `window` starts inside the interval until it closes."""
    body = max(untrimmed - 1, 1.0)
    gallop = [2**j for j in range(int(math.log2(body)) + 1) if 2**j < body] or [1]
    prompts = float(len(gallop) + 1)
    tokens = float(sum(1 + d for d in gallop) + untrimmed)
    gap = max(2.0, 0.75 * (trimmed - 1))
    rounds = 1
    while gap > 1:
        k = min(window, gap - 1)
        prompts += k
        tokens += k * trimmed
        gap = math.ceil(gap / (k + 1))
        rounds += 1
    return prompts, tokens, rounds


def examples_work(
    cfg: RunConfig, shape: ModelShape, layout: Layout, corpus: CorpusProfile, rates: Rates
) -> StageWork:
    w = StageWork("examples")
    ex = cfg.examples
    bt = ex.batch_tokens
    lu, lt = layout.untrimmed, layout.top_len
    prompts1, tokens1, rounds = _trim_jobs(lu, lt, ex.window)
    firings = heads = decomposed = 0.0
    n_groups = len(layout.layers)
    chunks = 0.0
    for i, layer in enumerate(layout.layers):
        f = layout.tracked(i) * layout.firings
        firings += f
        depth = layer + 0.6  # stops where layer `layer`'s MLP reads the residual stream
        chunks += math.ceil(f / 256)
        if ex.keep_heads:
            w.passes.append(_prompt_pass("driving heads", f, lu, depth, bt, groups=1))
            heads += f * layout.up_heads(i)
        trim_tokens = f * tokens1
        w.passes.append(
            Pass(
                "trim search",
                trim_tokens / bt + rounds,
                f * prompts1,
                trim_tokens,
                tokens1 / prompts1,
                depth,
            )
        )
        if ex.keep_heads:
            heads += f * prompts1 * min(ex.keep_heads, 2)
        if ex.keep_read_word:
            w.passes.append(Pass("read word: decompose", f, f, f * lu, lu, layer + 1))
            decomposed += f
            top_head = (layout.upstream[i] + 1) / 2
            w.passes.append(_prompt_pass("read word: attention", f, lu, top_head, bt, groups=8))
            moved = f * rates.moved_read_word
            w.passes.append(_prompt_pass("read word: remeasure", moved, lt, depth, bt))
    # the firings' documents are read again, up to the last one needed
    w.items.append(Item("documents read again", corpus.docs, corpus.doc_seconds))
    w.items.append(Item("tokens tokenised again", corpus.tokens, TOKENISE_S))
    if heads:
        w.items.append(Item("head values read", heads, HEAD_VALUE_S))
    if decomposed:
        w.items.append(Item("prompt decompositions", decomposed, DECOMPOSE_S))
    if ex.contrast > 0:
        docs = min(ex.contrast_search_docs, corpus.docs)
        sample = corpus.lengths[:docs] or corpus.lengths
        calls, padded, square = simulate_batches(sample, bt)
        scale = docs / max(len(sample), 1)
        w.passes.append(
            Pass(
                "contrast search",
                calls * scale,
                docs,
                padded * scale,
                square / max(padded, 1),
                layout.last_layer + 1,
            )
        )
        w.items.append(Item("contrast search documents read", docs, corpus.doc_seconds))
        w.items.append(Item("contrast search tokens", padded * scale, TOKENISE_S))
        found = layout.n_contrast
        w.passes.append(
            _prompt_pass(
                "contrasts measured",
                found,
                layout.contrast_len,
                sum(layout.layers) / n_groups + 0.6,
                bt,
                groups=n_groups,
            )
        )
    e = layout.n_examples
    w.tables.append(Table("examples", e, 13 * 8 + 20 + layout.mean_len * 13))
    w.activation_bytes = bt * (3 * shape.d_mlp + 8 * shape.d_model) * 4.0
    w.knobs.append(
        f"{layout.n_tracked:,} neurons x {layout.firings} firings = {firings:,.0f} prompts "
        f"of ~{lu:.0f} tokens trimmed (~{prompts1:.0f} candidate starts each)"
    )
    if ex.contrast > 0:
        w.knobs.append(
            f"contrasts: {min(ex.contrast_search_docs, corpus.docs):,} documents searched, "
            f"{layout.n_contrast:,.0f} found"
        )
    return w


def attribute_work(cfg: RunConfig, shape: ModelShape, layout: Layout) -> StageWork:
    """The attribute stage, float32 (see `AttributeConfig`): per batch of examples of one
    neuron layer a recorded forward, attribution patching's forward and backward, and the
    ablations, each replaying layers l..L per upstream layer (prefix reuse)."""
    a = cfg.attribute
    w = StageWork("attribute")
    w.fp32_copy = cfg.dtype != "float32"
    methods = set(a.methods)
    ablations = [m for m in ABLATIONS if m in methods]
    cheap = [m for m in a.methods if m not in ABLATIONS]
    lp = layout.mean_len
    h, dh, d = shape.n_heads, shape.d_head, shape.d_model
    attributions = labels = pairs = batches_total = 0.0
    pruned_any = False
    for i, layer in enumerate(layout.layers):
        e = layout.examples(i)
        if e <= 0:
            continue
        ups = layout.upstream[i]
        u = ups * h
        batches = math.ceil(e / a.batch_examples)
        batches_total += batches
        tokens = e * lp * PROMPT_PADDING
        w.passes.append(Pass("recorded forward", batches, e, tokens, lp, layer + 1, fp32=True))
        prune = a.prunes(u)
        n_cand = min(a.candidates_ranked, u)  # the share adds more
        pruned_any |= prune
        if "attribution_patching" in methods or prune:
            w.passes.append(
                Pass(
                    "attribution patching",
                    batches,
                    e,
                    tokens,
                    lp,
                    layer + 1,
                    backward=True,
                    fp32=True,
                )
            )
        if ups:
            depth = sum(layer - j + 1 for j in range(ups)) / ups
            rows = e * (n_cand if prune else u)
            for m in ablations:
                w.passes.append(
                    Pass(
                        m.replace("_", " ") + " replays",
                        batches * ups,
                        rows,
                        rows * lp * PROMPT_PADDING,
                        lp,
                        depth,
                        fp32=True,
                        replay=True,
                    )
                )
        w.flops_extra += (
            e * u * (2.0 * dh * d) * sum(m in methods for m in ("direct", "raw", "path_patching"))
        )
        kept_abl = n_cand if prune else u
        attributions += e * (u * len(cheap) + kept_abl * len(ablations))
        labels += e * u
        pairs += layout.tracked(i) * u
    if "mean_ablation" in methods:
        w.passes.append(
            _prompt_pass(
                "head means",
                layout.n_examples,
                lp,
                layout.last_layer + 1,
                batch_rows=a.batch_examples,
                fp32=True,
            )
        )
    w.items.append(Item("shards written", batches_total, SHARD_WRITE_S))
    w.items.append(Item("attribution rows labelled", attributions, ROW_S))
    w.tables += [
        Table("attributions", attributions, 6 * 8 + 15),
        Table("labels", labels, 5 * 8 + 1 + 5),
        Table("pairs", pairs, 16 * 8 + 10),
        Table("shards/attribute", attributions, 6 * 8 + 15, "a copy of attributions"),
    ]
    b = a.batch_examples
    up_max = max(layout.upstream, default=0)
    rows_abl = b * (a.candidates_ranked if pruned_any else h)
    per_row = lp * (3 * shape.d_mlp + 8 * d) * 4.0
    grad = b * lp * (layout.last_layer + 1) * (12 * d + 4 * shape.d_mlp) * 4.0
    recorded = b * lp * d * (layout.last_layer + 1) * 4.0 + b * lp * up_max * h * dh * 4.0
    w.activation_bytes = max(grad, rows_abl * per_row) + recorded
    n_up = layout.n_examples and sum(
        layout.examples(i) * layout.up_heads(i) for i in range(len(layout.layers))
    ) / max(layout.n_examples, 1)
    k_text = (
        f"{a.candidates}+{a.candidates_direct} candidate heads each (pruned from "
        f"~{n_up:,.0f} upstream; more where --candidate-share admits them, not counted here)"
        if pruned_any
        else f"~{n_up:,.0f} upstream heads each (no pruning)"
    )
    abl = ", ".join(ablations) or "no ablation"
    w.knobs.append(
        f"{layout.n_tracked:,} neurons x {layout.top_per_neuron + layout.contrast_per_neuron:.0f}"
        f" prompts ({layout.n_examples:,.0f}) x {k_text}; {abl}; float32"
    )
    return w
