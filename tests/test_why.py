"""`lookuplens why`: the logit decomposition closes, bad input is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookuplens.errors import UserError
from lookuplens.model import LoadedModel, load_model
from lookuplens.why import WhyConfig, explain_prediction
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
    page = render_why(r)
    assert "<script" not in page and r.neurons[0].name in page


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
