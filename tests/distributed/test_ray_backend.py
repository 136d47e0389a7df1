"""The Ray backend against the local one: identical tables, worker deaths, driver restarts.

Every test shares one local Ray cluster of 2 CPUs (2 worker processes at a time).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

ray = pytest.importorskip(
    "ray", reason="the Ray backend's tests need ray: pip install 'lookuplens[ray]'"
)

from lookuplens.attribute import AttributeConfig, attribute_examples  # noqa: E402
from lookuplens.corpus import CorpusSpec  # noqa: E402
from lookuplens.distributed import (  # noqa: E402
    ClusterError,
    RayConfig,
    RayScanProgress,
    ShardFailedError,
    ShardWorker,
    TokenShard,
    attribute_examples_ray,
    plan_workers,
    scan_corpus_ray,
)
from lookuplens.examples import ExamplesConfig, build_examples  # noqa: E402
from lookuplens.model import LoadedModel, load_model  # noqa: E402
from lookuplens.scan import ScanConfig, ScanProgress, scan_corpus  # noqa: E402
from lookuplens.store import RunDir, ShardStore  # noqa: E402

pytestmark = pytest.mark.slow  # a local Ray cluster; most tests take 5-20 s

NEURONS = [(0, 3), (1, 5), (1, 60), (0, 0), (1, 17)]
SCAN = ScanConfig(k=7, batch_tokens=500, shard_docs=23)  # 120 documents: 6 shards
RAY2 = RayConfig(workers=2)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[object]:
    # the test workers below are defined here, so ship them to Ray's workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",  # loopback only
        num_cpus=2,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def write_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = "the quick brown fox an owl apple market river tree she bought at".split()
    lines = (" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(n_docs))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def model_dir(tiny_dirs: dict[str, Path]) -> Path:
    return tiny_dirs["gpt2"]


@pytest.fixture
def lm(model_dir: Path) -> LoadedModel:
    return load_model(model_dir, device="cpu")


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusSpec:
    return CorpusSpec(str(write_corpus(tmp_path / "corpus.txt")))


def store(tmp_path: Path, stage: str) -> ShardStore:
    path = tmp_path / "run"
    run = RunDir.open(path) if (path / "run.json").exists() else RunDir.create(path, {})
    return run.shards(stage)


def assert_tables_equal(got: pa.Table, want: pa.Table) -> None:
    """Equal columns, rows and values (exactly; NaN equals NaN)."""
    pd.testing.assert_frame_equal(got.to_pandas(), want.to_pandas(), check_exact=True)


def recorded(log: Path) -> Counter[tuple[str, int]]:
    if not log.exists():
        return Counter()
    return Counter((m, int(i)) for m, i in (line.split() for line in log.read_text().splitlines()))


def instrumented(
    log: Path, die_on: int | None = None, marker: Path | None = None, raise_on: int | None = None
) -> type[ShardWorker]:
    """A worker that records each shard call; it can die (os._exit) mid-shard once.

    Dying happens after the shard was computed, before its result is returned, on the
    first call for shard `die_on` (the marker file remembers it across restarts).
    """

    class Recording(ShardWorker):
        def _record(self, method: str, index: int) -> None:
            with open(log, "a") as f:
                f.write(f"{method} {index}\n")
            if raise_on == index:
                raise RuntimeError(f"planted failure on shard {index}")

        def _maybe_die(self, index: int) -> None:
            if die_on == index and marker is not None and not marker.exists():
                marker.touch()
                os._exit(1)

        def scan(self, index, shard, neurons, cfg, tokens=None):  # type: ignore[no-untyped-def]
            self._record("scan", index)
            table = super().scan(index, shard, neurons, cfg, tokens)
            self._maybe_die(index)
            return table

        def attribute(self, index, batch, cfg, means):  # type: ignore[no-untyped-def]
            self._record("attribute", index)
            table = super().attribute(index, batch, cfg, means)
            self._maybe_die(index)
            return table

    return Recording


def test_token_shard_round_trip(lm: LoadedModel, corpus: CorpusSpec) -> None:
    from lookuplens.corpus import iter_tokenized

    docs = list(iter_tokenized(corpus, lm.tokenizer, lm.max_context))[:9]
    back = TokenShard.pack(docs).docs()
    assert [d.doc_id for d in back] == [d.doc_id for d in docs]
    for a, b in zip(back, docs, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)


def test_scan_equals_the_local_backend(
    lm: LoadedModel, model_dir: Path, corpus: CorpusSpec, tmp_path: Path
) -> None:
    local = scan_corpus(lm, NEURONS, corpus, SCAN)
    seen: list[ScanProgress] = []
    got = scan_corpus_ray(
        str(model_dir),
        NEURONS,
        corpus,
        SCAN,
        RAY2,
        device="cpu",
        shards=store(tmp_path, "scan"),
        on_progress=seen.append,
    )
    assert_tables_equal(got.topk, local.topk)
    assert_tables_equal(got.stats, local.stats)
    assert got.corpus == local.corpus  # run.json's fingerprint
    assert got.topk.num_rows == len(NEURONS) * SCAN.k
    assert store(tmp_path, "scan").done() == set(range(6))
    assert all(isinstance(p, RayScanProgress) for p in seen)
    assert [p.shards for p in seen] == list(range(1, 7))
    assert seen[-1].docs == 120 and seen[-1].tokens == local.corpus.tokens
    assert seen[-1].total_docs == 120 and seen[-1].workers == 2


def test_attribution_equals_the_local_backend(
    lm: LoadedModel, model_dir: Path, corpus: CorpusSpec, tmp_path: Path
) -> None:
    firings = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=6)).topk
    examples = build_examples(lm, firings, corpus, ExamplesConfig(window=3, max_prompt_tokens=30))
    cfg = AttributeConfig(batch_examples=4)  # every method, mean and resample ablation too
    local = attribute_examples(lm, examples, cfg)
    done: list[tuple[int, int]] = []
    got = attribute_examples_ray(
        str(model_dir),
        examples,
        cfg,
        RAY2,
        device="cpu",
        shards=store(tmp_path, "attribute"),
        on_progress=lambda d, n: done.append((d, n)),
    )
    assert got.num_rows > 0
    assert_tables_equal(got, local)
    n_batches = len(done)
    assert done == [(i, n_batches) for i in range(1, n_batches + 1)] and n_batches >= 3
    assert store(tmp_path, "attribute").done() == set(range(n_batches))


def test_the_storyworld_model_scans_identically(tmp_path: Path) -> None:
    from lookuplens.zoo import default_model_path

    path = default_model_path()
    if not (path / "config.json").is_file():
        pytest.skip(f"the bundled storyworld model is not built yet ({path})")
    lm = load_model(path, device="cpu")
    spec = CorpusSpec("storyworld", max_docs=60)
    neurons = [(lm.n_layers - 1, n) for n in range(0, lm.d_mlp, lm.d_mlp // 8)]
    cfg = ScanConfig(k=5, one_per_doc=False, shard_docs=16, batch_tokens=2048)
    local = scan_corpus(lm, neurons, spec, cfg)
    got = scan_corpus_ray(str(path), neurons, spec, cfg, RAY2, device="cpu")
    assert_tables_equal(got.topk, local.topk)
    assert_tables_equal(got.stats, local.stats)
    assert got.corpus == local.corpus


def test_a_worker_dying_mid_shard_is_retried_without_loss_or_duplicates(
    lm: LoadedModel, model_dir: Path, corpus: CorpusSpec, tmp_path: Path
) -> None:
    log, marker = tmp_path / "calls.log", tmp_path / "died"
    worker = instrumented(log, die_on=2, marker=marker)
    seen: list[ScanProgress] = []
    got = scan_corpus_ray(
        str(model_dir),
        NEURONS,
        corpus,
        SCAN,
        RAY2,
        device="cpu",
        shards=store(tmp_path, "scan"),
        on_progress=seen.append,
        worker_class=worker,
    )
    assert marker.exists()  # a worker process did die
    local = scan_corpus(lm, NEURONS, corpus, SCAN)
    assert_tables_equal(got.topk, local.topk)
    assert_tables_equal(got.stats, local.stats)
    calls = recorded(log)
    assert calls[("scan", 2)] >= 2  # computed, lost with the worker, computed again
    assert set(calls) == {("scan", i) for i in range(6)}
    assert sorted(p.shards for p in seen) == list(range(1, 7))  # each shard taken once
    assert seen[-1].docs == 120 and seen[-1].retries >= 1
    assert store(tmp_path, "scan").done() == set(range(6))


def test_attribution_survives_a_worker_death(
    lm: LoadedModel, model_dir: Path, corpus: CorpusSpec, tmp_path: Path
) -> None:
    firings = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=4)).topk
    examples = build_examples(lm, firings, corpus, ExamplesConfig(window=3, max_prompt_tokens=30))
    cfg = AttributeConfig(methods=("direct", "zero_ablation", "mean_ablation"), batch_examples=3)
    log, marker = tmp_path / "calls.log", tmp_path / "died"
    got = attribute_examples_ray(
        str(model_dir),
        examples,
        cfg,
        RAY2,
        device="cpu",
        worker_class=instrumented(log, die_on=1, marker=marker),
    )
    assert marker.exists()
    assert_tables_equal(got, attribute_examples(lm, examples, cfg))
    df = got.to_pandas()
    per_key = df.groupby(["example_id", "method", "head_layer", "head"]).size()
    assert (per_key == 1).all()
    assert set(df.example_id) == set(examples.column("example_id").to_pylist())


def test_a_restarted_driver_computes_only_the_missing_shards(
    lm: LoadedModel, model_dir: Path, corpus: CorpusSpec, tmp_path: Path
) -> None:
    shards = store(tmp_path, "scan")
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    # the first driver stops when shard 4 fails; shards finished before stay written
    with pytest.raises(ShardFailedError, match="planted failure"):
        scan_corpus_ray(
            str(model_dir),
            NEURONS,
            corpus,
            SCAN,
            RayConfig(workers=2, inflight_per_worker=1),
            device="cpu",
            shards=shards,
            worker_class=instrumented(first, raise_on=4),
        )
    finished = shards.done()
    assert 4 not in finished and finished  # shards 0 and 1 ran before shard 4 was sent
    got = scan_corpus_ray(
        str(model_dir),
        NEURONS,
        corpus,
        SCAN,
        RAY2,
        device="cpu",
        shards=shards,
        worker_class=instrumented(second),
    )
    calls = recorded(second)
    assert set(calls) == {("scan", i) for i in set(range(6)) - finished}
    assert all(n == 1 for n in calls.values())
    local = scan_corpus(lm, NEURONS, corpus, SCAN)
    assert_tables_equal(got.topk, local.topk)
    assert_tables_equal(got.stats, local.stats)
    assert got.corpus == local.corpus


def test_attribution_reruns_nothing_once_every_batch_is_written(
    lm: LoadedModel, model_dir: Path, corpus: CorpusSpec, tmp_path: Path
) -> None:
    firings = scan_corpus(lm, NEURONS, corpus, ScanConfig(k=3)).topk
    examples = build_examples(lm, firings, corpus, ExamplesConfig(window=3, max_prompt_tokens=30))
    cfg = AttributeConfig(methods=("direct", "raw"), label_rule="mean_std", batch_examples=4)
    shards = store(tmp_path, "attribute")
    local = attribute_examples(lm, examples, cfg, shards=shards)  # the local backend wrote all
    log = tmp_path / "calls.log"
    got = attribute_examples_ray(
        str(model_dir),
        examples,
        cfg,
        RAY2,
        device="cpu",
        shards=shards,
        worker_class=instrumented(log),
    )
    assert recorded(log) == Counter()
    assert_tables_equal(got, local)


def test_cuda_without_gpus_in_the_cluster_is_a_clear_error() -> None:
    with pytest.raises(ClusterError, match="no GPUs"):
        plan_workers(ray, RayConfig(), "cuda")
    plan = plan_workers(ray, RayConfig(), "auto")
    assert plan.device == "cpu" and plan.num_gpus == 0 and plan.workers == 2


def test_a_model_that_cannot_load_raises_its_own_error(corpus: CorpusSpec, tmp_path: Path) -> None:
    from lookuplens.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="no model directory"):
        scan_corpus_ray(str(tmp_path / "missing-model"), NEURONS, corpus, SCAN, RAY2, device="cpu")
