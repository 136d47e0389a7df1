"""The scan stage against brute force, and its resume after a kill."""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lookuplens.corpus import CorpusSpec, iter_tokenized
from lookuplens.examples import ExamplesConfig, build_examples, neuron_activation_at
from lookuplens.model import LoadedModel, hook_name, load_model
from lookuplens.scan import ScanConfig, bound_native_heap, scan_corpus

NEURONS = [(0, 3), (1, 5), (1, 60), (0, 0), (1, 17)]


def write_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = "the quick brown fox an owl apple market river tree she bought at".split()
    path.write_text(
        "\n".join(" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(n_docs))
        + "\n"
    )
    return path


@pytest.fixture
def lm(tiny_dirs: dict[str, Path]) -> LoadedModel:
    return load_model(tiny_dirs["gpt2"], device="cpu")


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusSpec:
    return CorpusSpec(str(write_corpus(tmp_path / "corpus.txt")))


def brute_force(lm: LoadedModel, spec: CorpusSpec, k: int, one_per_doc: bool) -> dict:
    """Each document alone through the model; candidates sorted by the documented rule."""
    per_neuron: dict[tuple[int, int], list] = {nk: [] for nk in NEURONS}
    names = [hook_name(layer, "mlp.hook_post") for layer in range(lm.n_layers)]
    for d in iter_tokenized(spec, lm.tokenizer, lm.max_context):
        _, cache = lm.run_with_cache(torch.from_numpy(np.array([d.tokens])), names)
        for layer, n in NEURONS:
            a = cache[names[layer]][0, :, n].double().numpy()
            if one_per_doc:
                per_neuron[(layer, n)].append((-a.max(), d.doc_id, int(a.argmax())))
            else:
                per_neuron[(layer, n)] += [(-v, d.doc_id, p) for p, v in enumerate(a)]
    return {nk: sorted(c)[:k] for nk, c in per_neuron.items()}


@pytest.mark.parametrize("one_per_doc", [True, False])
def test_topk_equals_brute_force(lm: LoadedModel, corpus: CorpusSpec, one_per_doc: bool) -> None:
    cfg = ScanConfig(k=7, one_per_doc=one_per_doc, batch_tokens=500, shard_docs=23)
    res = scan_corpus(lm, NEURONS, corpus, cfg)
    df = res.topk.to_pandas()
    expected = brute_force(lm, corpus, 7, one_per_doc)
    for (layer, n), exp in expected.items():
        got = df[(df.layer == layer) & (df.neuron == n)].sort_values("rank")
        assert list(got["rank"]) == list(range(7))
        assert list(zip(got.doc_id, got.position, strict=True)) == [(d, p) for _, d, p in exp]
        np.testing.assert_allclose(got.activation, [-v for v, _, _ in exp], atol=1e-5)
    if one_per_doc:
        assert not df.duplicated(["layer", "neuron", "doc_id"]).any()
    stats = res.stats.to_pandas()
    assert (stats.n_tokens == res.corpus.tokens).all()
    best = df[df["rank"] == 0].set_index(["layer", "neuron"]).activation
    for row in stats.itertuples():
        assert row.act_max == pytest.approx(best[(row.layer, row.neuron)], abs=1e-5)
        assert 0 <= row.act_frac_pos <= 1


def test_shard_size_does_not_change_the_result(lm: LoadedModel, corpus: CorpusSpec) -> None:
    a = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=5, shard_docs=7, batch_tokens=400))
    b = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=5, shard_docs=1000, batch_tokens=400))
    assert a.topk.select(["layer", "neuron", "rank", "doc_id", "position"]).equals(
        b.topk.select(["layer", "neuron", "rank", "doc_id", "position"])
    )
    np.testing.assert_array_equal(a.topk.column("activation"), b.topk.column("activation"))


