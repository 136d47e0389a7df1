"""The attribute stage on a Ray cluster (see `lookuplens.distributed`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pyarrow as pa

from lookuplens.attribute import AttributeConfig, concat_attributions, plan_batches
from lookuplens.distributed.cluster import (
    Task,
    WorkerPool,
    import_ray,
    plan_workers,
    ray_session,
)
from lookuplens.distributed.config import RayConfig
from lookuplens.distributed.worker import ShardWorker, WorkerSpec
from lookuplens.store import ShardStore

log = logging.getLogger(__name__)

ATTRIBUTION_DTYPE = "float32"
"""Attribution always runs in float32: the direct decomposition must close."""


def attribute_examples_ray(
    model: str,
    examples: pa.Table,
    cfg: AttributeConfig,
    ray_cfg: RayConfig | None = None,
    *,
    device: str = "auto",
    shards: ShardStore | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    worker_class: type[ShardWorker] = ShardWorker,
) -> pa.Table:
    """`lookuplens.attribute.attribute_examples` with the batches attributed by Ray workers.

    The batches are those of the local backend (`plan_batches`: examples grouped by
    neuron layer, `cfg.batch_examples` at a time), numbered as the stage's shards; each
    finished batch is written to `shards` and never recomputed. With the mean ablation,
    one worker first computes the heads' mean outputs over all prompts, which every
    batch then uses. Workers load `model` in float32 whatever dtype the scan used.
    `on_progress(done, total)` is called after each batch. The table equals
    `attribute_examples`'s for the same device.
    """
    import_ray()  # fail first when Ray is missing
    rc = ray_cfg or RayConfig()
    prompts, batches = plan_batches(examples, cfg)
    done = shards.done() if shards is not None else set()
    parts: dict[int, pa.Table] = {}

    def report() -> None:
        if on_progress is not None:
            on_progress(len(parts), len(batches))

    if shards is not None:
        for i in sorted(done):
            if i < len(batches):
                parts[i] = shards.read(i)
                report()
    todo = [i for i in range(len(batches)) if i not in parts]
    if done:
        log.info("resuming attribution: %d of %d batches already written", len(parts), len(batches))
    if todo:
        with ray_session(rc) as ray:
            plan = plan_workers(ray, rc, device)
            wspec = WorkerSpec(
                model, plan.device, ATTRIBUTION_DTYPE, max(1, int(rc.cpus_per_worker))
            )
            with WorkerPool[pa.Table](ray, wspec, plan, rc, worker_class) as pool:
                pool.start()
                means = None
                if "mean_ablation" in cfg.methods and prompts:
                    max_layer = max(b.layer for b in batches)
                    means = ray.put(pool.call("head_means", prompts, max_layer, cfg.batch_examples))
                log.info(
                    "attributing %d batches with %d workers on %s",
                    len(todo),
                    plan.workers,
                    plan.device,
                )

                def tasks() -> Iterator[Task]:
                    for i in todo:
                        yield Task(i, "attribute", (i, batches[i], cfg, means))

                def on_result(i: int, table: pa.Table) -> None:
                    if i in parts:  # never expected: the dispatcher takes each batch once
                        return
                    if shards is not None:
                        shards.write(i, table)
                    parts[i] = table
                    report()

                pool.run(tasks(), on_result)
    return concat_attributions([parts[i] for i in range(len(batches))])
