"""Causal verification against hand computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import Tensor

from lookuplens.model import LoadedModel, hook_name, load_model
from lookuplens.verify import (
    VerifyConfig,
    ablated_pairs,
    ks_tests,
    method_agreement,
    verify_run,
)

TEXTS = ["An owl sat on the", "She bought an apple at the market", "The quick brown fox"]


@pytest.fixture
def lm(tiny_dirs: dict[str, Path]) -> LoadedModel:
    return load_model(tiny_dirs["gpt2"], device="cpu")


def tables(
    lm: LoadedModel,
    prompts: list[list[int]] | None = None,
    neuron: int = 4,
    active: list[bool] | None = None,
    kinds: list[str] | None = None,
) -> tuple[pa.Table, ...]:
    """The tables verify reads, for `prompts` (default: TEXTS) of one layer-0 neuron whose
    token is id 17, and one kept pair with head L0H1 (`active` per prompt)."""
    if prompts is None:
        prompts = [lm.to_tokens(t)[0].tolist() for t in TEXTS]
    k = len(prompts)
    active = [True, False, True] if active is None else active
    columns: dict[str, list[object]] = {
        "example_id": list(range(k)),
        "layer": [0] * k,
        "neuron": [neuron] * k,
        "tokens": list(prompts),
    }
    if kinds is not None:
        columns["kind"] = list(kinds)
    examples = pa.table(columns)
    neurons = pa.table(
        {"layer": [0], "neuron": [neuron], "token_id": [17], "target_token_id": [17]}
    )
    stats = pa.table({"layer": [0], "neuron": [neuron], "act_mean": [0.25]})
    labels = pa.table(
        {
            "example_id": list(range(k)),
            "layer": [0] * k,
            "neuron": [neuron] * k,
            "head_layer": [0] * k,
            "head": [1] * k,
            "active": active,
            "split": ["train"] * k,
        }
    )
    pairs = pa.table(
        {
            "layer": [0],
            "neuron": [neuron],
            "head_layer": [0],
            "head": [1],
            "kept": [True],
            "ks_stat": [float("nan")],
            "ks_pvalue": [float("nan")],
        }
    )
    return examples, neurons, stats, labels, pairs


def logprob(lm: LoadedModel, tokens: list[int], token: int, hooks=()) -> float:  # type: ignore[no-untyped-def]
    logits, _ = lm.run_with_cache(torch.tensor([tokens]), [], extra_hooks=list(hooks))
    assert logits is not None
    return float(torch.log_softmax(logits[0, -1].double(), -1)[token])


def test_interventions_match_hand_computation(lm: LoadedModel) -> None:
    examples, neurons, stats, labels, pairs = tables(lm)
    effects, new_pairs = verify_run(
        lm, examples, neurons, stats, labels, pairs, VerifyConfig(scales=(3.0,))
    )
    df = effects.to_pandas()
    assert set(df.intervention) == {
        "neuron_zero",
        "neuron_mean",
        "neuron_scale_3",
        "head_zero_ablation",
    }
    prompts = examples.column("tokens").to_pylist()

    def set_to(v: float | None, k: float = 1.0):  # type: ignore[no-untyped-def]
        def fn(x: Tensor, _n: str) -> Tensor:
            x = x.clone()
            x[..., 4] = x[..., 4] * k if v is None else v
            return x

        return fn

    def zero_head(z: Tensor, _n: str) -> Tensor:
        z = z.clone()
        z[:, :, 1] = 0
        return z

    post = hook_name(0, "mlp.hook_post")
    for i, toks in enumerate(prompts):
        clean = logprob(lm, toks, 17)
        cases = {
            "neuron_zero": [(post, set_to(0.0))],
            "neuron_mean": [(post, set_to(0.25))],
            "neuron_scale_3": [(post, set_to(None, 3.0))],
            "head_zero_ablation": [(hook_name(0, "attn.hook_z"), zero_head)],
        }
        for name, hooks in cases.items():
            row = df[(df.example_id == i) & (df.intervention == name)]
            assert len(row) == 1
            assert row.delta_logprob.iloc[0] == pytest.approx(
                logprob(lm, toks, 17, hooks) - clean, abs=1e-6
            )
            assert row.kl.iloc[0] >= 0
    head_rows = df[df.intervention == "head_zero_ablation"]
    assert (head_rows.head_layer == 0).all() and (head_rows["head"] == 1).all()
    ks = new_pairs.to_pandas()
    assert ks.ks_n_active.iloc[0] == 2 and ks.ks_n_inactive.iloc[0] == 1
    assert 0 <= ks.ks_stat.iloc[0] <= 1


def test_ks_separates_when_active_examples_drop_more() -> None:
    rng = np.random.default_rng(0)
    n = 40
    active = np.arange(n) % 2 == 0
    drop = np.where(active, 0.3, 0.0) + rng.normal(0, 0.02, n)
    effects = pa.table(
        {
            "example_id": np.arange(n),
            "layer": [0] * n,
            "neuron": [1] * n,
            "intervention": ["head_zero_ablation"] * n,
            "delta_prob": -drop,
            "head_layer": [0] * n,
            "head": [2] * n,
        }
    )
    labels = pa.table(
        {"example_id": np.arange(n), "head_layer": [0] * n, "head": [2] * n, "active": active}
    )
    pairs = pa.table(
        {
            "layer": [0, 0],
            "neuron": [1, 1],
            "head_layer": [0, 0],
            "head": [2, 3],
            "kept": [True, False],
            "ks_stat": [np.nan, np.nan],
            "ks_pvalue": [np.nan, np.nan],
        }
    )
    out = ks_tests(effects, labels, pairs).to_pandas()
    assert out.ks_stat.iloc[0] == pytest.approx(1.0)
    assert out.ks_pvalue.iloc[0] < 1e-6
    assert np.isnan(out.ks_stat.iloc[1])  # never ablated: nothing to test


def test_ablated_pairs_are_kept_pairs_and_each_neurons_top_heads() -> None:
    pairs = pa.table(
        {
            "layer": [1, 1, 1, 2, 2],
            "neuron": [5, 5, 5, 7, 7],
            "head_layer": [0, 0, 1, 0, 1],
            "head": [0, 1, 0, 0, 0],
            "kept": [False, True, False, False, False],
            "mean_direct": [0.9, 0.1, 0.5, -0.2, 0.3],
        }
    )
    assert ablated_pairs(pairs, 0) == [(1, 5, 0, 1)]
    assert ablated_pairs(pairs, 1) == [(1, 5, 0, 0), (1, 5, 0, 1), (2, 7, 1, 0)]
    assert ablated_pairs(pairs, 2) == [(1, 5, 0, 0), (1, 5, 0, 1), (1, 5, 1, 0),
                                       (2, 7, 0, 0), (2, 7, 1, 0)]  # fmt: skip


def test_unkept_top_head_is_ablated_and_ks_tested(lm: LoadedModel) -> None:
    examples, neurons, stats, labels, pairs = tables(lm)
    pairs = pairs.set_column(pairs.schema.get_field_index("kept"), "kept", pa.array([False]))
    pairs = pairs.append_column("mean_direct", pa.array([0.5]))
    cfg = VerifyConfig(neuron_interventions=False)
    effects, new_pairs = verify_run(lm, examples, neurons, stats, labels, pairs, cfg)
    assert effects.num_rows == 3
    assert 0 <= new_pairs.column("ks_stat")[0].as_py() <= 1
    effects0, new0 = verify_run(
        lm,
        examples,
        neurons,
        stats,
        labels,
        pairs,
        VerifyConfig(neuron_interventions=False, top_heads=0),
    )
    assert effects0.num_rows == 0 and np.isnan(new0.column("ks_stat")[0].as_py())


def test_method_agreement_is_a_correlation_matrix() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=50)
    rows = []
    for m, vals in (("direct", v), ("zero_ablation", 2 * v + 0.01), ("raw", -v)):
        rows += [(i, 0, 0, m, float(x)) for i, x in enumerate(vals)]
    t = pa.table(
        dict(
            zip(
                ["example_id", "head_layer", "head", "method", "value"],
                map(list, zip(*rows, strict=True)),
                strict=True,
            )
        )
    )
    agree = method_agreement(t)
    assert agree["direct"]["zero_ablation"] == pytest.approx(1.0)
    assert agree["direct"]["raw"] == pytest.approx(-1.0)
    assert agree["raw"]["raw"] == 1.0
