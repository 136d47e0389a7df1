"""The report's building blocks: token display, markup, the SVG histogram, the config."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from lookuplens.report import ReportConfig
from lookuplens.report.assets import SCRIPT, script_hash
from lookuplens.report.markup import Html, fmt, generic, table
from lookuplens.report.svg import Series, histogram_svg
from lookuplens.report.tokens import shaded_tokens, token_label, visible


def test_visible_marks_whitespace_and_control_characters() -> None:
    assert visible(" the") == "\u00b7the"
    assert visible("a\nb\tc\r") == "a\u21b5b\u21e5c\u240d"
    assert visible("\x00\x1b") == "\\x00\\x1b"
    assert visible("\u2028") == "\\u2028"
    assert visible("") == "\u2205"
    assert token_label(' <b>"x"&') == "\u00b7&lt;b&gt;&quot;x&quot;&amp;"


def test_shaded_tokens_scale_sign_escape_and_last_token() -> None:
    vocab = {1: " a", 2: "<i>", 3: "\n"}
    out = shaded_tokens([1, 2, 3], vocab.__getitem__, [2.0, -1.0, 8.0], 4.0, "act", "act")
    spans = out.split("</span>")[:-1]
    assert len(spans) == 3
    assert 'class="t act" style="--a:0.50"' in spans[0]
    assert 'class="t act neg" style="--a:0.25"' in spans[1]
    assert 'class="t act fire" style="--a:1.00"' in spans[2]  # clipped at 1, outlined
    assert "&lt;i&gt;" in spans[1] and "<i>" not in out
    assert "\u21b5" in spans[2]
    assert "act -1" in spans[1]  # the exact value in the tooltip
    plain = shaded_tokens([1, 2], vocab.__getitem__, None, 1.0, "attn", "attention")
    assert "--a" not in plain and 'class="t"' in plain and 'class="t fire"' in plain


def test_fmt_numbers() -> None:
    assert fmt(None) == fmt(math.nan) == "\u2013"
    assert fmt(True) == "yes"
    assert fmt(12345) == "12,345"
    assert fmt(0.123456) == "0.123"
    assert fmt(1.5e-5) == "1.50e-05"
    assert fmt(2500.4) == "2,500"
    assert fmt(0.0) == "0"


def test_table_escapes_and_marks_numbers() -> None:
    out = table(["a<", "b"], [["<x>", 1.5], [Html("<em>ok</em>"), None]])
    assert "a&lt;" in out and "&lt;x&gt;" in out and "<em>ok</em>" in out
    assert '<td class="num" data-v="1.5">1.500</td>' in out


def test_generic_renders_nested_data() -> None:
    out = generic(
        {
            "precision": 0.5,
            "pairs": [{"token": " an", "head": "L1H2"}, {"token": "<x>", "head": "L0H1"}],
            "by_group": {"selected": {"n": 3, "mean": 0.8}, "baseline": {"n": 2, "mean": 0.5}},
        }
    )
    assert "0.500" in out and "&lt;x&gt;" in out and "L1H2" in out
    assert '<th class="num">mean</th>' in out and "0.800" in out


def test_histogram_svg_is_valid_and_counts() -> None:
    series = [
        Series("selected", (0.1, 0.55, 0.56, 0.9, 1.0), "#2563eb"),
        Series("base <b>", (0.5,), "#9ca3af"),
    ]
    svg = histogram_svg(series, "E & more", "balanced accuracy", standalone=True)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    titles = [r.find(f"{ns}title").text for r in bars]  # type: ignore[union-attr]
    assert sum(int(t.split(": ")[1].split(" ")[0]) for t in titles if t.startswith("selected")) == 5
    assert any("2 in [0.55, 0.60)" in t for t in titles)
    assert "base &lt;b&gt;" in svg
    inline = histogram_svg([Series("empty", (), "#000000")], "t", "x")
    assert "xmlns" not in inline
    ET.fromstring(inline)


def test_script_hash_matches_script() -> None:
    assert script_hash().startswith("'sha256-") and script_hash(SCRIPT) == script_hash()


def test_config_validation() -> None:
    assert ReportConfig().max_neurons == 50 and ReportConfig().max_prompts == 8
    with pytest.raises(ValueError, match="max_neurons"):
        ReportConfig(max_neurons=-1)
    with pytest.raises(ValueError, match="batch_prompts"):
        ReportConfig(batch_prompts=0)


def test_effects_table_explains_the_source_swap_only_when_it_is_shown() -> None:
    from lookuplens.report.details import SWAP_NOTE, effects_table

    base = {
        "prompts": 3,
        "mean_delta_logprob": -0.5,
        "mean_kl": 0.1,
        "mean_delta_prob": -0.1,
        "mean_delta_activation": -1.0,
    }
    caption = SWAP_NOTE.split(" (")[0]
    plain = effects_table([{"intervention": "zero", **base}])
    assert "zero" in plain and caption not in plain
    swapped = effects_table(
        [{"intervention": "zero", **base}, {"intervention": "head_source_swap L0H2", **base}]
    )
    assert "head_source_swap L0H2" in swapped and caption in swapped


def test_a_neuron_never_fires_when_its_largest_activation_is_at_most_zero() -> None:
    from lookuplens.report.details import never_fires

    assert never_fires({"act_max": 0.0}) and never_fires({"act_max": -0.0})
    assert never_fires({"act_max": -0.02})
    assert not never_fires({"act_max": 1e-4})  # a layer that fires small still fires
    assert not never_fires({"act_max": float("nan")}) and not never_fires({})
    assert not never_fires(None)
