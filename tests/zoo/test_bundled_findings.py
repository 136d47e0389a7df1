"""The default pipeline on the bundled storyworld model finds the planted article look-up.

Issues 4 (neurons and scan), 5 (attribution and causal checks), 6 (explanations and E),
7 (ground truth) and 10 (`why`) each name a finding on the bundled model; these tests run
the default stages once on a slice of the held-out storyworld corpus and check them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from lookuplens.corpus import CorpusSpec
from lookuplens.model import LoadedModel, hook_name, load_model
from lookuplens.pipeline import RunConfig, run_pipeline
from lookuplens.store import RunDir
from lookuplens.why import WhyConfig, explain_prediction
from lookuplens.zoo import default_model_path
from lookuplens.zoo.storyworld import TokenAnnotation, generate_corpus, token_positions
from lookuplens.zoo.words import VOWEL_OBJECTS

pytestmark = pytest.mark.slow  # runs the default pipeline on the bundled model (minutes)

N_DOCS = 500
SEED = 1  # the corpus the default run scans (CorpusSpec.storyworld_seed)


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model(str(default_model_path()), device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    cfg = RunConfig(corpus=CorpusSpec("storyworld", storyworld_docs=N_DOCS))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a real run's setting (tests/conftest.py sets 1 for tiny models)
    try:
        return run_pipeline(cfg, tmp_path_factory.mktemp("bundled") / "run")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted(lm: LoadedModel) -> dict[int, list[TokenAnnotation]]:
    """Annotations of the scanned documents, by doc id, in BOS-prepended token indices."""
    return {
        d.doc_id: token_positions(d, lm.tokenizer) for d in generate_corpus(N_DOCS, SEED, "heldout")
    }


def article_at(
    planted: dict[int, list[TokenAnnotation]], doc_id: int, position: int
) -> TokenAnnotation | None:
    for a in planted[doc_id]:
        if a.kind == "article" and a.predict_index == position:
            return a
    return None


@pytest.fixture(scope="module")
def an_neuron(run: RunDir, planted: dict[int, list[TokenAnnotation]]) -> tuple[int, int]:
    """The selected " an" neuron whose top firings are most often " an" look-ups."""
    neurons = run.read_df("neurons")
    cands = neurons[neurons.selected & (neurons.token == " an")]
    assert len(cands), "the neurons stage selected no neuron whose top token is ' an'"
    firings = run.read_df("firings")
    best, best_share = None, -1.0
    for r in cands.sort_values("congruence", ascending=False).itertuples():
        f = firings[(firings.layer == r.layer) & (firings.neuron == r.neuron)]
        hits = [article_at(planted, int(x.doc_id), int(x.position)) for x in f.itertuples()]
        share = np.mean([a is not None and a.target == " an" for a in hits])
        if share > best_share:
            best, best_share = (int(r.layer), int(r.neuron)), float(share)
    assert best is not None
    return best


def test_scan_top_firings_are_an_lookups(
    run: RunDir, planted: dict[int, list[TokenAnnotation]], an_neuron: tuple[int, int]
) -> None:
    layer, neuron = an_neuron
    f = run.read_df("firings")
    f = f[(f.layer == layer) & (f.neuron == neuron)]
    top, on = f[~f.on_token], f[f.on_token]
    assert len(top) == 30 and list(top["rank"]) == list(range(30))
    hits = [article_at(planted, int(x.doc_id), int(x.position)) for x in top.itertuples()]
    assert sum(a is not None and a.target == " an" for a in hits) >= 27, hits
    # the on-token firings: up to 6 more, ranked after the top 30, where " an" came next
    assert 1 <= len(on) <= 6 and list(on["rank"]) == list(range(30, 30 + len(on)))
    hits = [article_at(planted, int(x.doc_id), int(x.position)) for x in on.itertuples()]
    assert all(a is not None and a.target == " an" for a in hits), hits


def _example_cues(
    run: RunDir, planted: dict[int, list[TokenAnnotation]], an_neuron: tuple[int, int]
) -> pd.DataFrame:
    ex = run.read_df("examples")
    ex = ex[(ex.layer == an_neuron[0]) & (ex.neuron == an_neuron[1]) & (ex.kind == "top")].copy()
    rows = []
    for r in ex.itertuples():
        a = article_at(planted, int(r.doc_id), int(r.position))
        if a is None:
            continue
        # tokens are [BOS] + doc[start : position + 1], doc indices counting BOS as 0
        cues = [c - int(r.start) + 1 for c in a.cue_indices if c >= int(r.start)]
        rows.append((int(r.example_id), list(r.tokens), cues))
    return pd.DataFrame(rows, columns=["example_id", "tokens", "cues"])


def test_top_direct_head_attends_to_the_cue_and_drives_the_neuron(
    run: RunDir,
    lm: LoadedModel,
    planted: dict[int, list[TokenAnnotation]],
    an_neuron: tuple[int, int],
) -> None:
    """The neuron's top head by mean `direct` attribution puts its largest attention on
    the object on the planted look-ups, and ablating it removes most of the activation and
    lowers p(" an"): the verify stage's counterfactual patch (`head_source_swap`: the word
    the head reads swapped for one it reads where the neuron is silent, consonant objects
    here) removes most of the activation wherever the head reads one word (measured on the
    default run: median 101-106%, p(" an") from about 0.78 to 0.01). Zeroing the head
    removes only 28-49% (the article slot alone leaves the neuron about half on, and a
    consonant object drives it below zero), so zeroing is only asked to lower p(" an").
    On L1N326 a second head, L1H0, reading the verb before the article slot ("wished
    for"), is the larger `direct` term on about a third of the prompts."""
    top = _top_head_pair(run, an_neuron)
    hl, h = int(top.head_layer), int(top["head"])
    eff = run.read_df("effects")
    eff = eff[(eff.head_layer == hl) & (eff["head"] == h)]
    swap = eff[eff.intervention == "head_source_swap"].set_index("example_id")
    zero = eff[eff.intervention == "head_zero_ablation"].set_index("example_id")
    ex = _example_cues(run, planted, an_neuron)
    acts = run.read_df("examples").set_index("example_id").trimmed_activation
    assert len(ex) >= 20
    # the trimmed prompt keeps the object on most look-ups; where the neuron still fires
    # at 0.8x without it (L1N326, through L1H0), there is no cue to read
    with_cue = ex[ex.cues.map(len) > 0]
    assert len(with_cue) >= 0.7 * len(ex), (len(with_cue), len(ex))
    reads_cue = 0
    for r in with_cue.itertuples():
        ids = torch.tensor([r.tokens])
        _, cache = lm.run_with_cache(ids, [hook_name(hl, "attn.hook_pattern")])
        pattern = cache[hook_name(hl, "attn.hook_pattern")][0, h, -1]
        reads_cue += int(int(pattern.argmax()) in r.cues)
    assert reads_cue >= 0.8 * len(with_cue), (reads_cue, len(with_cue))
    z = zero.reindex(ex.example_id)
    assert (z.delta_logprob < 0).mean() >= 0.8, z.delta_logprob
    mine = swap.reindex(ex.example_id).dropna(subset=["delta_activation"])
    # swapped where the head puts at least half its attention on one word
    assert len(mine) >= 0.7 * len(ex), (len(mine), len(ex))
    removed = -mine.delta_activation / acts[mine.index]
    assert (removed > 0.5).mean() >= 0.8, removed.round(2)
    # p(" an") falls wherever the swap brings a consonant object; where the slot only
    # takes vowel objects ("saw an elephant by", a position the head's attention
    # proposes), swapping one for another can move the neuron but not the article
    assert (mine.delta_logprob < 0).mean() >= 0.9, mine.delta_logprob


def _top_head_pair(run: RunDir, an_neuron: tuple[int, int]) -> pd.Series:
    layer, neuron = an_neuron
    pairs = run.read_df("pairs")
    mine = pairs[(pairs.layer == layer) & (pairs.neuron == neuron)]
    return mine.loc[mine.mean_direct.idxmax()]


def test_verify_ablates_the_top_head_even_when_its_pair_is_not_kept(
    run: RunDir, an_neuron: tuple[int, int]
) -> None:
    layer, neuron = an_neuron
    top = _top_head_pair(run, an_neuron)
    eff = run.read_df("effects")
    rows = eff[
        (eff.layer == layer)
        & (eff.neuron == neuron)
        & (eff.intervention == "head_zero_ablation")
        & (eff.head_layer == top.head_layer)
        & (eff["head"] == top["head"])
    ]
    ex = run.read_df("examples")
    ex = ex[(ex.layer == layer) & (ex.neuron == neuron)]
    assert len(rows) == len(ex)  # top prompts and contrasts
    on_top = rows[rows.example_id.isin(ex.example_id[ex.kind == "top"])]
    assert len(on_top) >= 20
    # p(" an") falls on most prompts where the neuron fires (25 of 30 measured): the head
    # is one of several routes to " an" (see test_why_ablating_the_named_neurons_halves_p_an)
    assert (on_top.delta_logprob < 0).mean() >= 0.8
    assert (on_top.delta_activation < 0).mean() >= 0.9
    assert top.ks_n_active + top.ks_n_inactive == len(rows)
    assert 0.0 <= top.ks_stat <= 1.0


def test_ks_separates_active_from_inactive_prompts_of_the_top_head(
    run: RunDir, an_neuron: tuple[int, int]
) -> None:
    """Active prompts (the head drives the neuron) against inactive ones (mostly the
    contrast prompts, where an object starting with a consonant comes before the article):
    ablating the head lowers p(" an") on the first, not on the second."""
    top = _top_head_pair(run, an_neuron)
    assert top.ks_n_active >= 10 and top.ks_n_inactive >= 10, top
    assert top.ks_pvalue < 0.05 and top.ks_stat > 0.5, top


def test_planted_pairs_are_kept_explained_and_scored(
    run: RunDir, an_neuron: tuple[int, int]
) -> None:
    """The " an" neuron's pairs with the heads that read the object (ground truth): kept,
    explained by naming vowel-initial objects, and scored E >= 0.65 on held-out prompts.
    (E >= 0.9 under the ablation_typical label rule; the default ablation_share rule also
    labels the head active on the neuron's non-planted top prompts, "Paula dreamed
    about", where it is the main but a small driver, and the vowel-object explanation
    does not cover those: E 0.68 for L1N326 on this 500-story slice (19 test prompts),
    0.96 on the 2,000-story default run.)"""
    gt = run.meta["ground_truth"]
    assert gt["found"], gt
    layer, neuron = an_neuron
    pairs = run.read_df("pairs")
    readers = {(hl, h) for lay, n, hl, h in gt["truth_pairs"] if (lay, n) == (layer, neuron)}
    mine = pairs[(pairs.layer == layer) & (pairs.neuron == neuron)]
    is_reader = [
        (int(a), int(b)) in readers for a, b in zip(mine.head_layer, mine["head"], strict=True)
    ]
    kept = mine[mine.kept & np.array(is_reader)]
    assert len(kept), mine
    scores = run.read_df("scores")
    expl = run.read_df("explanations")
    for p in kept.itertuples():
        key = (
            (scores.layer == layer)
            & (scores.neuron == neuron)
            & (scores.head_layer == p.head_layer)
            & (scores["head"] == p.head)
        )
        s = scores[key]
        assert len(s) and float(s.balanced_accuracy.iloc[0]) >= 0.65, s.T
        text = expl[
            (expl.layer == layer)
            & (expl.neuron == neuron)
            & (expl.head_layer == p.head_layer)
            & (expl["head"] == p.head)
        ].explanation.iloc[0]
        assert sum(w in text for w in VOWEL_OBJECTS) >= 2, text
        # the head's ablation lowers p(" an") on its active examples
        assert p.ks_pvalue < 0.05, p


def test_headline_findings_name_the_article_lookup(run: RunDir, an_neuron: tuple[int, int]) -> None:
    """The " an" neuron's finding: the head that reads the object, its cue the
    vowel-initial objects, confirmed by the causal ground truth (patching the head from a
    run with the object swapped moves the neuron)."""
    f = run.read_df("findings")
    layer, neuron = an_neuron
    mine = f[(f.layer == layer) & (f.neuron == neuron)]
    assert len(mine), f
    top = mine.iloc[0]
    cues = str(top.cue).split(", ")
    assert all(c in VOWEL_OBJECTS for c in cues), top
    assert top.median_share_removed >= 0.5 and top.median_delta_logprob < -1
    gt = run.meta["ground_truth"]
    assert [layer, neuron, int(top.head_layer), int(top["head"])] in gt["truth_pairs"]
    assert gt["cue_decides"]["article"] >= 0.9
    # on this 500-story slice: precision 1.00 (5 of 5), recall 0.71; the default run's
    # 2,000 stories give 1.00 and 1.00 (docs/worlds.md)
    assert gt["precision"] >= 0.9, gt


def test_explanations_are_specific_to_their_pair(run: RunDir) -> None:
    """Scored with the explanation of another neuron's pair, a pair's E falls to chance
    (mean within 0.4-0.65), well below its own explanation's (by > 0.1, Wilcoxon p <
    0.01), for the selected neurons and the random baseline alike (docs/limits.md:
    the random neurons' own E is not near 0.5 in this world)."""
    stats = run.meta["score_stats"]["mismatched"]
    ctl = run.read_df("score_controls")
    assert len(ctl) and ((ctl.layer != ctl.donor_layer) | (ctl.neuron != ctl.donor_neuron)).all()
    for group in ("selected", "baseline"):
        g = stats[group]
        assert g["n"] >= 20, g
        assert 0.4 <= g["mean"] <= 0.65, g
        assert g["own_minus_mismatched"] > 0.1 and g["wilcoxon_pvalue"] < 0.01, g


@pytest.fixture(scope="module")
def why_on_article_prompts(lm: LoadedModel):  # type: ignore[no-untyped-def]
    """`why` on the first 3 article look-ups with " an" in fresh held-out stories, each
    prompt ending just before the article."""
    n = 3
    out = []
    for d in generate_corpus(60, 4242, "heldout"):
        for a in d.annotations:
            if a.kind == "article" and a.target == " an" and len(out) < n:
                r = explain_prediction(lm, d.text[: a.target_char], WhyConfig(target=" an"))
                out.append((a, r))
    assert len(out) == n
    return out


def test_why_names_an_an_neuron_and_the_head_reading_the_object(
    why_on_article_prompts,  # type: ignore[no-untyped-def]
) -> None:
    for a, r in why_on_article_prompts:
        an = [n for n in r.neurons if n.top_token == " an"]
        assert an, [n.name for n in r.neurons]
        looked_at = {s.token.strip() for n in an for h in n.heads for s in h.sources[:1]}
        assert a.cue_word in looked_at, (a.cue_word, [n.heads for n in an])


def test_why_the_neurons_it_names_carry_p_an(why_on_article_prompts, lm: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    """The causal check zeroes the ranked neurons best first until p(" an") is halved. In
    this model the five top neurons alone do not move it (" an" is spread over article
    neurons and repaired downstream; docs/limits.md), so what is checked is that a
    short prefix of the ranking carries it, that it includes " an" neurons, and that as
    many random neurons from the same layers do not: p(" an") halved by at most 20 named
    neurons, recomputed here by hand, while the random control keeps it within 10%."""
    import torch

    from lookuplens.model import hook_name

    for _, r in why_on_article_prompts:
        assert r.carrying, [(c.k, c.prob) for c in r.curve]
        assert len(r.carrying) <= 20
        assert any(n.top_token == " an" for n in r.carrying[:5])
        by_layer: dict[int, list[int]] = {}
        for n in r.carrying:
            by_layer.setdefault(n.layer, []).append(n.neuron)

        def zero(cols: list[int]):  # type: ignore[no-untyped-def]
            def fn(x, _n):  # type: ignore[no-untyped-def]
                x = x.clone()
                x[..., cols] = 0
                return x

            return fn

        ids = lm.to_tokens(r.prompt)
        hooks = [(hook_name(layer, "mlp.hook_post"), zero(c)) for layer, c in by_layer.items()]
        logits, _ = lm.run_with_cache(ids, [], extra_hooks=hooks)
        assert logits is not None
        p_after = float(torch.softmax(logits[0, -1].double(), -1)[r.target_id])
        assert p_after < 0.5 * r.prob
        control = [a for a in r.ablations if a.what.startswith("control:")][0]
        assert abs(control.prob_after - r.prob) < 0.1 * r.prob, control


def test_pruned_attribution_labels_match_the_full_sweep(run: RunDir, lm: LoadedModel) -> None:
    """Issue 23: exact ablations on the candidate heads of each prompt (the top 6 by
    attribution patching, the top 3 by direct, those the default share admits; of up to
    16) give the labels and the kept pairs of the full sweep (the run: the bundled model
    is never pruned by default, its layers have at most 16 upstream heads)."""
    from lookuplens.attribute import (
        AttributeConfig,
        attribute_examples,
        build_pairs,
        label_examples,
    )

    examples = run.read_table("examples")
    full_labels = run.read_df("labels")
    full_pairs = run.read_df("pairs")
    cfg = dataclasses.replace(AttributeConfig(), candidates=6, sweep_heads=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        att = attribute_examples(lm, examples, cfg)
    finally:
        torch.set_num_threads(threads)
    labels = label_examples(att, examples, cfg).to_pandas()
    pairs = build_pairs(
        att, label_examples(att, examples, cfg), run.read_table("neurons"), cfg, examples
    ).to_pandas()
    key = ["example_id", "head_layer", "head"]
    both = full_labels.merge(labels, on=key, suffixes=("_full", "_pruned"))
    assert len(both) == len(full_labels)
    agree = float((both.active_full == both.active_pruned).mean())
    recall = float(both[both.active_full].candidate_pruned.mean())
    print(f"pruned to 6+3 of <=16 heads: labels agree {agree:.4f}, candidate recall {recall:.4f}")
    assert agree >= 0.95
    pk = ["layer", "neuron", "head_layer", "head"]
    kept_full = set(map(tuple, full_pairs[full_pairs.kept][pk].to_numpy().tolist()))
    kept_pruned = set(map(tuple, pairs[pairs.kept][pk].to_numpy().tolist()))
    jaccard = len(kept_full & kept_pruned) / max(len(kept_full | kept_pruned), 1)
    print(f"kept pairs: full {len(kept_full)}, pruned {len(kept_pruned)}, Jaccard {jaccard:.3f}")
    assert jaccard >= 0.8
