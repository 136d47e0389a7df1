"""The attributions and labels read a neuron at a time (`report.lazy.NeuronTables`) give
the numbers the whole-table reads gave, on sorted run directories (with the
attribution_means table) and on unsorted ones written before it existed; and neither
the dashboard nor the report reads those tables whole."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from dashboard_synthetic import build_large_run  # noqa: E402

from lookuplens.report import ReportConfig  # noqa: E402
from lookuplens.report.build import render_report  # noqa: E402
from lookuplens.report.data import load_run  # noqa: E402
from lookuplens.report.lazy import NeuronTables  # noqa: E402
from lookuplens.store import ROW_GROUP_ROWS, RunDir  # noqa: E402
from lookuplens.store.means import attribution_means, top_example_ids  # noqa: E402

KEYS = ["layer", "neuron", "head_layer", "head", "method"]


def _eager_means(run: RunDir) -> dict[tuple[int, int], dict[tuple[int, int], dict[str, float]]]:
    """What the report computed before: the whole table, pyarrow's group_by, a nested dict."""
    table = run.read_table("attributions")
    ex = run.read_df("examples")
    top = pa.array(ex.example_id[ex.kind == "top"].to_numpy())
    table = table.filter(pc.is_in(table.column("example_id"), value_set=top))
    df = (
        table.select([*KEYS, "value"])
        .group_by(KEYS, use_threads=False)  # threads sum in any order: last bits differ
        .aggregate([("value", "mean"), ("value", "count")])
        .to_pandas()
    )
    out: dict[tuple[int, int], dict[tuple[int, int], dict[str, float]]] = {}
    for r in zip(
        df.layer, df.neuron, df.head_layer, df["head"], df.method, df.value_mean, strict=True
    ):
        heads = out.setdefault((int(r[0]), int(r[1])), {})
        heads.setdefault((int(r[2]), int(r[3])), {})[str(r[4])] = float(r[5])
    return out


def _make_run(root: Path, with_means: bool) -> RunDir:
    run = build_large_run(root, "no-model", n_tracked=24, examples_per_neuron=10, seed=3)
    ex = run.read_df("examples")
    run.write_table("examples", ex.assign(kind=np.where(ex["rank"] < 7, "top", "contrast")))
    if with_means:  # as the attribute stage writes it
        att = run.read_table("attributions")
        top = top_example_ids(run.read_table("examples"))
        run.write_table("attribution_means", attribution_means(att, top))
    return run


def _unsorted_copy(run: RunDir, dest: Path) -> RunDir:
    """The run as written before 2026-12-05: attributions and labels in another order, in
    one row group each, and no attribution_means table."""
    shutil.copytree(run.path, dest)
    rng = np.random.default_rng(0)
    for name in ("attributions", "labels"):
        t = pq.read_table(run.table_path(name))
        pq.write_table(t.take(rng.permutation(t.num_rows)), dest / f"{name}.parquet")
    (dest / "attribution_means.parquet").unlink(missing_ok=True)
    return RunDir(dest)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, RunDir]:
    root = tmp_path_factory.mktemp("lazy")
    run = _make_run(root / "sorted", with_means=True)
    return run, _unsorted_copy(run, root / "unsorted")


