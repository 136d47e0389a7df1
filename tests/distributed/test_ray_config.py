"""Ray backend settings and the missing-Ray error: these run without Ray installed."""

from __future__ import annotations

import sys

import pytest

from lookuplens.corpus import CorpusSpec
from lookuplens.distributed import RayConfig, RayUnavailableError, scan_corpus_ray
from lookuplens.scan import ScanConfig


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"cpus_per_worker": 0},
        {"gpus_per_worker": 1.5},
        {"gpus_per_worker": 0},
        {"max_restarts": -1},
        {"max_attempts": 0},
        {"inflight_per_worker": 0},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RayConfig(**kwargs)  # type: ignore[arg-type]


def test_fractional_and_whole_gpus_are_accepted() -> None:
    assert RayConfig(gpus_per_worker=0.25).gpus_per_worker == 0.25
    assert RayConfig(gpus_per_worker=2).gpus_per_worker == 2


def test_importing_the_package_does_not_import_ray() -> None:
    import subprocess

    code = "import sys, lookuplens.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_ray_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(RayUnavailableError, match=r"lookuplens\[ray\]"):
        scan_corpus_ray("gpt2", [(0, 0)], CorpusSpec("storyworld"), ScanConfig())


class _Cluster:
    """What `plan_workers` asks of Ray: a cluster of `gpus` GPUs and 32 CPUs."""

    def __init__(self, gpus: float) -> None:
        self.gpus = gpus

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 32.0, "GPU": self.gpus} if self.gpus else {"CPU": 32.0}


def test_gpu_workers_get_a_gpu_each_and_load_on_cuda_in_the_asked_dtype() -> None:
    from types import SimpleNamespace

    from lookuplens.distributed import plan_workers
    from lookuplens.distributed.cluster import WorkerPool
    from lookuplens.distributed.worker import WorkerSpec

    half = RayConfig(gpus_per_worker=0.5)
    for device in ("auto", "cuda", "cuda:1"):
        plan = plan_workers(_Cluster(4), half, device)  # type: ignore[arg-type]
        # Ray sets CUDA_VISIBLE_DEVICES per worker: each loads on "cuda", its own GPU
        assert (plan.device, plan.workers, plan.num_gpus) == ("cuda", 8, 0.5), device
    cpu = plan_workers(_Cluster(4), RayConfig(cpus_per_worker=4), "cpu")  # type: ignore[arg-type]
    assert (cpu.device, cpu.workers, cpu.num_gpus) == ("cpu", 8, 0.0)

    # the pool asks Ray for the plan's GPUs and hands every worker the spec
    options: dict[str, object] = {}
    specs: list[object] = []

    def remote(spec: object) -> object:
        specs.append(spec)
        return SimpleNamespace()

    def with_options(**kw: object) -> object:
        options.update(kw)
        return SimpleNamespace(remote=remote)

    ray = SimpleNamespace(remote=lambda cls: SimpleNamespace(options=with_options))
    plan = plan_workers(_Cluster(2), RayConfig(), "cuda")  # type: ignore[arg-type]
    spec = WorkerSpec("model", plan.device, "bfloat16", 1)
    WorkerPool(ray, spec, plan, RayConfig())  # type: ignore[arg-type]
    assert options["num_gpus"] == 1.0 and specs == [spec, spec]
