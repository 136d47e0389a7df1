"""A run directory stands alone: the report stage stores what the report and the
dashboard show from the model (the ``views`` table), so a copy of the run directory is
reported, with the same shading and vocabulary, after the model folder is gone."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lookuplens.attribute import AttributeConfig
from lookuplens.corpus import CorpusSpec
from lookuplens.errors import UserError
from lookuplens.model import LoadedModel, load_model
from lookuplens.model.tiny import build_tiny_model
from lookuplens.neurons import NeuronsConfig
from lookuplens.pipeline import RunConfig, run_pipeline
from lookuplens.report import ReportConfig, render_report
from lookuplens.report.compute import last_position_attention, neuron_activations, vocab_tokens
from lookuplens.report.views import VIEW_PROMPTS, VIEW_VOCAB, StoredViews
from lookuplens.scan import ScanConfig
from lookuplens.store import RunDir, table_schema

WORDS = (
    "the quick brown fox jumps over lazy dog she bought an apple and a pear at market owl "
    "sat on old oak tree near river tom anna walked to harbour buy fish"
).split()


@dataclass
class Alone:
    run: RunDir
    """The run directory the pipeline wrote (its model folder is gone)."""
    copy: Path
    """A copy of it somewhere else."""
    lm: LoadedModel
    """The run's model, loaded before its folder was moved away."""


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Alone:
    root = tmp_path_factory.mktemp("alone")
    model = build_tiny_model("gpt2", root / "model")
    rng = np.random.default_rng(3)
    lines = [
        " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))).capitalize() + "."
        for _ in range(30)
    ]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = RunConfig(
        model=str(model),
        corpus=CorpusSpec(str(root / "corpus.txt")),
        device="cpu",
        neurons=NeuronsConfig(top_n=2, token_filter="none"),
        scan=ScanConfig(k=6),
        attribute=AttributeConfig(
            label_rule="top_k", label_top_k=1, min_active_rate=0.1, max_active_rate=0.9
        ),
    )
    run = run_pipeline(cfg, root / "run")
    assert run.read_df("pairs").kept.any(), "the test run should keep at least one pair"
    lm = load_model(model, device="cpu")
    copy = root / "elsewhere" / "copied-run"
    shutil.copytree(run.path, copy)
    (root / "model").rename(root / "model-moved")  # the model is no longer where run.json says
    return Alone(run, copy, lm)


def _shown_ids(examples, layer: int, neuron: int) -> list[int]:  # type: ignore[no-untyped-def]
    mine = examples[(examples.layer == layer) & (examples.neuron == neuron)]
    mine = mine.assign(_c=mine.kind == "contrast", _id=mine.index)
    return [int(i) for i in mine.sort_values(["_c", "rank", "_id"]).index]


def test_views_table_holds_what_is_shown(alone: Alone) -> None:
    run, lm = alone.run, alone.lm
    table = run.read_table("views")
    assert table.schema == table_schema("views")
    views = table.to_pandas()
    assert set(views.kind) == {"activation", "attention", "promoted", "suppressed"}
    ex = run.read_df("examples").set_index("example_id")
    neurons = run.read_df("neurons")
    tracked = neurons[neurons.selected | neurons.baseline]
    labels = run.read_df("labels")
    pairs = run.read_df("pairs")
    kept = pairs[pairs.kept]
    for row in views.itertuples():
        assert len(row.token_ids) == len(row.tokens) == len(row.values)
        assert list(row.tokens) == [lm.token_str(int(t)) for t in row.token_ids]
    # per tracked neuron: its first prompts (as the report and the dashboard list them)
    act = views[views.kind == "activation"]
    want_rows = 0
    for n in tracked.itertuples():
        ids = _shown_ids(ex, n.layer, n.neuron)[:VIEW_PROMPTS]
        mine = act[(act.layer == n.layer) & (act.neuron == n.neuron)]
        assert list(mine.example_id) == ids
        want_rows += len(ids)
        got = neuron_activations(
            lm, [list(ex.loc[i, "tokens"]) for i in ids], [(n.layer, n.neuron)] * len(ids)
        )
        for (_, r), a in zip(mine.iterrows(), got, strict=True):
            assert list(r.token_ids) == list(ex.loc[r.example_id, "tokens"])
            np.testing.assert_allclose(r["values"], a, rtol=1e-5, atol=1e-6)
            assert r["values"][-1] == pytest.approx(
                float(ex.loc[r.example_id, "trimmed_activation"]), rel=1e-4, abs=1e-5
            )
    assert len(act) == want_rows
    # per kept pair: its prompts with the head active, then inactive
    att = views[views.kind == "attention"]
    assert len(kept) >= 1
    for p in kept.itertuples():
        lab = labels[
            (labels.layer == p.layer)
            & (labels.neuron == p.neuron)
            & (labels.head_layer == p.head_layer)
            & (labels["head"] == p.head)
        ]
        active = set(lab.example_id[lab.active.astype(bool)].astype(int))
        ids = _shown_ids(ex, p.layer, p.neuron)
        want = [i for i in ids if i in active][:VIEW_PROMPTS]
        want += [i for i in ids if i not in active][:VIEW_PROMPTS]
        mine = att[
            (att.layer == p.layer)
            & (att.neuron == p.neuron)
            & (att.head_layer == p.head_layer)
            & (att["head"] == p.head)
        ]
        assert list(mine.example_id) == want
        pats = last_position_attention(lm, [list(ex.loc[i, "tokens"]) for i in want], p.head_layer)
        for (_, r), pat in zip(mine.iterrows(), pats, strict=True):
            np.testing.assert_allclose(r["values"], pat[p.head], rtol=1e-5, atol=1e-6)
            assert sum(r["values"]) == pytest.approx(1.0, abs=1e-4)
    shown_pairs = set(att[["layer", "neuron", "head_layer", "head"]].itertuples(False, None))
    assert shown_pairs <= set(
        zip(kept.layer, kept.neuron, kept.head_layer, kept["head"], strict=True)
    )
    # per tracked neuron: the promoted and suppressed tokens, read from the weights
    keys = list(zip(tracked.layer.astype(int), tracked.neuron.astype(int), strict=True))
    want_vocab = vocab_tokens(lm, keys, VIEW_VOCAB)
    for kind in ("promoted", "suppressed"):
        rows = views[views.kind == kind]
        assert len(rows) == len(keys)
        for r in rows.itertuples():
            items = getattr(want_vocab[(r.layer, r.neuron)], kind)
            assert list(r.token_ids) == [i for i, _ in items]
            np.testing.assert_allclose(r.values, [c for _, c in items], rtol=1e-6)
            assert r.example_id is None or np.isnan(r.example_id)
    top = views[views.kind == "promoted"].set_index(["layer", "neuron"])
    for n in tracked.itertuples():
        assert top.loc[(n.layer, n.neuron), "token_ids"][0] == n.token_id


