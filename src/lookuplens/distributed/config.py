"""Settings of the Ray backend."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RayConfig:
    """Where the workers run and how faults are handled."""

    address: str | None = None
    """Address of a running cluster (``auto``, ``HOST:6379`` or ``ray://HOST:10001``). None
    uses ``RAY_ADDRESS`` when it is set, else starts a local cluster on this machine. When
    Ray is already initialised in this process, that cluster is used as it is."""
    workers: int | None = None
    """Worker actors, each holding one copy of the model. None: one per GPU of the cluster
    (GPU runs), else one per `cpus_per_worker` CPUs of the cluster."""
    cpus_per_worker: float = 1.0
    """CPUs reserved by each worker; a CPU worker runs torch with this many threads."""
    gpus_per_worker: float = 1.0
    """GPUs reserved by each worker on a GPU run (a fraction packs several small models
    onto one GPU)."""
    max_restarts: int = 2
    """How often Ray restarts a worker whose process died (it reloads the model)."""
    max_attempts: int = 3
    """Attempts per shard before the run fails (a shard is retried when its worker dies)."""
    inflight_per_worker: int = 2
    """Shards queued on each worker at once (2 keeps a worker busy while the driver
    prepares the next shard; memory on the driver grows with it)."""
    start_timeout_s: float = 600.0
    """Seconds to wait for the workers to start and load the model; a cluster that cannot
    place them (too few CPUs or GPUs) fails with a ClusterError after this."""
    object_store_memory: int | None = None
    """Object store bytes of a local cluster started here (None: Ray's default)."""
    log_to_driver: bool = False
    """Forward the workers' stdout and stderr to this process."""

    def __post_init__(self) -> None:
        if self.address is not None and not re.fullmatch(
            r"auto|local|(ray://)?[^\s:/]+:\d+", self.address
        ):
            raise ValueError(
                f"address must be auto, local, HOST:PORT or ray://HOST:PORT; got {self.address!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1 (or None for all), got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker <= 0 or (
            self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker)
        ):
            raise ValueError(
                "gpus_per_worker must be a fraction in (0, 1] or a whole number of GPUs, got "
                f"{self.gpus_per_worker}"
            )
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be 0 or more, got {self.max_restarts}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.inflight_per_worker < 1:
            raise ValueError(
                f"inflight_per_worker must be at least 1, got {self.inflight_per_worker}"
            )
        if self.start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s must be positive, got {self.start_timeout_s}")