def test_trimmed_examples_end_at_the_firing_token_and_keep_activation(
    lm: LoadedModel, corpus: CorpusSpec
) -> None:
    res = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=6))
    cfg = ExamplesConfig(
        window=3, max_prompt_tokens=30, seed=1, contrast=0, keep_read_word=False, keep_heads=0
    )
    ex = build_examples(lm, res.topk, corpus, cfg).to_pandas()
    assert len(ex) > 0 and set(ex.kind) == {"top"} and set(ex.read_position) == {-1}
    docs = {d.doc_id: d.tokens for d in iter_tokenized(corpus, lm.tokenizer, lm.max_context)}
    bos = lm.bos_token_id
    # recompute the activation at the end of each trimmed prompt, and one token shorter
    acts = neuron_activation_at(
        lm, [list(t) for t in ex.tokens], list(zip(ex.layer, ex.neuron, strict=True))
    )
    for row, a in zip(ex.itertuples(), acts, strict=True):
        toks = list(row.tokens)
        assert toks[0] == bos and len(toks) < 30
        assert toks[-1] == docs[row.doc_id][row.position]  # ends at the firing token
        assert toks[1:] == list(docs[row.doc_id][row.start : row.position + 1])
        assert a == pytest.approx(row.trimmed_activation, abs=1e-5)
        if row.activation > 0:
            assert row.trimmed_activation >= 0.8 * row.activation - 1e-6
    # the start is the latest one: one more token trimmed falls below the threshold
    shorter = ex[ex.start < ex.position]
    cut = [[bos, *list(t[2:])] for t in shorter.tokens]
    acts2 = neuron_activation_at(lm, cut, list(zip(shorter.layer, shorter.neuron, strict=True)))
    for row, a in zip(shorter.itertuples(), acts2, strict=True):
        if row.activation > 0:
            assert a < 0.8 * row.activation + 1e-6
    assert set(ex.split) == {"train", "test"}
    assert not pd_duplicated(ex.layer, ex.neuron, ex.tokens.map(tuple))
    again = build_examples(lm, res.topk, corpus, cfg).to_pandas()
    assert again.drop(columns="tokens").equals(ex.drop(columns="tokens"))
    assert again.tokens.map(tuple).equals(ex.tokens.map(tuple))


def test_trimming_keeps_the_word_the_top_head_reads(lm: LoadedModel, corpus: CorpusSpec) -> None:
    """With `keep_read_word` a prompt starts at the latest at the word the neuron's top
    head (largest direct attribution on the untrimmed prompt) attends to most; the rest of
    the 0.8x rule's prompts are unchanged."""
    from lookuplens.attribute import decompose_neuron_input
    from lookuplens.explain.offline import last_token_attention

    res = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=6))
    plain_cfg = ExamplesConfig(
        window=3, max_prompt_tokens=30, seed=1, contrast=0, keep_read_word=False, keep_heads=0
    )
    plain = build_examples(lm, res.topk, corpus, plain_cfg).to_pandas()
    kept = build_examples(
        lm, res.topk, corpus, dataclasses.replace(plain_cfg, keep_read_word=True)
    ).to_pandas()
    key = ["layer", "neuron", "rank", "doc_id", "position"]
    both = plain.merge(kept, on=key, suffixes=("_plain", "_kept"))
    assert len(both) >= 0.9 * len(plain)
    assert (both.start_kept <= both.start_plain).all()
    moved = both[both.start_kept < both.start_plain]
    assert len(moved) > 0
    assert (moved.read_position_kept == moved.start_kept).all()
    same = both[both.start_kept == both.start_plain]
    assert (same.read_position_kept >= same.start_kept).all()
    docs = {d.doc_id: d.tokens for d in iter_tokenized(corpus, lm.tokenizer, lm.max_context)}
    acts = neuron_activation_at(
        lm, [list(t) for t in kept.tokens], list(zip(kept.layer, kept.neuron, strict=True))
    )
    np.testing.assert_allclose(acts, kept.trimmed_activation, atol=1e-5)
    bos = lm.bos_token_id
    for row in moved.head(5).itertuples():  # the read word, recomputed by hand
        first = max(1, row.position + 1 - 28)
        prompt = [bos, *docs[row.doc_id][first : row.position + 1].tolist()]
        dec = decompose_neuron_input(
            lm, torch.tensor(prompt), row.layer, row.neuron, len(prompt) - 1
        )
        heads = {k: v for k, v in dec.terms.items() if "H" in k and k.startswith("L")}
        hl, h = (int(x) for x in max(heads, key=heads.__getitem__)[1:].split("H"))
        att = last_token_attention(lm, [prompt], hl, h)[0]
        att[0] = att[-1] = 0.0
        assert first + int(np.argmax(att)) - 1 == row.read_position_kept


