"""The HTML report, built from a real (tiny) run directory."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lookuplens.attribute import AttributeConfig
from lookuplens.corpus import CorpusSpec
from lookuplens.errors import UserError
from lookuplens.examples import ExamplesConfig
from lookuplens.model import load_model
from lookuplens.model.tiny import build_tiny_model
from lookuplens.neurons import NeuronsConfig
from lookuplens.pipeline import RunConfig, run_pipeline
from lookuplens.report import ReportConfig, build_report, render_report, write_report
from lookuplens.report.compute import last_position_attention, neuron_activations
from lookuplens.scan import ScanConfig
from lookuplens.store import RunDir

MALICIOUS_LINE = 'A line with <script>alert(1)</script> & "quotes" in it.'
MALICIOUS_TOKEN = "<img src=x onerror=alert(3)>"
WORDS = (
    "the quick brown fox jumps over lazy dog she bought an apple and a pear at market owl "
    "sat on old oak tree near river tom anna walked to harbour buy fish"
).split()


def _corpus(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = [
        " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))).capitalize() + "."
        for _ in range(30)
    ]
    lines[3] = MALICIOUS_LINE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(model: Path, corpus: Path) -> RunConfig:
    return RunConfig(
        model=str(model),
        corpus=CorpusSpec(str(corpus)),
        device="cpu",
        neurons=NeuronsConfig(top_n=2, token_filter="none"),
        scan=ScanConfig(k=6),
        # the 0.8x rule alone: this fixture's labels and kept pairs were chosen for it
        examples=ExamplesConfig(keep_read_word=False),
        attribute=AttributeConfig(
            label_rule="top_k", label_top_k=2, min_active_rate=0.1, max_active_rate=0.9
        ),
    )


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.model = build_tiny_model("gpt2", root / "model")
        self.corpus = _corpus(root / "corpus.txt")
        self.cfg = _config(self.model, self.corpus)
        self.run = run_pipeline(self.cfg, root / "run")
        self.lm = load_model(self.model, device="cpu")
        self._plant_malicious()
        self._write_explanations()

    def _plant_malicious(self) -> None:
        """Make the top prompt of the first selected neuron the malicious corpus line, and
        give another neuron a malicious token string."""
        neurons = self.run.read_df("neurons")
        sel = neurons[neurons.selected].sort_values("congruence", ascending=False)
        first = sel.iloc[0]
        ex = self.run.read_df("examples")
        mine = ex[(ex.layer == first.layer) & (ex.neuron == first.neuron)]
        i = mine.sort_values("rank").index[0]
        ids = self.lm.to_tokens(MALICIOUS_LINE)[0].tolist()
        ex.at[i, "tokens"] = ids
        ex.at[i, "text"] = MALICIOUS_LINE
        self.run.write_table("examples", ex)
        self.malicious_example = int(ex.at[i, "example_id"])
        j = sel.index[1]
        neurons.at[j, "token"] = MALICIOUS_TOKEN
        self.run.write_table("neurons", neurons)

    def _write_explanations(self) -> None:
        pairs = self.run.read_df("pairs")
        kept = pairs[pairs.kept]
        assert len(kept) >= 1, "the test run should keep at least one pair"
        base = pairs[pairs.baseline & ~pairs.kept].head(3)
        rng = np.random.default_rng(1)
        expl, scores = [], []
        for i, p in enumerate(pd.concat([kept, base]).itertuples()):
            expl.append(
                dict(
                    layer=p.layer,
                    neuron=p.neuron,
                    head_layer=p.head_layer,
                    head=p.head,
                    explainer="offline",
                    explanation=f"looks up <b>{i}</b> & <script>alert(2)</script>",
                    llm_model=None,
                    prompt_tokens=0,
                    completion_tokens=0,
                )
            )
            tp, fp, tn, fn = (int(x) for x in rng.integers(1, 6, size=4))
            scores.append(
                dict(
                    layer=p.layer,
                    neuron=p.neuron,
                    head_layer=p.head_layer,
                    head=p.head,
                    explainer="offline",
                    scorer="offline",
                    n_test=tp + fp + tn + fn,
                    tp=tp,
                    fp=fp,
                    tn=tn,
                    fn=fn,
                    balanced_accuracy=0.5 * (tp / (tp + fn) + tn / (tn + fp)),
                    auroc=float(rng.uniform(0.4, 1.0)),
                    baseline=bool(p.baseline),
                )
            )
        # a neuron explained alone (head null), and a pair the scorer could not score
        n = self.run.read_df("neurons").query("selected").iloc[0]
        self.neuron_alone = (int(n.layer), int(n.neuron))
        expl.append(
            dict(
                layer=n.layer,
                neuron=n.neuron,
                head_layer=None,
                head=None,
                explainer="offline",
                explanation="NEURON-ALONE fires after 'an'",
                llm_model=None,
                prompt_tokens=0,
                completion_tokens=0,
            )
        )
        scores.append(
            dict(
                layer=n.layer,
                neuron=n.neuron,
                head_layer=None,
                head=None,
                explainer="offline",
                scorer="offline",
                n_test=4,
                tp=2,
                fp=0,
                tn=2,
                fn=0,
                balanced_accuracy=1.0,
                auroc=1.0,
                baseline=False,
            )
        )
        scores[0].update(
            tp=None,
            fp=None,
            tn=None,
            fn=None,
            balanced_accuracy=None,
            auroc=None,
            status="one_class",
            note="UNSCORED-NOTE all held-out prompts are active",
        )
        for row in scores:
            row.setdefault("status", "ok")
            row.setdefault("note", None)
        ints = {"head_layer": "Int64", "head": "Int64"}
        counts = {c: "Int64" for c in ("tp", "fp", "tn", "fn")}
        self.run.write_table(
            "explanations", pd.DataFrame(expl).astype({**ints, "llm_model": "string"})
        )
        self.run.write_table("scores", pd.DataFrame(scores).astype({**ints, **counts}))
        self.n_scored = len(scores)
        self.run.update_meta(ground_truth={"precision": 0.75, "recall": 0.5, "n_planted": 4})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report_path(built: Built) -> Path:
    return write_report(built.run, built.lm, ReportConfig())


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    p.close()
    return p


URL_ATTRS = {"src", "href", "srcset", "action", "formaction", "poster", "data", "xlink:href"}


def external_references(html: str) -> list[str]:
    """Every attribute that could load or link something other than an in-page anchor,
    every CSS url()/@import, and every tag that embeds content."""
    p = _parse(html)
    bad = []
    for tag, attrs in p.tags:
        for name, value in attrs.items():
            if name in URL_ATTRS and not (value or "").startswith("#"):
                bad.append(f"<{tag} {name}={value!r}>")
        if tag in {"link", "img", "iframe", "object", "embed", "video", "audio", "source", "base"}:
            bad.append(f"<{tag}>")
    for css in p.styles:
        if "@import" in css or re.search(r"url\(\s*['\"]?(?!#|data:)", css):
            bad.append("css url/@import")
    return bad


def test_report_is_written_with_figures(built: Built, report_path: Path) -> None:
    assert report_path == built.run.path / "report.html"
    html = report_path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")
    svg_path = built.run.path / "figures" / "e_histogram.svg"
    assert svg_path.is_file()
    root = ET.fromstring(svg_path.read_text(encoding="utf-8"))  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = svg_path.read_text(encoding="utf-8")
    assert "selected" in text and "random baseline" in text
    assert "<svg" in html and "E of pairs" in html  # the histogram is inline too
    assert not list(built.run.path.glob(".tmp-*"))
    assert not list((built.run.path / "figures").glob(".tmp-*"))


def test_report_has_no_external_references(report_path: Path) -> None:
    html = report_path.read_text(encoding="utf-8")
    assert external_references(html) == []
    assert "http://" not in html and "https://" not in html
    p = _parse(html)
    scripts = [a for t, a in p.tags if t == "script"]
    assert scripts == [{}]  # one inline script, ours, without src
    csp = [a for t, a in p.tags if t == "meta" and a.get("http-equiv")]
    assert "default-src 'none'" in (csp[0].get("content") or "")


def test_report_has_anchors_navigation_and_sections(built: Built, report_path: Path) -> None:
    html = report_path.read_text(encoding="utf-8")
    neurons = built.run.read_df("neurons")
    tracked = neurons[neurons.selected | neurons.baseline]
    assert len(tracked) <= ReportConfig().max_neurons
    for r in tracked.itertuples():
        anchor = f"neuron-L{r.layer}N{r.neuron}"
        assert f'id="{anchor}"' in html
        assert f'href="#{anchor}"' in html
    pairs = built.run.read_df("pairs")
    for r in pairs[pairs.kept].itertuples():
        anchor = f"pair-L{r.layer}N{r.neuron}-L{r.head_layer}H{r.head}"
        assert f'id="{anchor}"' in html
        assert f'href="#{anchor}"' in html
    for section in ("overview", "findings", "scores", "neurons", "pairs", "ground-truth"):
        assert f'id="{section}"' in html
    # every table the run holds is marked present, also those the report does not read
    for name in ("firings", "findings", "effects", "scores", "score_controls"):
        if (built.run.path / f"{name}.parquet").is_file():
            assert f"{name} \u2713" in html, name
    assert "\u2717" not in html.split('id="overview"')[1].split("</section>")[0]
    assert "Attribution method agreement" in html
    assert "predicted active" in html  # a confusion matrix
    layer, neuron = built.neuron_alone
    section = html.split(f'id="neuron-L{layer}N{neuron}"')[1].split("</section>")[0]
    assert "NEURON-ALONE fires after &#x27;an&#x27;" in section
    assert "UNSCORED-NOTE" in html and "one class" in html
    assert "E of neurons" in html  # the neuron rows get their own histogram
    # selected neurons come before baseline ones
    sel = neurons[neurons.selected].sort_values("congruence", ascending=False)
    base = neurons[neurons.baseline]
    first_base = min(html.index(f'id="neuron-L{r.layer}N{r.neuron}"') for r in base.itertuples())
    last_sel = max(html.index(f'id="neuron-L{r.layer}N{r.neuron}"') for r in sel.itertuples())
    assert last_sel < first_base


def test_report_shades_activation_and_attention(built: Built, report_path: Path) -> None:
    html = report_path.read_text(encoding="utf-8")
    act_spans = re.findall(r'<span class="t act[^"]*" style="--a:([0-9.]+)" title="([^"]*)"', html)
    attn_spans = re.findall(r'<span class="t attn[^"]*" style="--a:([0-9.]+)"', html)
    assert act_spans and attn_spans
    assert all(0.0 <= float(a) <= 1.0 for a, _ in act_spans)
    assert any(float(a) == 1.0 for a, _ in act_spans)  # the scale reaches its maximum
    # one shaded span per token of every prompt shown in the neuron sections
    ex = built.run.read_df("examples")
    cap = ReportConfig().max_prompts
    n_tokens = sum(
        len(t)
        for _, g in ex.assign(_c=ex.kind == "contrast")
        .sort_values(["_c", "rank", "example_id"])
        .groupby(["layer", "neuron"])
        for t in g.tokens.head(cap)
    )
    assert len(act_spans) == n_tokens
    assert "activation" in act_spans[0][1]  # the value is in the tooltip


def test_model_computations_match_the_pipeline(built: Built) -> None:
    ex = built.run.read_df("examples")
    ex = ex[ex.example_id != built.malicious_example]
    prompts = [list(map(int, t)) for t in ex.tokens]
    neurons = list(zip(ex.layer.astype(int), ex.neuron.astype(int), strict=True))
    acts = neuron_activations(built.lm, prompts, neurons, batch_prompts=3)
    assert [len(a) for a in acts] == [len(p) for p in prompts]
    last = np.array([a[-1] for a in acts])
    np.testing.assert_allclose(last, ex.trimmed_activation.to_numpy(), rtol=1e-4, atol=1e-5)
    pats = last_position_attention(built.lm, prompts, 1, batch_prompts=3)
    alone = last_position_attention(built.lm, prompts[:1], 1, batch_prompts=1)
    for p, pat in zip(prompts, pats, strict=True):
        assert pat.shape == (built.lm.n_heads, len(p))
        np.testing.assert_allclose(pat.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pats[0], alone[0], atol=1e-6)  # padding changes nothing


def _made_before_views(built: Built, tmp_path: Path) -> RunDir:
    """A copy of the run directory as the report stage wrote it before the views table."""
    copy = tmp_path / "before-views"
    shutil.copytree(built.run.path, copy)
    (copy / "views.parquet").unlink()
    return RunDir(copy)


def test_report_escapes_corpus_text_tokens_and_explanations(built: Built, tmp_path: Path) -> None:
    old = _made_before_views(built, tmp_path)
    for run, lm in ((built.run, built.lm), (built.run, None), (old, None)):
        cfg = ReportConfig(load_tokenizer=False)
        html = build_report(run, lm, cfg)
        p = _parse(html)
        assert [t for t, _ in p.tags].count("script") == 1
        assert "img" not in {t for t, _ in p.tags}
        assert "alert(1)</script>" not in html and "alert(2)</script>" not in html
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html  # explanation text
        assert "&lt;img\u00b7src=x\u00b7onerror=alert(3)&gt;" in html  # token, made visible
        assert "&amp;lt;" not in html  # escaped once, not twice
        if run is old:  # no model, no tokenizer: shown as text, the whole line escaped
            assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;" in html
        else:  # shown token by token (the model's or the views table's): each piece escaped
            assert "&lt;" in html.split('id="neuron-')[1]
        assert external_references(html) == []


def test_report_without_model_uses_the_tokenizer(built: Built, tmp_path: Path) -> None:
    # a run directory made before the views table, reported without its model
    html = build_report(_made_before_views(built, tmp_path), None, ReportConfig())
    assert "Built without the model" in html
    assert '<span class="t"' in html  # token spans
    assert 'class="t act' not in html and 'class="t attn' not in html
    assert "Promoted tokens" not in html
    assert external_references(html) == []


def test_caps_limit_neurons_prompts_and_pairs(built: Built) -> None:
    cfg = ReportConfig(max_neurons=2, max_prompts=1, max_pairs=1, max_heads=1)
    html = build_report(built.run, built.lm, cfg)
    assert len(re.findall(r'<section class="card neuron"', html)) == 2
    assert len(re.findall(r'<section class="card pair"', html)) == 1
    sections = html.split('<section class="card ')[1:]
    for s in sections:
        assert s.count('<div class="prompt') <= 1


def test_report_with_only_neurons(built: Built, tmp_path: Path) -> None:
    cfg = dataclasses.replace(built.cfg)
    run = run_pipeline(cfg, tmp_path / "partial", until="neurons")
    assert not run.has_table("examples")
    for lm in (None, built.lm):
        path = write_report(run, lm, ReportConfig())
        html = path.read_text(encoding="utf-8")
        assert "Stages not run yet: scan, examples, attribute, verify, explain, score" in html
        assert "No scores yet" in html
        assert "No pairs yet" in html
        neurons = run.read_df("neurons")
        for r in neurons[neurons.selected].itertuples():
            assert f'id="neuron-L{r.layer}N{r.neuron}"' in html
        assert external_references(html) == []
    assert not (run.path / "figures" / "e_histogram.svg").exists()


def test_report_of_an_empty_run(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "empty", {"config": {}})
    html = build_report(run, None, ReportConfig())
    assert "No neurons yet" in html
    assert external_references(html) == []


def test_report_refuses_another_model(built: Built, tmp_path: Path) -> None:
    other = load_model(build_tiny_model("gpt2", tmp_path / "m3", n_layers=3), device="cpu")
    with pytest.raises(UserError, match="n_layers"):
        build_report(built.run, other, ReportConfig())


def test_report_skips_unreadable_table(built: Built, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built.run.path, copy)
    (copy / "effects.parquet").write_bytes(b"not parquet")
    report = render_report(RunDir(copy), None, ReportConfig(load_tokenizer=False))
    assert "Table effects could not be read" in report.html
    assert 'id="neuron-' in report.html


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report_path: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--window-size=1400,2400",
            f"--screenshot={shot}",
            report_path.resolve().as_uri(),
        ],
        check=False,
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_prompt_headers_say_which_prompts_are_on_token() -> None:
    from lookuplens.report.details import _example_meta
    from lookuplens.server.pages import _example_meta as served_meta

    base = {"kind": "top", "rank": 31, "trimmed_activation": 1.0, "example_id": 7}
    for meta in (_example_meta, served_meta):
        assert "on-token" in meta({**base, "on_token": True})
        assert "on-token" not in meta({**base, "on_token": False})
        assert "on-token" not in meta(base)


def test_a_neuron_section_shows_some_of_its_on_token_prompts() -> None:
    import pandas as pd

    from lookuplens.report.data import display_order, neuron_prompts

    g = pd.DataFrame(
        {
            "example_id": range(12),
            "rank": [0, 1, 2, 3, 4, 5, 6, 7, 30, 31, 32, -1],
            "kind": ["top"] * 11 + ["contrast"],
            "on_token": [False] * 8 + [True] * 3 + [False],
        }
    )
    assert neuron_prompts(display_order(g), 8) == (0, 1, 2, 3, 4, 5, 8, 9)
    assert neuron_prompts(display_order(g.drop(columns="on_token")), 8) == tuple(range(8))
    assert neuron_prompts(display_order(g), 3) == (0, 1, 8)
