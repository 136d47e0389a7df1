"""Attribution methods against hand computations, for every architecture family."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import Tensor, nn

from lookuplens.attribute import (
    AttributeConfig,
    attribute_examples,
    build_pairs,
    decompose_neuron_input,
    head_means,
    label_examples,
    plan_batches,
    upstream_layers,
)
from lookuplens.model import LoadedModel, from_hf, hook_name, load_model

TEXTS = ["An owl sat on the", "She bought an apple at the market", "The quick brown fox"]
NEURONS = [7, 3, 9]


@pytest.fixture
def lm(tiny_dirs: dict[str, Path], family: str) -> LoadedModel:
    return load_model(tiny_dirs[family], device="cpu")


def examples(lm: LoadedModel, layer: int = 1) -> pa.Table:
    prompts = [lm.to_tokens(t)[0].tolist() for t in TEXTS]
    return pa.table(
        {
            "example_id": [0, 1, 2],
            "layer": [layer] * 3,
            "neuron": NEURONS,
            "tokens": prompts,
            "trimmed_activation": [1.0, 1.0, 1.0],
            "split": ["train", "train", "test"],
        }
    )


def value(att: pa.Table, method: str, example: int, hl: int, h: int) -> float:
    df = att.to_pandas()
    sel = df[
        (df.method == method)
        & (df.example_id == example)
        & (df.head_layer == hl)
        & (df["head"] == h)
    ]
    assert len(sel) == 1
    return float(sel.value.iloc[0])


def post_with(lm: LoadedModel, tokens: list[int], layer: int, neuron: int, hooks=()) -> float:  # type: ignore[no-untyped-def]
    name = hook_name(layer, "mlp.hook_post")
    _, cache = lm.run_with_cache(torch.tensor([tokens]), [name], extra_hooks=list(hooks))
    return float(cache[name][0, -1, neuron])


def test_direct_decomposition_closes(lm: LoadedModel) -> None:
    for text in TEXTS:
        toks = lm.to_tokens(text)[0]
        for layer in range(lm.n_layers):
            d = decompose_neuron_input(lm, toks, layer, 5, len(toks) - 1)
            assert sum(d.terms.values()) == pytest.approx(d.pre_activation, abs=1e-4)
            n_heads = sum(1 for k in d.terms if "H" in k)
            assert n_heads == lm.n_heads * (layer + (0 if lm.parallel_residual else 1))


def test_batched_direct_equals_the_decomposition(lm: LoadedModel) -> None:
    ex = examples(lm)
    att = attribute_examples(lm, ex, AttributeConfig(methods=("direct",), label_rule="mean_std"))
    for i, text in enumerate(TEXTS):
        toks = lm.to_tokens(text)[0]
        d = decompose_neuron_input(lm, toks, 1, NEURONS[i], len(toks) - 1)
        for hl in upstream_layers(lm, 1):
            for h in range(lm.n_heads):
                assert value(att, "direct", i, hl, h) == pytest.approx(
                    d.terms[f"L{hl}H{h}"], abs=1e-5
                )


def test_ablations_equal_full_recomputation(lm: LoadedModel) -> None:
    ex = examples(lm)
    cfg = AttributeConfig(
        methods=("zero_ablation", "mean_ablation", "resample_ablation"),
        label_method="zero_ablation",
        seed=3,
    )
    att = attribute_examples(lm, ex, cfg)
    prompts = [list(t) for t in ex.column("tokens").to_pylist()]
    means = head_means(lm, prompts, 1)
    # the donor of each example, as the resample ablation draws it within its batch
    (batch,) = plan_batches(ex, cfg)[1]
    order = [int(e) for e in batch.example_ids]
    g = np.random.default_rng([3, order[0]])
    pick = (np.arange(3) + g.integers(1, 3, size=3)) % 3
    donor = {order[j]: order[int(pick[j])] for j in range(3)}
    for i in range(3):
        clean = post_with(lm, prompts[i], 1, NEURONS[i])
        for hl in upstream_layers(lm, 1):
            _, dz = lm.run_with_cache(
                torch.tensor([prompts[donor[i]]]), [hook_name(hl, "attn.hook_z")]
            )
            z_donor = dz[hook_name(hl, "attn.hook_z")][0]
            for h in range(lm.n_heads):

                def zero(z: Tensor, _n: str, h: int = h) -> Tensor:
                    z = z.clone()
                    z[:, :, h] = 0
                    return z

                def mean(z: Tensor, _n: str, h: int = h, hl: int = hl) -> Tensor:
                    z = z.clone()
                    z[:, :, h] = means[hl][h]
                    return z

                def resample(z: Tensor, _n: str, h: int = h, z_donor: Tensor = z_donor) -> Tensor:
                    z = z.clone()
                    p = torch.clamp(torch.arange(z.shape[1]), max=z_donor.shape[0] - 1)
                    z[0, :, h] = z_donor[p, h]
                    return z

                for method, fn in (
                    ("zero_ablation", zero),
                    ("mean_ablation", mean),
                    ("resample_ablation", resample),
                ):
                    hand = clean - post_with(
                        lm, prompts[i], 1, NEURONS[i], [(hook_name(hl, "attn.hook_z"), fn)]
                    )
                    assert value(att, method, i, hl, h) == pytest.approx(hand, abs=1e-6), method


def test_attribution_patching_equals_ablation_on_a_linear_path(tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    lm0 = load_model(tiny_dirs["gpt2"], device="cpu")
    cfg = GPT2Config.from_pretrained(tiny_dirs["gpt2"])
    cfg.activation_function = "linear"
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"], config=cfg)
    hf.transformer.h[0].ln_2 = nn.Identity()  # head -> neuron input is now linear
    lm = from_hf(hf, lm0.tokenizer)
    ex = examples(lm, layer=0)
    att = attribute_examples(
        lm,
        ex,
        AttributeConfig(
            methods=("zero_ablation", "attribution_patching"), label_method="zero_ablation"
        ),
    )
    df = att.to_pandas().pivot_table(
        index=["example_id", "head_layer", "head"], columns="method", values="value"
    )
    np.testing.assert_allclose(df.attribution_patching, df.zero_ablation, atol=1e-6)
    assert df.zero_ablation.abs().max() > 1e-4


def test_attribution_patching_is_first_order_close_on_a_real_model(lm: LoadedModel) -> None:
    att = attribute_examples(
        lm,
        examples(lm),
        AttributeConfig(
            methods=("zero_ablation", "attribution_patching"), label_method="zero_ablation"
        ),
    )
    df = att.to_pandas().pivot_table(
        index=["example_id", "head_layer", "head"], columns="method", values="value"
    )
    corr = np.corrcoef(df.attribution_patching, df.zero_ablation)[0, 1]
    assert corr > 0.5


def test_path_patching_is_the_direct_path_part(lm: LoadedModel) -> None:
    """For heads of the neuron's own layer, the direct path is the only path: equal effects."""
    if lm.parallel_residual:
        pytest.skip("the neuron's own layer has no upstream heads")
    att = attribute_examples(
        lm,
        examples(lm),
        AttributeConfig(methods=("zero_ablation", "path_patching"), label_method="zero_ablation"),
    )
    df = att.to_pandas()
    df = df[df.head_layer == 1].pivot_table(
        index=["example_id", "head"], columns="method", values="value"
    )
    np.testing.assert_allclose(df.path_patching, df.zero_ablation, atol=1e-6)