def test_trimming_keeps_the_driving_heads_direct_attribution(
    lm: LoadedModel, corpus: CorpusSpec
) -> None:
    """With `keep_heads` a trimmed prompt keeps 0.8x of the activation and of each driving
    head's direct attribution (top heads on the untrimmed prompt), and trimming one more
    token breaks one of them; the head values are the exact direct decomposition's."""
    from lookuplens.attribute import decompose_neuron_input
    from lookuplens.examples import _driving_heads, activation_and_heads_at

    res = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=6))
    cfg = ExamplesConfig(window=3, max_prompt_tokens=30, seed=1, contrast=0,
                         keep_read_word=False, keep_heads=2, keep_head_min=0.0)  # fmt: skip
    ex = build_examples(lm, res.topk, corpus, cfg).to_pandas()
    plain = build_examples(lm, res.topk, corpus, dataclasses.replace(cfg, keep_heads=0))
    plain_df = plain.to_pandas()
    key = ["layer", "neuron", "rank", "doc_id", "position"]
    both = plain_df.merge(ex, on=key, suffixes=("_plain", "_heads"))
    assert (both.start_heads <= both.start_plain).all()  # never trimmed further
    docs = {d.doc_id: d.tokens for d in iter_tokenized(corpus, lm.tokenizer, lm.max_context)}
    rows = ex.to_dict("records")
    refs = _driving_heads(lm, rows, docs, cfg)
    bos = lm.bos_token_id
    neurons = [(int(r["layer"]), int(r["neuron"])) for r in rows]
    heads = [[h[:2] for h in ref] for ref in refs]
    acts, vals = activation_and_heads_at(lm, [list(t) for t in ex.tokens], neurons, heads)
    cut = [[bos, *list(t[2:])] for t in ex.tokens]
    acts2, vals2 = activation_and_heads_at(lm, cut, neurons, heads)
    checked = 0
    for i, r in enumerate(rows):
        ref = np.array([h[2] for h in refs[i]])
        if r["activation"] <= 0 or not len(ref):
            continue
        checked += 1
        assert acts[i] >= 0.8 * r["activation"] - 1e-6 and np.all(vals[i] >= 0.8 * ref - 1e-6)
        if r["start"] < r["position"]:
            assert acts2[i] < 0.8 * r["activation"] + 1e-6 or np.any(vals2[i] < 0.8 * ref + 1e-6)
    assert checked >= 5
    r = rows[0]
    dec = decompose_neuron_input(lm, torch.tensor(list(r["tokens"])), r["layer"], r["neuron"],
                                 len(r["tokens"]) - 1)  # fmt: skip
    for (hl, h), v in zip(heads[0], vals[0], strict=True):
        assert v == pytest.approx(dec.terms[f"L{hl}H{h}"], abs=1e-5)


def test_contrast_prompts_mirror_top_prompts_where_the_neuron_is_silent(
    lm: LoadedModel, corpus: CorpusSpec
) -> None:
    res = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=6))
    cfg = ExamplesConfig(window=3, max_prompt_tokens=30, seed=1, contrast=4, contrast_fraction=0.2)
    ex = build_examples(lm, res.topk, corpus, cfg).to_pandas()
    top, con = ex[ex.kind == "top"], ex[ex.kind == "contrast"]
    base = build_examples(lm, res.topk, corpus, dataclasses.replace(cfg, contrast=0)).to_pandas()
    assert (
        top.drop(columns=["example_id", "split"])
        .reset_index(drop=True)
        .equals(base.drop(columns=["example_id", "split"]))
    )  # contrasts are added; the top prompts are unchanged
    assert len(con) > 0 and (con["rank"] == -1).all()
    docs = {d.doc_id: d.tokens for d in iter_tokenized(corpus, lm.tokenizer, lm.max_context)}
    full = neuron_activation_at(
        lm,
        [list(docs[r.doc_id][: r.position + 1]) for r in con.itertuples()],
        list(zip(con.layer, con.neuron, strict=True)),
    )
    at_prompt = neuron_activation_at(
        lm, [list(t) for t in con.tokens], list(zip(con.layer, con.neuron, strict=True))
    )
    for key, g in con.groupby(["layer", "neuron"]):
        mine = top[(top.layer == key[0]) & (top.neuron == key[1])]
        assert len(g) <= 4 and not set(g.doc_id) & set(mine.doc_id)
        assert g.doc_id.is_unique  # one contrast per document
        shapes = {(t[-1], len(t)) for t in mine.tokens}
        limit = 0.2 * max(float(np.median(mine.activation)), 0.0)
        for r in g.itertuples():
            toks = list(r.tokens)
            assert toks[0] == lm.bos_token_id and toks[1:] == list(
                docs[r.doc_id][r.start : r.position + 1]
            )
            # same last token as a top prompt, and as long unless the document is shorter
            assert any(t == toks[-1] and (n == len(toks) or r.start == 1) for t, n in shapes)
            assert r.activation <= limit + 1e-6
    assert np.allclose(full, con.activation, atol=1e-5)
    assert np.allclose(at_prompt, con.trimmed_activation, atol=1e-5)
    again = build_examples(lm, res.topk, corpus, cfg).to_pandas()
    assert again.drop(columns="tokens").equals(ex.drop(columns="tokens"))


