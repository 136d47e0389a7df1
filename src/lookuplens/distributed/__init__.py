"""Scan and attribution on a Ray cluster: one model copy per worker, GPUs when present.

``scan_corpus_ray`` and ``attribute_examples_ray`` are drop-in backends of the scan and
attribute stages. The driver (the process that calls them) reads, tokenises and
hashes the corpus (so run.json's fingerprint is the local backend's), cuts it into the
same shards as the local backend, and sends each shard, as numpy arrays, to a worker
actor; the worker returns the shard's table, the driver writes it to the run
directory's shard store and, at the end, merges the shards in shard order with the
same functions the local backend uses. Shard boundaries, the batching inside a shard
and the merge order are the local backend's, so on the same device and dtype the
tables are identical, whatever the number of workers.

Cluster
    `RayConfig.address`, else ``RAY_ADDRESS``, names a running cluster (``ray start
    --head`` on one node, ``ray start --address HEAD:6379`` on the others); without
    either, a local cluster is started for the call. Every node needs lookuplens and
    the model folder (same path) installed.

Devices and precision
    ``device="auto"`` gives each worker a GPU of its own (`RayConfig.gpus_per_worker`,
    fractions allowed) when the cluster has GPUs, else a CPU worker
    (`RayConfig.cpus_per_worker` threads); ``"cuda"`` requires GPUs; ``"cpu"`` never uses
    them. The scan's forward passes may run in reduced precision (``dtype`` float32,
    bfloat16 or float16: activations are read in that precision, then ranked and summed
    in float64). Attribution always loads the model in float32, whatever the dtype
    asked for: the direct decomposition must close (its terms sum to the neuron's
    pre-activation), and the ablation differences are small differences of large
    activations. Results are identical to the local backend's only for the same device
    and dtype.

Faults
    A worker whose process dies (killed, out of memory, its node lost) is restarted by
    Ray (`RayConfig.max_restarts`, reloading the model), and the shards it held are
    submitted again, to whichever worker is free (`RayConfig.max_attempts` per shard).
    Results are keyed by shard number and each is taken once, so no example is lost or
    counted twice. Every finished shard is written atomically to the run directory, so
    a restarted driver reads finished shards back and computes only the rest. An error
    raised by lookuplens inside a worker (a bad input) is raised again in the driver
    with its type; other worker errors become a `ShardFailedError`.

Nothing here imports Ray until a function is called; without Ray installed, the
functions raise `RayUnavailableError` with the install command.
"""

from lookuplens.distributed.attribute import ATTRIBUTION_DTYPE, attribute_examples_ray
from lookuplens.distributed.cluster import (
    DispatchStats,
    Task,
    WorkerPlan,
    WorkerPool,
    import_ray,
    plan_workers,
    ray_session,
)
from lookuplens.distributed.config import RayConfig
from lookuplens.distributed.errors import ClusterError, RayUnavailableError, ShardFailedError
from lookuplens.distributed.scan import RayScanProgress, scan_corpus_ray
from lookuplens.distributed.worker import (
    ModelInfo,
    ShardWorker,
    TokenShard,
    WorkerInfo,
    WorkerSpec,
)

__all__ = [
    "ATTRIBUTION_DTYPE",
    "ClusterError",
    "DispatchStats",
    "ModelInfo",
    "RayConfig",
    "RayScanProgress",
    "RayUnavailableError",
    "ShardFailedError",
    "ShardWorker",
    "Task",
    "TokenShard",
    "WorkerInfo",
    "WorkerPlan",
    "WorkerPool",
    "WorkerSpec",
    "attribute_examples_ray",
    "import_ray",
    "plan_workers",
    "ray_session",
    "scan_corpus_ray",
]