def test_same_layer_option_and_parallel_residual(lm: LoadedModel) -> None:
    assert upstream_layers(lm, 1, include_same_layer=False) == [0]
    assert upstream_layers(lm, 1) == ([0] if lm.parallel_residual else [0, 1])


def test_labels_and_pairs(tiny_dirs: dict[str, Path]) -> None:
    lm = load_model(tiny_dirs["gpt2"], device="cpu")
    ex = examples(lm)
    cfg = AttributeConfig(methods=("direct", "zero_ablation"), label_rule="top_k", label_top_k=2)
    att = attribute_examples(lm, ex, cfg)
    labels = label_examples(att, ex, cfg).to_pandas()
    assert len(labels) == 3 * 2 * lm.n_heads
    assert (labels.groupby("example_id").active.sum() <= 2).all()
    d = att.to_pandas()
    d = d[d.method == "direct"]
    for eid, g in labels.groupby("example_id"):
        top = d[d.example_id == eid].sort_values("value", ascending=False).head(2)
        expect = {(r.head_layer, r["head"]) for _, r in top.iterrows() if r.value > 0}
        got = {(r.head_layer, r["head"]) for _, r in g[g.active].iterrows()}
        assert got == expect
    neurons = pa.table(
        {
            "layer": [1] * 3,
            "neuron": NEURONS,
            "token": [" a", " b", " c"],
            "baseline": [False, False, True],
        }
    )
    pairs = build_pairs(att, label_examples(att, ex, cfg), neurons, cfg).to_pandas()
    assert set(pairs.columns) >= {
        "layer",
        "neuron",
        "head_layer",
        "head",
        "active_rate",
        "n_train",
        "kept",
        "ks_stat",
        "ks_pvalue",
        "mechanism",
    }
    assert ((pairs.active_rate >= 0.25) & (pairs.active_rate <= 0.75)).equals(pairs.kept)
    assert set(pairs.mechanism) <= {"single", "few", "distributed"}
    assert pairs[pairs.neuron == 9].baseline.all()