def pd_duplicated(layers, neurons, keys) -> bool:  # type: ignore[no-untyped-def]
    seen = set()
    for item in zip(layers, neurons, keys, strict=True):
        if item in seen:
            return True
        seen.add(item)
    return False


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from lookuplens.pipeline import run_pipeline, SilentReporter
    from tests_helper_cfg import cfg
    class Killer(SilentReporter):
        def update(self, done, total=None, info=""):
            shards = os.path.join(sys.argv[1], "shards", "scan")
            if os.path.isdir(shards) and len(os.listdir(shards)) >= 2:
                os.kill(os.getpid(), signal.SIGKILL)
    run_pipeline(cfg(sys.argv[2], sys.argv[3]), sys.argv[1], until="examples", reporter=Killer())
    """
)

CFG_MODULE = textwrap.dedent(
    """
    from lookuplens.corpus import CorpusSpec
    from lookuplens.neurons import NeuronsConfig
    from lookuplens.pipeline import RunConfig
    from lookuplens.scan import ScanConfig
    def cfg(model, corpus):
        return RunConfig(model=model, corpus=CorpusSpec(corpus), device="cpu",
                         neurons=NeuronsConfig(top_n=3, token_filter="none"),
                         scan=ScanConfig(k=5, shard_docs=10, batch_tokens=256))
    """
)


@pytest.mark.slow  # a scan killed in a new process, then resumed (4-7 s)
def test_killed_scan_resumes_to_identical_tables(
    tmp_path: Path, tiny_dirs: dict[str, Path]
) -> None:
    corpus = write_corpus(tmp_path / "c.txt", n_docs=80)
    (tmp_path / "tests_helper_cfg.py").write_text(CFG_MODULE)
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "kill.py"),
            str(killed),
            str(tiny_dirs["gpt2"]),
            str(corpus),
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    shards = sorted((killed / "shards" / "scan").iterdir())
    assert 2 <= len(shards) < 8  # killed mid-scan: 8 shards in all
    assert not (killed / "firings.parquet").exists()
    sys.path.insert(0, str(tmp_path))
    try:
        from tests_helper_cfg import cfg  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    from lookuplens.pipeline import run_pipeline
    from lookuplens.store import RunDir

    resumed = run_pipeline(cfg(str(tiny_dirs["gpt2"]), str(corpus)), killed, until="examples")
    fresh = run_pipeline(
        cfg(str(tiny_dirs["gpt2"]), str(corpus)), tmp_path / "fresh", until="examples"
    )
    for table in ("neurons", "firings", "activation_stats", "examples"):
        assert resumed.read_table(table).equals(fresh.read_table(table)), table
    assert RunDir.open(killed).meta["corpus"] == RunDir.open(tmp_path / "fresh").meta["corpus"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_bound_native_heap_applies_on_glibc() -> None:
    assert bound_native_heap() is True
    assert bound_native_heap(4 << 20) is True  # idempotent, any threshold


def test_neuron_activation_at_equals_the_native_mlp(
    tiny_dirs: dict[str, Path], family: str
) -> None:
    """The trimming's shortcut (stop where the MLP reads the stream, compute only the wanted
    neurons at the last positions) gives the native MLP's value, for every family (gated
    MLPs, parallel residual)."""
    lm = load_model(tiny_dirs[family], device="cpu")
    rng = np.random.default_rng(0)
    vocab = lm.tokenizer.vocab_size
    prompts = [rng.integers(1, min(vocab, 500), size=int(n)).tolist() for n in (3, 9, 5, 12, 1, 7)]
    neurons = [(int(i % lm.n_layers), int(rng.integers(lm.d_mlp))) for i in range(len(prompts))]
    got = neuron_activation_at(lm, prompts, neurons, batch_tokens=20)
    for toks, (layer, n), g in zip(prompts, neurons, got, strict=True):
        _, cache = lm.run_with_cache(torch.tensor([toks]), [hook_name(layer, "mlp.hook_post")])
        want = float(cache[hook_name(layer, "mlp.hook_post")][0, -1, n])
        assert g == pytest.approx(want, abs=1e-5), (family, layer, n)


def test_silent_limit_is_a_share_of_the_median_top_activation_never_below_zero() -> None:
    from lookuplens.contrast import silent_limit

    assert silent_limit(0.2, [1.0, 3.0, 10.0]) == pytest.approx(0.6)
    assert silent_limit(0.2, np.array([4.0, 6.0])) == pytest.approx(1.0)
    # a neuron whose top prompts do not fire on median: only a non-positive value is silent
    assert silent_limit(0.2, [-1.0, -0.5, 0.3]) == 0.0


def brute_force_on_token(
    lm: LoadedModel, spec: CorpusSpec, tokens: list[int], k: int, n_on: int, fraction: float
) -> dict:
    """The documented on-token rule, one document at a time: per document the strongest
    position whose next token is the neuron's, top firings left out, above the floor."""
    top = brute_force(lm, spec, k, True)
    cands: dict[tuple[int, int], list] = {nk: [] for nk in NEURONS}
    names = [hook_name(layer, "mlp.hook_post") for layer in range(lm.n_layers)]
    for d in iter_tokenized(spec, lm.tokenizer, lm.max_context):
        _, cache = lm.run_with_cache(torch.from_numpy(np.array([d.tokens])), names)
        for (layer, n), tok in zip(NEURONS, tokens, strict=True):
            a = cache[names[layer]][0, :, n].double().numpy()
            at = [p for p in range(len(d.tokens) - 1) if d.tokens[p + 1] == tok]
            if at:
                p = max(at, key=lambda q: (a[q], -q))
                cands[(layer, n)].append((-a[p], d.doc_id, p))
    out = {}
    for nk, c in cands.items():
        have = {(d, p) for _, d, p in top[nk]}
        floor = fraction * float(np.median([-v for v, _, _ in top[nk]]))
        keep = [x for x in sorted(c) if (x[1], x[2]) not in have and -x[0] >= floor and -x[0] > 0]
        out[nk] = keep[:n_on]
    return out