def test_sorted_tables_and_filtered_reads(runs: tuple[RunDir, RunDir], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run, old = runs
    att = run.read_df("attributions")
    keys = ["layer", "neuron", "example_id", "head_layer", "head", "method"]
    assert att[keys].equals(att[keys].sort_values(keys, ignore_index=True))
    lab = run.read_df("labels")
    lab_keys = ["layer", "neuron", "example_id", "head_layer", "head"]
    assert lab[lab_keys].equals(lab[lab_keys].sort_values(lab_keys, ignore_index=True))
    assert pq.read_metadata(run.table_path("attributions")).num_row_groups == -(
        -len(att) // ROW_GROUP_ROWS
    )
    # many small row groups: a neuron's read gives the rows a whole-table filter gives
    monkeypatch.setattr("lookuplens.store.rundir.ROW_GROUP_ROWS", 300)
    run.write_table("attributions", run.read_table("attributions"))
    assert pq.read_metadata(run.table_path("attributions")).num_row_groups > 10
    for layer, neuron in att[["layer", "neuron"]].drop_duplicates().head(5).itertuples(index=False):
        want = att[(att.layer == layer) & (att.neuron == neuron)].reset_index(drop=True)
        for r in (run, old):
            got = r.read_neuron("attributions", layer, neuron).to_pandas()
            got = got.sort_values(keys, ignore_index=True)
            pd.testing.assert_frame_equal(got, want)
    # written in chunks: the same file content as written whole
    chunks = [run.read_table("labels").slice(i, 700) for i in range(0, len(lab), 700)]
    run.write_table_chunks("labels", chunks)
    assert run.read_df("labels").equals(lab)


@pytest.mark.parametrize("which", ["sorted", "unsorted"])
def test_lazy_means_and_labels_equal_the_eager_ones(
    runs: tuple[RunDir, RunDir], which: str
) -> None:
    run = runs[0] if which == "sorted" else runs[1]
    eager = _eager_means(run)
    nt = NeuronTables(run, run.read_df("examples"))
    assert nt.means_table is (which == "sorted")
    assert nt.neurons() == frozenset(eager)
    for key, heads in eager.items():
        assert nt.head_means(*key) == heads  # exactly: same rows summed in the same order
        scored = [(v["direct"], h) for h, v in heads.items() if "direct" in v]
        assert nt.top_heads()[key] == max(scored)[1]
    assert set(nt.methods()) == {"direct", "zero_ablation"}
    labels = run.read_df("labels")
    pairs = run.read_df("pairs")
    for p in pairs[pairs.kept].head(12).itertuples(index=False):
        lab = labels[
            (labels.layer == p.layer)
            & (labels.neuron == p.neuron)
            & (labels.head_layer == p.head_layer)
            & (labels["head"] == p.head)
        ]
        want = dict(zip(lab.example_id.astype(int), lab.active.astype(bool), strict=True))
        assert nt.pair_labels(p.layer, p.neuron, p.head_layer, p.head) == want
        assert want  # the test checks something


def test_startup_never_reads_attributions_or_labels_whole(
    runs: tuple[RunDir, RunDir], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from lookuplens.server import ServeConfig
    from lookuplens.server.data import RunData

    whole = RunDir.read_table

    def guarded(self: RunDir, name: str) -> pa.Table:
        if name in ("attributions", "labels"):
            raise AssertionError(f"{name} read whole")
        return whole(self, name)

    monkeypatch.setattr(RunDir, "read_table", guarded)
    monkeypatch.setattr(pq, "read_table", _no_whole_read(pq.read_table))
    run = runs[0]
    data = RunData(run, ServeConfig())
    nt = data.by_neuron
    assert nt is not None
    assert len(nt.means_cache) == 0 and len(nt.labels_cache) == 0  # nothing read per neuron
    kept = data.pairs[data.pairs.kept].iloc[0]
    key = (int(kept.layer), int(kept.neuron), int(kept.head_layer), int(kept["head"]))
    data.pair_detail(*key)
    data.neuron_detail(*key[:2])
    assert (key[0], key[1]) in nt.labels_cache and (key[0], key[1]) in nt.means_cache
    misses = nt.labels_cache.misses
    data.pair_detail(*key)
    assert nt.labels_cache.misses == misses and nt.labels_cache.hits >= 1
    # the static report's loader too
    t = load_run(run)
    assert t.get("attributions") is None and t.get("labels") is None
    assert t.present("attributions") and t.present("labels")


def _no_whole_read(read):  # type: ignore[no-untyped-def]
    def wrapped(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = Path(str(source)).name
        if name in ("attributions.parquet", "labels.parquet") and not kwargs.get("filters"):
            raise AssertionError(f"{name} read whole")
        return read(source, *args, **kwargs)

    return wrapped


def _rounded(obj: object) -> object:
    if isinstance(obj, float):
        return obj if not np.isfinite(obj) or obj == 0 else float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def _normalised(html: str, path: Path) -> str:
    html = html.replace(str(path), "RUN").replace(f"report: {path.name}", "report: RUN")
    # full-precision sort keys of means summed in another order: compare 10 digits
    html = re.sub(r'data-v="(-?[0-9.e+-]+)"', lambda m: f'data-v="{float(m[1]):.10g}"', html)
    return re.sub(r"at \d{4}-\d\d-\d\dT[0-9:+]+\.", "at TIME.", html)


def test_unsorted_run_gives_the_same_pages(runs: tuple[RunDir, RunDir]) -> None:
    from lookuplens.server import ServeConfig
    from lookuplens.server.data import RunData

    new, old = runs
    a, b = RunData(new, ServeConfig()), RunData(old, ServeConfig())
    pd.testing.assert_frame_equal(a.neurons, b.neurons)
    for p in a.pairs[a.pairs.kept].head(6).itertuples(index=False):
        key = (int(p.layer), int(p.neuron), int(p.head_layer), int(p.head))
        assert a.pair_detail(*key) == b.pair_detail(*key)
        # the means of rows summed in another order: equal to the last bits or so
        assert _rounded(a.neuron_detail(*key[:2])) == _rounded(b.neuron_detail(*key[:2]))
    cfg = ReportConfig(load_tokenizer=False, max_neurons=8, max_pairs=8)
    html_new = render_report(new, None, cfg).html
    html_old = render_report(old, None, cfg).html
    assert _normalised(html_new, new.path) == _normalised(html_old, old.path)
    assert "Upstream heads" in html_new or "upstream heads" in html_new