def test_ablation_typical_rule_against_the_top_prompts_median(tiny_dirs: dict[str, Path]) -> None:
    """Active when zero-ablating the head lowers the activation by at least a fraction of
    the neuron's median activation over its top prompts (contrast prompts do not count
    toward that median, but are labelled by it)."""
    lm = load_model(tiny_dirs["gpt2"], device="cpu")
    ex = examples(lm)
    kinds = ["top", "top", "contrast"] * (ex.num_rows // 3) + ["top"] * (ex.num_rows % 3)
    ex = ex.append_column("kind", pa.array(kinds, pa.string()))
    cfg = AttributeConfig(
        methods=("direct", "zero_ablation"), label_rule="ablation_typical", label_fraction=0.1
    )
    att = attribute_examples(lm, ex, cfg)
    z = att.to_pandas()
    z = z[z.method == "zero_ablation"].set_index(["example_id", "head_layer", "head"]).value
    fraction = 0.5 * float(z.max())  # the top prompts' median activation is 1.0 here
    cfg = dataclasses.replace(cfg, label_fraction=fraction)
    labels = label_examples(att, ex, cfg).to_pandas()
    e = ex.to_pandas().set_index("example_id")
    for r in labels.itertuples():
        mine = e[(e.layer == r.layer) & (e.neuron == r.neuron) & (e.kind == "top")]
        ref = float(mine.trimmed_activation.median()) if len(mine) else 0.0
        effect = float(z[(r.example_id, r.head_layer, r.head)])
        assert r.active == (ref > 0 and effect >= fraction * ref)
    assert labels.active.any() and not labels.active.all()


def test_ablation_share_rule_against_the_heads_total_drive(tiny_dirs: dict[str, Path]) -> None:
    """Active when the typical rule says so, or when zero-ablating the head removes at
    least a fraction of all heads' drive on that prompt (their positive zero-ablation
    effects summed) and at least a floor share of the neuron's median top activation: a
    small driver counts when the others drive less."""
    lm = load_model(tiny_dirs["gpt2"], device="cpu")
    ex = examples(lm)
    cfg = AttributeConfig(methods=("direct", "zero_ablation"), label_rule="ablation_share")
    assert AttributeConfig().label_rule == "ablation_share"  # the default
    att = attribute_examples(lm, ex, cfg)
    z = att.to_pandas()
    z = z[z.method == "zero_ablation"]
    drive = z.assign(pos=z.value.clip(lower=0)).groupby("example_id").pos.sum()
    z = z.set_index(["example_id", "head_layer", "head"]).value
    e = ex.to_pandas().set_index("example_id")
    mixed = []
    for frac, floor in ((0.1, 0.0), (0.4, 0.0), (0.1, 0.05)):
        cfg = dataclasses.replace(cfg, label_fraction=frac, label_floor=floor)
        labels = label_examples(att, ex, cfg).to_pandas()
        for r in labels.itertuples():
            mine = e[(e.layer == r.layer) & (e.neuron == r.neuron)]
            ref = max(float(mine.trimmed_activation.median()), 0.0)
            effect = float(z[(r.example_id, r.head_layer, r.head)])
            share = effect >= floor * ref and effect >= frac * drive[r.example_id]
            want = ref > 0 and (effect >= frac * ref or share)
            assert r.active == want
        mixed.append((int(labels.active.sum()), len(labels)))
    assert all(0 < n < total for n, total in mixed[:2]), mixed


def test_candidate_heads_are_the_top_k_by_patching_and_half_as_many_by_direct() -> None:
    from lookuplens.attribute.methods import candidate_heads

    direct = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    patching = torch.tensor([[0.0, 0.1, 0.2, 0.3, 9.0, 0.4]])
    # patching ranks heads 4, 5, 3, ...; direct ranks 0, 1, 2, ...
    half = AttributeConfig(candidates=3).candidates_direct  # half of 3, rounded up: 2
    assert candidate_heads(direct, patching, 3, half)[0].nonzero().flatten().tolist() == [
        0,
        1,
        3,
        4,
        5,
    ]
    # k_direct given: the top 3 by patching and the top 1 by direct
    assert candidate_heads(direct, patching, 3, k_direct=1)[0].nonzero().flatten().tolist() == [
        0,
        3,
        4,
        5,
    ]
    # the floor adds every head whose estimate reaches it
    floor = torch.tensor([0.2])
    got = candidate_heads(direct, patching, 1, 0, floor)[0].nonzero().flatten()
    assert got.tolist() == [2, 3, 4, 5]


def test_layers_with_few_upstream_heads_are_swept_whole() -> None:
    cfg = AttributeConfig(candidates=6)  # 6 by patching, 3 by direct, sweep_heads 32
    assert not cfg.prunes(16) and not cfg.prunes(32) and cfg.prunes(33)
    assert AttributeConfig(candidates=6, sweep_heads=0).prunes(10)
    assert not AttributeConfig(candidates=6, sweep_heads=0).prunes(9)  # 6 + 3: all of them
    assert not AttributeConfig(candidates=0).prunes(1000)
    assert not AttributeConfig(
        candidates=6, methods=("direct",), label_rule="mean_std", label_method="direct"
    ).prunes(1000)


def test_candidate_share_also_ablates_the_heads_whose_estimate_reaches_the_floor(
    lm: LoadedModel,
) -> None:
    layer = lm.n_layers - 1
    ex = examples(lm, layer)
    act = 2e-3  # small, so that some heads' estimates reach the floor and some do not
    ex = ex.set_column(
        ex.schema.get_field_index("trimmed_activation"), "trimmed_activation", pa.array([act] * 3)
    )
    methods = ("direct", "zero_ablation", "attribution_patching")
    cfg = AttributeConfig(
        methods=methods,
        candidates=1,
        label_rule="ablation_typical",
        candidate_share=0.5,
        sweep_heads=0,
    )
    att = attribute_examples(lm, ex, cfg).to_pandas()
    floor = 0.5 * 0.2 * act  # share x label_fraction x the neuron's median top activation
    sizes = []
    for eid in range(3):
        mine = att[att.example_id == eid].set_index(["head_layer", "head"])
        ap, direct = (
            mine[mine.method == "attribution_patching"].value,
            mine[mine.method == "direct"].value,
        )
        # the top 1 by patching, the top 1 by direct, every head over the floor
        want = set(ap[ap >= floor].index) | {direct.idxmax(), ap.idxmax()}
        got = set(mine[mine.method == "zero_ablation"].index)
        assert got == want
        sizes.append(len(got))
    n_up = len(upstream_layers(lm, layer)) * lm.n_heads
    assert max(sizes) > 1 and min(sizes) < n_up, sizes  # the floor added some, not all


def test_active_floor_follows_the_label_rule() -> None:
    from lookuplens.attribute.labels import active_floor

    ref = np.array([1.0, 0.0, 2.0])
    est = np.array([[0.5, 0.5, -1.0], [0.1, 0.0, 0.0], [0.05, 0.05, 0.0]])
    drive = np.clip(est, 0, None).sum(axis=1)  # the positive sum of every head's effect
    typ = active_floor(AttributeConfig(label_rule="ablation_typical"), ref, drive)
    assert typ.tolist() == [0.2, float("inf"), 0.4]
    # share: min(fraction x ref, max(floor x ref, fraction x drive)); drive = positive sum
    share = active_floor(AttributeConfig(label_rule="ablation_share"), ref, drive)
    np.testing.assert_allclose(share, [0.2, np.inf, 0.1])
    mean_std = active_floor(AttributeConfig(label_rule="mean_std", methods=("direct",)), ref, drive)
    assert np.isinf(mean_std).all()


def test_pruned_ablations_are_the_full_sweeps_values_on_the_candidates(lm: LoadedModel) -> None:
    layer = lm.n_layers - 1
    ex = examples(lm, layer)
    n_up = len(upstream_layers(lm, layer)) * lm.n_heads
    methods = ("direct", "zero_ablation", "resample_ablation", "attribution_patching")
    full = attribute_examples(lm, ex, AttributeConfig(methods=methods, candidates=0))
    k = max(1, n_up // 4)
    # exactly the top k by patching and k/2 by direct
    cfg = AttributeConfig(methods=methods, candidates=k, candidate_share=0, sweep_heads=0)
    assert cfg.prunes(n_up)
    pruned = attribute_examples(lm, ex, cfg)
    f, p = full.to_pandas(), pruned.to_pandas()
    want = set()
    for eid in range(3):
        mine = f[f.example_id == eid].set_index(["head_layer", "head"])
        ap = mine[mine.method == "attribution_patching"].value
        di = mine[mine.method == "direct"].value
        top = set(ap.sort_values(ascending=False, kind="stable").index[:k])
        top |= set(di.sort_values(ascending=False, kind="stable").index[: cfg.candidates_direct])
        want |= {(eid, *h) for h in top}
    for m in ("direct", "attribution_patching"):  # cheap methods: every head, same values
        a, b = f[f.method == m], p[p.method == m]
        assert len(a) == len(b) == 3 * n_up
        np.testing.assert_allclose(a.value.to_numpy(), b.value.to_numpy(), atol=1e-9)
    for m in ("zero_ablation", "resample_ablation"):
        a = f[f.method == m].set_index(["example_id", "head_layer", "head"]).value
        b = p[p.method == m].set_index(["example_id", "head_layer", "head"]).value
        assert set(b.index) == want  # the candidates, and only they
        assert 3 * k <= len(b) <= 3 * (k + cfg.candidates_direct) < 3 * n_up
        np.testing.assert_allclose(b.to_numpy(), a.reindex(b.index).to_numpy(), atol=1e-7)
    labels = label_examples(pruned, ex, cfg)
    lab = labels.to_pandas()
    assert lab.candidate.sum() == len(want) and len(lab) == 3 * n_up
    assert not lab[~lab.candidate].active.any()
