"""The scan stage on a Ray cluster (see `lookuplens.distributed`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import pyarrow as pa

from lookuplens.corpus import CorpusHasher, CorpusSpec, iter_tokenized
from lookuplens.distributed.cluster import (
    Task,
    WorkerPool,
    import_ray,
    plan_workers,
    ray_session,
)
from lookuplens.distributed.config import RayConfig
from lookuplens.distributed.worker import ModelInfo, ShardWorker, TokenShard, WorkerSpec
from lookuplens.errors import CorpusError
from lookuplens.scan import ScanConfig, ScanProgress, ScanResult, count_documents, merge_shards
from lookuplens.store import ShardStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayScanProgress(ScanProgress):
    """`ScanProgress` after each finished shard, with the cluster's side of it."""

    shards: int = 0
    """Shards finished so far (those read back from the run directory included)."""
    workers: int = 0
    """Workers alive."""
    retries: int = 0
    """Shards submitted again so far because their worker died."""


class _Scan:
    """The driver's side of one scan: shards out, tables in, progress."""

    def __init__(
        self,
        pool: WorkerPool[pa.Table],
        spec: CorpusSpec,
        info: ModelInfo,
        neurons: tuple[tuple[int, int], ...],
        cfg: ScanConfig,
        shards: ShardStore | None,
        on_progress: Callable[[ScanProgress], None] | None,
        total_docs: int | None,
        tokens: tuple[int, ...] | None = None,
    ) -> None:
        self.pool = pool
        self.neurons = neurons
        self.tokens = tokens
        self.cfg = cfg
        self.store = shards
        self.on_progress = on_progress
        self.total_docs = total_docs
        self.hasher = CorpusHasher()
        self.docs = self.hasher.track(iter_tokenized(spec, info.tokenizer, info.max_context))
        self.done = shards.done() if shards is not None else set()
        self.results: dict[int, pa.Table] = {}
        self.sizes: dict[int, tuple[int, int]] = {}
        self.n_shards = 0
        self.seen_docs = self.seen_tokens = 0
        self.t0 = time.perf_counter()

    def tasks(self) -> Iterator[Task]:
        """Tokenise the next shard when a worker can take it; finished shards are read back."""
        i = 0
        while True:
            chunk = list(islice(self.docs, self.cfg.shard_docs))
            if not chunk:
                break
            packed = TokenShard.pack(chunk)
            self.sizes[i] = (packed.n_docs, packed.n_tokens)
            if i in self.done and self.store is not None:
                self.results[i] = self.store.read(i)
                self._report(i)
            else:
                yield Task(i, "scan", (i, packed, self.neurons, self.cfg, self.tokens))
            i += 1
            self.n_shards = i

    def on_result(self, i: int, table: pa.Table) -> None:
        if i in self.results:  # never expected: the dispatcher takes each shard once
            log.warning("shard %d came back twice; the second copy is ignored", i)
            return
        if self.store is not None:
            self.store.write(i, table)
        self.results[i] = table
        self._report(i)

    def _report(self, i: int) -> None:
        d, t = self.sizes.pop(i)
        self.seen_docs += d
        self.seen_tokens += t
        if self.on_progress is not None:
            self.on_progress(
                RayScanProgress(
                    docs=self.seen_docs,
                    tokens=self.seen_tokens,
                    total_docs=self.total_docs,
                    seconds=time.perf_counter() - self.t0,
                    shards=len(self.results),
                    workers=self.pool.alive,
                    retries=self.pool.retries,
                )
            )


def scan_corpus_ray(
    model: str,
    neurons: Sequence[tuple[int, int]],
    spec: CorpusSpec,
    cfg: ScanConfig,
    ray_cfg: RayConfig | None = None,
    *,
    device: str = "auto",
    dtype: str = "float32",
    shards: ShardStore | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
    worker_class: type[ShardWorker] = ShardWorker,
    tokens: Sequence[int] | None = None,
) -> ScanResult:
    """`lookuplens.scan.scan_corpus` with the shards scanned by Ray workers.

    Each worker loads `model` once (``load_model(model, device, dtype)``, on a GPU of
    its own when `device` is auto or cuda and the cluster has GPUs); the driver loads no
    weights. The driver tokenises and hashes the corpus (with the workers' tokenizer),
    sends each shard of `cfg.shard_docs` documents to a worker, writes each returned
    shard table to `shards` (a finished shard is read back, never recomputed, when the
    scan runs again) and merges the shards in order with `merge_shards`: the result
    equals `scan_corpus`'s for the same device and dtype. `on_progress` receives a
    `RayScanProgress` after each shard. `tokens` (each neuron's token) turns on the
    on-token firings, as in `scan_corpus`.
    """
    import_ray()  # fail first when Ray is missing
    if not neurons:
        raise CorpusError(
            "no neurons to scan; the neurons stage selected none (check --layers "
            "and the token filter)"
        )
    rc = ray_cfg or RayConfig()
    tracked = tuple((int(a), int(b)) for a, b in neurons)
    total_docs = count_documents(spec)  # a missing or empty corpus fails before the cluster
    with ray_session(rc) as ray:
        plan = plan_workers(ray, rc, device)
        wspec = WorkerSpec(model, plan.device, dtype, max(1, int(rc.cpus_per_worker)))
        with WorkerPool[pa.Table](ray, wspec, plan, rc, worker_class) as pool:
            pool.start()
            info = pool.call("model_info")
            assert isinstance(info, ModelInfo)
            log.info("scanning with %d workers on %s (%s)", plan.workers, plan.device, dtype)
            toks = None if tokens is None else tuple(int(t) for t in tokens)
            scan = _Scan(pool, spec, info, tracked, cfg, shards, on_progress, total_docs, toks)
            if scan.done:
                log.info("resuming the scan: %d shards already written", len(scan.done))
            stats = pool.run(scan.tasks(), scan.on_result)
    n = scan.n_shards
    if n == 0:
        raise CorpusError(f"corpus {spec.source!r} has no document with tokens; nothing to scan")
    stale = {j for j in scan.done if j >= n}
    if stale:
        raise CorpusError(
            f"the run directory holds scan shards {sorted(stale)} beyond the corpus's {n} "
            "shards; the corpus changed since the scan started: pass --overwrite scan"
        )
    if stats.retries:
        log.info(
            "%d shards were submitted again after %d worker deaths",
            stats.retries,
            stats.worker_deaths,
        )
    topk, stats_t = merge_shards(
        list(tracked),
        [scan.results[i] for i in range(n)],
        cfg.k,
        cfg.on_token if tokens is not None else 0,
        cfg.on_token_fraction,
    )
    return ScanResult(topk=topk, stats=stats_t, corpus=scan.hasher.result())