@pytest.mark.parametrize("shard_docs", [9, 1000])
def test_on_token_firings_equal_brute_force(
    lm: LoadedModel, corpus: CorpusSpec, shard_docs: int
) -> None:
    words = [" owl", " apple", " market", " the", " tree"]
    tokens = [lm.tokenizer.encode(w)[-1] for w in words]
    cfg = ScanConfig(k=6, on_token=4, on_token_fraction=0.3, shard_docs=shard_docs)
    res = scan_corpus(lm, NEURONS, corpus, cfg, tokens=tokens)
    df = res.topk.to_pandas()
    expected = brute_force_on_token(lm, corpus, tokens, 6, 4, 0.3)
    assert sum(len(v) for v in expected.values()) >= 5  # the test has something to check
    for (layer, n), exp in expected.items():
        got = df[(df.layer == layer) & (df.neuron == n)].sort_values("rank")
        assert list(got["rank"]) == list(range(6 + len(exp)))
        assert list(got.on_token) == [False] * 6 + [True] * len(exp)
        on = got[got.on_token]
        assert list(zip(on.doc_id, on.position, strict=True)) == [(d, p) for _, d, p in exp]
        np.testing.assert_allclose(on.activation, [-v for v, _, _ in exp], atol=1e-5)
    # without tokens (or with on_token 0) the table is the plain top k
    plain = scan_corpus(lm, NEURONS, corpus, dataclasses.replace(cfg, on_token=0), tokens=tokens)
    assert not plain.topk.column("on_token").to_pylist().count(True)
    assert plain.topk.num_rows == 6 * len(NEURONS)
