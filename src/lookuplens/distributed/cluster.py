"""Connecting to a Ray cluster, starting the workers, and handing them shards.

`WorkerPool.run` is the fault-tolerant dispatcher both stages use: it pulls tasks
lazily from an iterator (so the driver prepares a shard only when a worker can take
it), keeps at most `RayConfig.inflight_per_worker` shards queued on each worker, and
hands each result to a callback. A task whose worker died (its process exited, its node
was lost) is submitted again, first in line, to whichever worker is free next: Ray
restarts the dead worker (up to `RayConfig.max_restarts` times), which reloads the
model. Each shard's result is taken once (by shard number), so a retry neither loses
nor duplicates a shard. An exception raised by the worker's own code is not retried: a
lookuplens error is raised again as it is, anything else as a `ShardFailedError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Generic, TypeVar

from lookuplens.distributed.config import RayConfig
from lookuplens.distributed.errors import ClusterError, RayUnavailableError, ShardFailedError
from lookuplens.distributed.worker import ShardWorker, WorkerInfo, WorkerSpec
from lookuplens.errors import LookuplensError

if TYPE_CHECKING:
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

T = TypeVar("T")

_PROBE_INTERVAL_S = 0.5
"""How often a restarting worker is asked whether it is back."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or a RayUnavailableError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(
            "the ray backend needs Ray, an optional extra: pip install 'lookuplens[ray]' "
            "(or run with --backend local)"
        ) from e
    return ray


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[ModuleType]:
    """Use Ray as initialised in this process, or connect to / start a cluster for the block.

    The cluster address is `cfg.address`, else ``RAY_ADDRESS``; without either a local
    cluster is started with ``cfg.workers * cfg.cpus_per_worker`` CPUs (all CPUs when
    `cfg.workers` is None). A cluster this function connected to or started is left
    (and a started one shut down) when the block ends; wrap several stages in one
    ``with ray_session(...)`` to share it.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, log_to_driver=cfg.log_to_driver)
        else:
            cpus = (
                math.ceil(cfg.workers * cfg.cpus_per_worker)
                if cfg.workers is not None
                else os.cpu_count() or 1
            )
            log.info("starting a local Ray cluster with %d CPUs", cpus)
            ray.init(
                address="local",
                # a local cluster listens on loopback only, never on the machine's network
                _node_ip_address="127.0.0.1",
                num_cpus=cpus,
                object_store_memory=cfg.object_store_memory,
                include_dashboard=False,
                log_to_driver=cfg.log_to_driver,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise ClusterError(
            f"cannot connect to {where} ({type(e).__name__}: {e}); start one with "
            "'ray start --head' and pass its address (--ray-address or RAY_ADDRESS), or "
            "unset RAY_ADDRESS to start a local cluster"
        ) from e
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers, on which device, with which resources."""

    workers: int
    device: str
    """``cuda`` or ``cpu``: what each worker loads its model on."""
    num_cpus: float
    num_gpus: float