def _normalised(html: str, run_path: Path) -> str:
    """The page without what differs between two renders of the same run: where the run
    directory is and when the page was made."""
    html = html.replace(str(run_path), "RUN")
    html = html.replace(f"lookuplens report: {run_path.name}", "lookuplens report: RUN")
    return re.sub(r"at \d{4}-\d\d-\d\dT[0-9:+]+\.", "at TIME.", html)


def test_copy_is_reported_without_the_model(alone: Alone, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    res = subprocess.run(
        [sys.executable, "-m", "lookuplens.cli", "report", str(alone.copy)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loading the model" not in res.stderr
    html = (alone.copy / "report.html").read_text(encoding="utf-8")
    original = (alone.run.path / "report.html").read_text(encoding="utf-8")
    # the same page as the pipeline's report: same shaded tokens, attention and vocabulary
    assert _normalised(html, alone.copy) == _normalised(original, alone.run.path)
    assert 'class="t act' in html and 'class="t attn' in html
    assert "Promoted tokens" in html and "Suppressed tokens" in html
    assert "Built without the model" not in html and "views table lacks" not in html


def test_table_and_model_give_the_same_report(alone: Alone, tmp_path: Path) -> None:
    """A run directory made before the views table existed is reported with the model, as
    before; the page is the one the table gives."""
    old = tmp_path / "old-run"
    shutil.copytree(alone.copy, old)
    (old / "views.parquet").unlink()
    cfg = ReportConfig()
    from_table = render_report(RunDir(alone.copy), None, cfg).html
    with_model = render_report(RunDir(old), alone.lm, cfg).html
    assert _normalised(with_model, old) == _normalised(from_table, alone.copy)
    # without the table and without the model: no shading, as before
    bare = render_report(RunDir(old), None, ReportConfig(load_tokenizer=False)).html
    assert "Built without the model" in bare and 'class="t act' not in bare


def test_stale_or_missing_rows_are_computed_or_left_out(alone: Alone, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(alone.copy, run)
    rd = RunDir(run)
    views = rd.read_table("views")
    first = views.to_pandas().query("kind == 'activation'").iloc[0]
    keep = np.ones(views.num_rows, dtype=bool)
    keep[first.name] = False
    rd.write_table("views", views.filter(keep))
    stored = StoredViews.read(rd)
    assert stored is not None
    assert stored.activations.get((first.layer, first.neuron, first.example_id)) is None
    html = render_report(rd, None, ReportConfig(load_tokenizer=False)).html
    assert "views table lacks 1 of the prompts shown" in html
    assert 'class="t act' in html  # the other prompts are still shaded
    full = render_report(rd, alone.lm, ReportConfig()).html
    assert "views table lacks" not in full
    want = render_report(RunDir(alone.copy), None, ReportConfig()).html
    assert _normalised(full, run) == _normalised(want, alone.copy)


def test_report_command_loads_the_model_only_without_the_table(
    alone: Alone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lookuplens.cli.stages import report_cmd

    old = tmp_path / "old-run"
    shutil.copytree(alone.copy, old)
    (old / "views.parquet").unlink()
    with caplog.at_level(logging.INFO, logger="lookuplens"):
        report_cmd(str(old), no_model=True, device="cpu")
    assert "no views table" not in caplog.text
    assert "Built without the model" in (old / "report.html").read_text(encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="lookuplens"), pytest.raises(UserError):
        report_cmd(str(old), no_model=False, device="cpu")  # its model folder is gone
    lines = [r for r in caplog.records if "no views table" in r.getMessage()]
    assert len(lines) == 1 and "loading the model" in lines[0].getMessage()
