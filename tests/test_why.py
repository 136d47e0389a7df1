"""`lookuplens why`: the logit decomposition closes, bad input is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from lookuplens.errors import UserError
from lookuplens.model import LoadedModel, hook_name, load_model
from lookuplens.why import WhyConfig, explain_prediction, text_token_ids
from lookuplens.why_html import render_why


@pytest.fixture
def lm(tiny_dirs: dict[str, Path], family: str) -> LoadedModel:
    return load_model(tiny_dirs[family], device="cpu")


@pytest.mark.parametrize("contrast", [None, " the"])
def test_contributions_sum_to_the_logit(lm: LoadedModel, contrast: str | None) -> None:
    r = explain_prediction(
        lm, "She bought an apple at the", WhyConfig(target=" an", contrast=contrast, position=-2)
    )
    assert sum(r.terms.values()) + r.neuron_total == pytest.approx(r.logit, abs=1e-4)
    assert len(r.neurons) == 5
    for n in r.neurons:  # a parallel-residual model's layer 0 neurons have no upstream head
        assert bool(n.heads) == (n.layer > 0 or not lm.parallel_residual)
    assert [n.contribution for n in r.neurons] == sorted(
        (n.contribution for n in r.neurons), reverse=True
    )
    full = explain_prediction(lm, "She bought an apple at the", WhyConfig(target=" an"))
    assert r.position == full.position - 1 == len(r.tokens) - 1  # -2: one before the end
    for a in r.ablations:
        assert 0 <= a.prob_after <= 1
    page = render_why(r, text_token_ids(lm, "She bought an apple at the"))
    assert "<script" not in page and r.neurons[0].name in page


def _logits_with_zeroed(lm: LoadedModel, prompt: str, neurons: list[tuple[int, int]]) -> Tensor:
    """The logits at the last position with the given (layer, neuron) zeroed, by hand."""

    def zero(cols: list[int]):  # type: ignore[no-untyped-def]
        def fn(x, _n):  # type: ignore[no-untyped-def]
            x = x.clone()
            x[..., cols] = 0
            return x

        return fn

    by: dict[int, list[int]] = {}
    for layer, n in neurons:
        by.setdefault(layer, []).append(n)
    hooks = [(hook_name(layer, "mlp.hook_post"), zero(c)) for layer, c in by.items()]
    logits, _ = lm.run_with_cache(lm.to_tokens(prompt), [], extra_hooks=hooks)
    assert logits is not None
    return logits[0, -1].double()


def _p_with_zeroed(
    lm: LoadedModel, prompt: str, target_id: int, neurons: list[tuple[int, int]]
) -> float:
    """p(target) at the last position with the given (layer, neuron) zeroed, by hand."""
    return float(torch.softmax(_logits_with_zeroed(lm, prompt, neurons), -1)[target_id])


@pytest.mark.parametrize("until", [0.999, 1e-9])
def test_causal_check_names_the_fewest_ranked_neurons_that_reach_the_goal(
    lm: LoadedModel, until: float
) -> None:
    prompt = "An owl sat on the"
    cfg = WhyConfig(ablate_until=until, max_ablated=16, control_draws=2)
    r = explain_prediction(lm, prompt, cfg)
    goal = until * r.prob
    ks = [c.k for c in r.curve]
    assert ks == sorted(set(ks)) and ks[0] == 1 and max(ks) <= 16
    by_k = {c.k: c.prob for c in r.curve}
    # each curve point is p with the first k neurons of the ranking zeroed: recompute two
    wide = explain_prediction(lm, prompt, WhyConfig(top_neurons=16, control_draws=0))
    ranked = [(n.layer, n.neuron) for n in wide.neurons]
    for k in (ks[0], ks[-1]):
        assert by_k[k] == pytest.approx(_p_with_zeroed(lm, prompt, r.target_id, ranked[:k]))
    checks = {a.what.split(" (")[0]: a for a in r.ablations}
    if r.carrying:  # the fewest: the prefix one shorter was measured and misses the goal
        k = len(r.carrying)
        assert [(n.layer, n.neuron) for n in r.carrying] == ranked[:k]
        assert by_k[k] <= goal and (k == 1 or by_k[k - 1] > goal)
        assert checks[f"the top {k} ranked neurons zeroed"].prob_after == by_k[k]
        control = [a for a in r.ablations if a.what.startswith(f"control: {k} random")]
        assert len(control) == 1 and 0 <= control[0].prob_after <= 1
    else:  # no prefix up to max_ablated gets there, and the result says so
        assert until == 1e-9 and all(pr > goal for pr in by_k.values())
        assert "not even these" in checks["the top 16 ranked neurons zeroed"].what


def test_with_a_contrast_token_the_causal_check_halves_the_logit_difference(
    lm: LoadedModel,
) -> None:
    prompt = "An owl sat on the"
    logits, _ = lm.run_with_cache(lm.to_tokens(prompt), [])
    assert logits is not None
    # the two most likely tokens that round-trip as single tokens (target, then contrast)
    ids = torch.argsort(logits[0, -1], descending=True)[:50].tolist()
    ok = [
        i
        for i in ids
        if lm.tokenizer(lm.token_str(i), add_special_tokens=False)["input_ids"] == [i]
    ]
    target, contrast = lm.token_str(ok[0]), lm.token_str(ok[1])
    cfg = WhyConfig(target=target, contrast=contrast, ablate_until=0.9, max_ablated=16)
    r = explain_prediction(lm, prompt, cfg)
    wide = explain_prediction(
        lm, prompt, WhyConfig(target=target, contrast=contrast, top_neurons=16, control_draws=0)
    )
    ranked = [(n.layer, n.neuron) for n in wide.neurons]

    def diff_with_zeroed(neurons: list[tuple[int, int]]) -> float:
        out = _logits_with_zeroed(lm, prompt, neurons)
        return float(out[r.target_id] - out[r.contrast_id])

    d0 = r.ablations[0].diff_before
    assert d0 == pytest.approx(r.logit, abs=1e-4) and d0 > 0
    by_k = {c.k: c.logit_diff for c in r.curve}
    for k in (min(by_k), max(by_k)):
        assert by_k[k] == pytest.approx(diff_with_zeroed(ranked[:k]), abs=1e-4)
    if r.carrying:
        k = len(r.carrying)
        assert by_k[k] <= 0.9 * d0 and (k == 1 or by_k[k - 1] > 0.9 * d0)
        assert "logit difference" in r.ablations[1].what
    else:
        assert all(v > 0.9 * d0 for v in by_k.values())


def test_default_target_is_the_top_prediction(lm: LoadedModel) -> None:
    r = explain_prediction(lm, "An owl sat on the", WhyConfig())
    assert r.target == r.top_prediction


@pytest.mark.parametrize(
    ("prompt", "cfg", "needle"),
    [
        ("", WhyConfig(), "empty"),
        ("An owl", WhyConfig(position=40), "out of range"),
        ("An owl", WhyConfig(target=" xylophonequux"), "not a single token"),
        ("owl " * 100, WhyConfig(), "context window"),
    ],
)
def test_bad_input(tiny_dirs: dict[str, Path], prompt: str, cfg: WhyConfig, needle: str) -> None:
    lm = load_model(tiny_dirs["gpt2"], device="cpu")
    with pytest.raises(UserError, match=needle):
        explain_prediction(lm, prompt, cfg)