def plan_workers(ray: ModuleType, cfg: RayConfig, device: str) -> WorkerPlan:
    """Workers and per-worker resources for `device` (auto, cpu, cuda) on this cluster.

    ``auto`` and ``cuda`` put each worker on a GPU (`cfg.gpus_per_worker`) when the
    cluster has GPUs; ``auto`` falls back to CPU workers when it has none, ``cuda``
    raises a ClusterError.
    """
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ClusterError(f"unknown device {device!r}; use auto, cpu or cuda")
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0.0))
    cpus = float(res.get("CPU", 0.0))
    use_gpu = device != "cpu" and gpus > 0
    if device.startswith("cuda") and not use_gpu:
        raise ClusterError(
            f"device {device!r} was asked for but the Ray cluster has no GPUs; add GPU "
            "nodes (ray start --num-gpus N) or run with --device cpu or auto"
        )
    if use_gpu:
        fit = int(gpus // cfg.gpus_per_worker)
        what = f"{gpus:g} GPUs at {cfg.gpus_per_worker:g} per worker"
    else:
        fit = int(cpus // cfg.cpus_per_worker)
        what = f"{cpus:g} CPUs at {cfg.cpus_per_worker:g} per worker"
    if fit < 1:
        raise ClusterError(
            f"the Ray cluster cannot hold one worker ({what}); add nodes or lower "
            "cpus_per_worker / gpus_per_worker"
        )
    workers = cfg.workers if cfg.workers is not None else fit
    if workers > fit:
        log.warning(
            "%d workers asked for, but the cluster has room for %d (%s); the rest wait "
            "for resources until start_timeout_s",
            workers,
            fit,
            what,
        )
    return WorkerPlan(
        workers=workers,
        device="cuda" if use_gpu else "cpu",
        num_cpus=cfg.cpus_per_worker,
        num_gpus=cfg.gpus_per_worker if use_gpu else 0.0,
    )


@dataclass(frozen=True)
class Task:
    """One call of a worker method; `key` numbers the result (the shard index)."""

    key: int
    method: str
    args: tuple[object, ...]


@dataclass(frozen=True)
class DispatchStats:
    """What a `WorkerPool.run` did."""

    completed: int
    """Tasks whose results were handed over."""
    retries: int
    """Tasks submitted again because their worker died."""
    worker_deaths: int
    """Worker process deaths seen (each one restarts the worker, within max_restarts)."""


@dataclass
class _Slot:
    handle: ActorHandle
    number: int
    load: int = 0
    alive: bool = True
    recovering: bool = False  # lost a task; no new work until a probe call answers
    lost_at: float = 0.0
    probe_at: float = 0.0  # when to send the next probe (while recovering)
    generation: int = 0  # deaths seen; a task lost with an older generation adds none


class WorkerPool(Generic[T]):
    """Worker actors of one stage; close it (or use it as a context manager) to stop them."""

    def __init__(
        self,
        ray: ModuleType,
        spec: WorkerSpec,
        plan: WorkerPlan,
        cfg: RayConfig,
        worker_class: type[ShardWorker] = ShardWorker,
    ) -> None:
        self.ray = ray
        self.cfg = cfg
        self.plan = plan
        actor = ray.remote(worker_class).options(
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            max_restarts=cfg.max_restarts,
            max_task_retries=0,  # retries are the dispatcher's, shard by shard
            scheduling_strategy="SPREAD",
        )
        self.slots = [_Slot(actor.remote(spec), i) for i in range(plan.workers)]
        self.infos: list[WorkerInfo] = []
        self.retries = 0
        """Tasks submitted again because their worker died (over every `run`)."""
        self.deaths = 0
        """Worker deaths seen (over every `run`)."""

    def __enter__(self) -> WorkerPool[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> int:
        return sum(s.alive for s in self.slots)

    def start(self) -> list[WorkerInfo]:
        """Wait until every worker has loaded the model; raise its loading error if any."""
        ray = self.ray
        refs = [s.handle.info.remote() for s in self.slots]
        try:
            self.infos = list(ray.get(refs, timeout=self.cfg.start_timeout_s))
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"{self.plan.workers} workers did not start within {self.cfg.start_timeout_s:g}"
                f" s; the cluster may lack the resources asked ({self.plan.num_cpus:g} CPUs, "
                f"{self.plan.num_gpus:g} GPUs per worker): ask for fewer workers, or raise "
                "start_timeout_s for a slow model load"
            ) from None
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e, "starting a worker") from None
        except ray.exceptions.RayActorError as e:
            raise ClusterError(
                f"a worker died while starting ({e}); check that lookuplens and the model "
                "are installed on every node of the cluster"
            ) from e
        for info in self.infos:
            log.info("worker pid %d on %s: %s, %s", info.pid, info.host, info.device, info.dtype)
        return self.infos

    def call(self, method: str, *args: object) -> object:
        """One call on any worker, with the same retries as `run`."""
        out: list[object] = []
        self.run([Task(0, method, args)], lambda _k, v: out.append(v))
        return out[0]

    def run(self, tasks: Iterable[Task], on_result: Callable[[int, T], None]) -> DispatchStats:
        """Run `tasks` (pulled lazily) on the workers; `on_result(key, value)` per task.

        A worker that lost a task gets no new work until it answers a probe call again
        (Ray restarts it meanwhile, reloading the model); a worker Ray reports dead for
        good, or that does not answer within `RayConfig.start_timeout_s`, is dropped.
        """
        ray = self.ray
        exc = ray.exceptions
        lost = (exc.RayActorError, exc.ObjectLostError, exc.WorkerCrashedError)
        source = iter(tasks)
        exhausted = False
        retry: deque[Task] = deque()
        inflight: dict[object, tuple[Task, _Slot, int]] = {}
        probes: dict[object, _Slot] = {}
        attempts: dict[int, int] = {}
        completed = retries = deaths = 0
        while True:
            while True:
                slot = self._free_slot()
                if slot is None:
                    break
                if retry:
                    task = retry.popleft()
                elif not exhausted:
                    nxt = next(source, None)
                    if nxt is None:
                        exhausted = True
                        break
                    task = nxt
                else:
                    break
                attempts[task.key] = attempts.get(task.key, 0) + 1
                ref = getattr(slot.handle, task.method).remote(*task.args)
                slot.load += 1
                inflight[ref] = (task, slot, slot.generation)
            now = time.monotonic()
            for slot in self.slots:
                if not (slot.alive and slot.recovering) or slot in probes.values():
                    continue
                if now - slot.lost_at > self.cfg.start_timeout_s:
                    slot.alive = False
                    log.warning(
                        "worker %d did not come back within %g s; %d workers left",
                        slot.number,
                        self.cfg.start_timeout_s,
                        self.alive,
                    )
                elif now >= slot.probe_at:
                    probes[slot.handle.info.remote()] = slot
            if not inflight and not retry and exhausted:
                break
            if not any(s.alive for s in self.slots):
                raise ShardFailedError(
                    "every worker died for good (each was restarted up to "
                    f"max_restarts={self.cfg.max_restarts} times); finished shards are kept: "
                    "look for the cause in the Ray logs (/tmp/ray/session_latest/logs; out of "
                    "memory?) and run again"
                )
            if not inflight and not probes:
                time.sleep(_PROBE_INTERVAL_S)  # every live worker waits for its next probe
                continue
            ready, _ = ray.wait([*inflight, *probes], num_returns=1, timeout=_PROBE_INTERVAL_S)
            for ref in ready:
                if ref in probes:
                    self._probed(probes.pop(ref), ref)
                    continue
                task, slot, gen = inflight.pop(ref)
                slot.load -= 1
                try:
                    value = ray.get(ref)
                except lost as e:
                    if slot.alive and gen == slot.generation:
                        slot.generation += 1
                        deaths += 1
                        self.deaths += 1
                        slot.recovering = True
                        slot.lost_at = slot.probe_at = time.monotonic()
                    if attempts[task.key] >= self.cfg.max_attempts:
                        raise ShardFailedError(
                            f"shard {task.key} lost its worker on all {attempts[task.key]} "
                            f"attempts ({type(e).__name__}); finished shards are kept: look "
                            "for the cause in the Ray logs (/tmp/ray/session_latest/logs; out "
                            "of memory?), then run again or raise max_attempts"
                        ) from e
                    log.warning(
                        "shard %d lost its worker %d (%s); submitting it again",
                        task.key,
                        slot.number,
                        type(e).__name__,
                    )
                    retries += 1
                    self.retries += 1
                    retry.append(task)
                    continue
                except exc.RayTaskError as e:
                    raise _unwrap(e, f"shard {task.key}") from None
                on_result(task.key, value)
                completed += 1
        return DispatchStats(completed, retries, deaths)

    def _probed(self, slot: _Slot, ref: object) -> None:
        exc = self.ray.exceptions
        try:
            self.ray.get(ref)
        except exc.ActorUnavailableError:  # still restarting: ask again a little later
            slot.probe_at = time.monotonic() + _PROBE_INTERVAL_S
            return
        except exc.RayActorError:
            slot.alive = False
            log.warning("worker %d died for good; %d workers left", slot.number, self.alive)
            return
        except exc.RayTaskError as e:  # restarted, but its model failed to load
            raise _unwrap(e, f"restarting worker {slot.number}") from None
        slot.recovering = False
        log.info("worker %d is back", slot.number)

    def _free_slot(self) -> _Slot | None:
        free = [
            s
            for s in self.slots
            if s.alive and not s.recovering and s.load < self.cfg.inflight_per_worker
        ]
        return min(free, key=lambda s: (s.load, s.number)) if free else None

    def close(self) -> None:
        """Stop every worker (what they computed is already with the driver)."""
        for s in self.slots:
            with contextlib.suppress(Exception):
                self.ray.kill(s.handle, no_restart=True)


def _unwrap(err: Exception, what: str) -> Exception:
    cause = getattr(err, "cause", None)
    if isinstance(cause, LookuplensError):
        return cause
    name = type(cause).__name__ if cause is not None else type(err).__name__
    msg = str(cause) if cause is not None else str(err)
    return ShardFailedError(
        f"{what} failed on a worker: {name}: {msg.splitlines()[0] if msg else ''}; finished "
        "shards are kept: fix the cause (for out of memory, lower batch_tokens or "
        "batch_examples, or use fewer workers per GPU) and run again"
    )
