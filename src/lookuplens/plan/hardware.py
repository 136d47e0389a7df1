"""What a machine does per second: a named GPU from a table of published figures, or this
machine's CPU measured by a short micro-benchmark.

A forward pass through one decoder layer costs, in this model of time,

    per-call overhead + matmul FLOPs / matmul rate + activation elements x time per
    element + attention units x time per unit

(on a GPU: the larger of the FLOPs at the dense peak and the weights and activations
read at the memory bandwidth, each times an efficiency factor, plus a launch overhead).
`Machine` holds those rates; `cpu_machine` measures them on this machine with matrices
of the model's own widths (a few hundred milliseconds, cached per process);
`gpu_machine` takes them from `GPUS`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lookuplens.errors import UserError
from lookuplens.plan.shape import ModelShape

__all__ = [
    "GPUS",
    "GPU_BANDWIDTH_EFFICIENCY",
    "GPU_COMPUTE_EFFICIENCY",
    "GPU_LAYER_OVERHEAD_S",
    "GpuSpec",
    "Machine",
    "cpu_machine",
    "gpu_machine",
    "gpu_names",
]


@dataclass(frozen=True)
class GpuSpec:
    """Published figures of one GPU (dense, no sparsity)."""

    name: str
    bf16_tflops: float
    """Dense bf16 tensor-core peak (fp32 accumulate)."""
    fp32_tflops: float
    """fp32 peak without TF32 (PyTorch's default for matmuls in float32)."""
    bandwidth_gbs: float
    """Memory bandwidth, GB/s."""
    memory_gb: float


GPUS: dict[str, GpuSpec] = {
    g.name.lower(): g
    for g in (
        # NVIDIA datasheets (SXM unless named), dense peaks
        GpuSpec("H100", 989.0, 67.0, 3350.0, 80.0),
        GpuSpec("H100-PCIe", 756.0, 51.0, 2000.0, 80.0),
        GpuSpec("H200", 989.0, 67.0, 4800.0, 141.0),
        GpuSpec("A100-40GB", 312.0, 19.5, 1555.0, 40.0),
        GpuSpec("A100-80GB", 312.0, 19.5, 2039.0, 80.0),
        GpuSpec("L40S", 362.0, 91.6, 864.0, 48.0),
        GpuSpec("L4", 121.0, 30.3, 300.0, 24.0),
        GpuSpec("A10G", 70.0, 31.2, 600.0, 24.0),
        GpuSpec("RTX-4090", 165.0, 82.6, 1008.0, 24.0),
    )
}
"""Known GPUs by lower-case name; ``--gpu`` matches case-insensitively, ``_``/space as ``-``."""

GPU_COMPUTE_EFFICIENCY = 0.45
"""Share of the dense peak a Hugging Face forward reaches on large batches (matmuls near
70-80% of peak, the elementwise and attention kernels much less). Not measured here (no
GPU on the machine that wrote this); a typical figure for eager PyTorch."""
GPU_BANDWIDTH_EFFICIENCY = 0.7
"""Share of the memory bandwidth a weight-bound (small-batch) layer reaches."""
GPU_LAYER_OVERHEAD_S = 4e-4
"""Python, hooks and kernel launches per decoder-layer call on a GPU (about 20-30 kernels
of about 10 us each, plus the hooks); a host-side cost that no GPU makes smaller."""


@dataclass(frozen=True)
class Machine:
    """Rates of the machine the stages run on (see the module docstring)."""

    name: str
    kind: str
    """``cpu`` or ``gpu``."""
    matmul_flops: float
    """FLOP/s of float32 matrix multiplications at the model's widths (GPU: bf16 or
    fp32 peak x efficiency, by the run's dtype)."""
    matmul_flops_fp32: float
    """The same in float32 (the attribute stage always runs in float32)."""
    act_s_per_element: float
    """Seconds per element of the MLP activation function."""
    norm_s_per_element: float
    """Seconds per element of a norm (the model of a layer's other elementwise work:
    norms, residual and bias adds, head reshapes, about 6 x d_model per token)."""
    attn_s_per_unit: float
    """Seconds per ``rows x heads x positions^2 x d_head`` of attention."""
    attn_s_per_row_head: float
    """Seconds per ``rows x heads`` of attention besides (masks, softmax set-up)."""
    layer_overhead_s: float
    """Python, hooks and dispatch per decoder-layer call."""
    call_overhead_s: float
    """Per forward call: embedding, masks, the model's own wrapper."""
    bandwidth: float
    """Bytes/s of memory traffic (GPU: weights read per layer call; CPU: host copies)."""
    memory_bytes: float
    """Device memory (GPU) or 0 where not known."""
    scan_slowdown: float = 1.0
    """The scan's layer compute over the other stages' (the scan serves every buffer of
    1 MiB or more on fresh pages, `ScanConfig.bound_heap`)."""
    python_scale: float = 1.0
    """This machine's Python speed against the one the per-item costs were measured on
    (larger: slower)."""
    measured_s: float = 0.0
    """Seconds the micro-benchmark took (0 for a named GPU)."""

    def layer_seconds(
        self,
        shape: ModelShape,
        tokens: float,
        seq: float,
        calls: float,
        fp32: bool = False,
        dtype_bytes: int = 4,
    ) -> float:
        """Seconds for `calls` decoder-layer calls over `tokens` (padded) tokens in all and
        attention over `seq` positions."""
        rate = self.matmul_flops_fp32 if fp32 else self.matmul_flops
        flops = 2.0 * shape.layer_matmul_params * tokens
        act = tokens * shape.d_mlp * (2 if shape.gated_mlp else 1)
        other = tokens * 6 * shape.d_model
        compute = (
            flops / rate
            + act * self.act_s_per_element
            + other * self.norm_s_per_element
            + tokens * seq * shape.n_heads * shape.d_head * self.attn_s_per_unit
            + tokens / max(seq, 1.0) * shape.n_heads * self.attn_s_per_row_head
        )
        if self.kind == "gpu":
            width = 4 if fp32 else dtype_bytes
            weights = calls * shape.layer_params * width
            moved = weights + (act + other) * width * 3
            compute = max(compute, moved / self.bandwidth)
        return compute + calls * self.layer_overhead_s


def gpu_names() -> list[str]:
    return [g.name for g in GPUS.values()]


def _gpu_key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def find_gpu(name: str) -> GpuSpec:
    """The table entry of a GPU name (``h100``, ``A100-80GB``, ``rtx 4090``), or a
    `UserError` listing the known ones."""
    key = _gpu_key(name)
    aliases = {"a100": "a100-80gb", "4090": "rtx-4090", "h100-sxm": "h100", "h200-sxm": "h200"}
    key = aliases.get(key, key)
    if key in GPUS:
        return GPUS[key]
    raise UserError(f"unknown GPU {name!r}; known: {', '.join(gpu_names())}")


def local_gpu_name() -> str | None:
    """The name of this machine's first CUDA device, if there is one."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # pragma: no cover - a broken CUDA install
        return None
    return None


def match_gpu(device_name: str) -> GpuSpec | None:
    """The table entry a CUDA device name (``NVIDIA H100 80GB HBM3``) matches, if any."""
    low = device_name.lower()
    if "h200" in low:
        return GPUS["h200"]
    if "h100" in low:
        return GPUS["h100-pcie"] if "pcie" in low else GPUS["h100"]
    if "a100" in low:
        return GPUS["a100-40gb"] if "40" in low else GPUS["a100-80gb"]
    for key, g in GPUS.items():
        if key.replace("rtx-", "") in low.replace(" ", "-"):
            return g
    return None


def gpu_machine(gpu: GpuSpec, dtype: str) -> Machine:
    """Rates of a named GPU running the model in `dtype` (bf16/fp16 use the tensor-core
    peak, float32 the fp32 peak)."""
    half = dtype in ("bfloat16", "float16")
    peak = (gpu.bf16_tflops if half else gpu.fp32_tflops) * 1e12
    fp32 = gpu.fp32_tflops * 1e12
    # elementwise work and attention move memory: ~3 tensors of 2-4 bytes per element
    elem = 12.0 / (gpu.bandwidth_gbs * 1e9 * GPU_BANDWIDTH_EFFICIENCY)
    return Machine(
        name=gpu.name,
        kind="gpu",
        matmul_flops=peak * GPU_COMPUTE_EFFICIENCY,
        matmul_flops_fp32=fp32 * GPU_COMPUTE_EFFICIENCY,
        act_s_per_element=elem,
        norm_s_per_element=elem,
        attn_s_per_unit=4.0 / (peak * GPU_COMPUTE_EFFICIENCY),
        attn_s_per_row_head=0.0,
        layer_overhead_s=GPU_LAYER_OVERHEAD_S,
        call_overhead_s=5 * GPU_LAYER_OVERHEAD_S,
        bandwidth=gpu.bandwidth_gbs * 1e9 * GPU_BANDWIDTH_EFFICIENCY,
        memory_bytes=gpu.memory_gb * 1e9,
    )


def _timed(fn: Callable[[], object], budget_s: float = 0.12, min_reps: int = 3) -> float:
    """The median time of repeated calls of `fn` (at least `min_reps`, for about
    `budget_s`): on a machine other jobs share, the median is what a stage sees."""
    fn()  # warm-up: allocation, dispatch caches
    times: list[float] = []
    while len(times) < min_reps or sum(times) < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 40:
            break
    times.sort()
    return times[len(times) // 2]


REFERENCE_LAYER_OVERHEAD_S = 1.6e-4
"""The per-layer overhead `cpu_machine` measured for the bundled GPT-2 models on the
2-core machine where the per-item costs of `lookuplens.plan.work` were measured; the
ratio to this machine's scales those costs."""


def layer_matmuls(shape: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of each matrix multiplication of one decoder layer."""
    d, m = shape.d_model, shape.d_mlp
    q, kv = shape.n_heads * shape.d_head, shape.n_kv_heads * shape.d_head
    if shape.gated_mlp:
        return [(d, q), (d, kv), (d, kv), (q, d), (d, m), (d, m), (m, d)]
    return [(d, 3 * d), (d, d), (d, m), (m, d)]


def cpu_machine(shape: ModelShape) -> Machine:
    """This machine's CPU, measured at the model's widths (cached per process)."""
    act = "silu" if shape.gated_mlp else ("gelu_new" if shape.model_type == "gpt2" else "gelu")
    return _cpu_machine(
        shape.model_type,
        tuple(layer_matmuls(shape)),
        shape.d_model,
        shape.d_mlp,
        shape.n_heads,
        shape.d_head,
        act,
    )


MAX_BENCH_ROWS = 8192
"""Rows of the benchmark's matmuls: the prompts stages' batches (8,192 tokens)."""
MAX_BENCH_WEIGHT = 2048 * 4096
"""Weights per benchmarked matmul at most (32 MiB); a wider one is measured at a
narrower shape of the same aspect (its rate is near the machine's peak either way)."""


@dataclass(frozen=True)
class _Suite:
    matmul_flops: float
    act_s: float
    norm_s: float
    seconds: float
    """The suite's time in all (matmuls, activation, norm)."""


def _suite(matmuls: tuple[tuple[int, int], ...], d_model: int, d_mlp: int, act: str) -> _Suite:
    """The layer's own matmuls (with bias, on a batch of up to `MAX_BENCH_ROWS` rows,
    ~4M outputs and ~0.5 GFLOP at most), its MLP activation on ~4M elements, and a
    norm."""
    import torch

    g = torch.Generator().manual_seed(0)
    flops = t_mm = 0.0
    with torch.no_grad():
        for n_in, n_out in matmuls:
            shrink = max(1.0, (n_in * n_out / MAX_BENCH_WEIGHT) ** 0.5)
            k, n = max(8, int(n_in / shrink)), max(8, int(n_out / shrink))
            rows = max(64, min(MAX_BENCH_ROWS, (1 << 22) // n, (1 << 28) // (k * n)))
            x = torch.randn(rows, k, generator=g)
            w = torch.randn(k, n, generator=g)
            bias = torch.randn(n, generator=g)
            t_mm += _timed(functools.partial(torch.addmm, bias, x, w))
            flops += 2.0 * rows * k * n
        d = min(d_model, 2048)
        m = min(d_mlp, 4096)
        rows = max(64, (1 << 22) // m)  # ~4M elements: the size of a real batch's MLP
        act_fn = _activation(act)
        y = torch.randn(rows, m, generator=g)
        t_act = _timed(lambda: act_fn(y))
        z = torch.randn(rows * m // d, d, generator=g)
        ln = torch.nn.LayerNorm(d)
        t_norm = _timed(lambda: ln(z))
    return _Suite(flops / t_mm, t_act / (rows * m), t_norm / z.numel(), t_mm + t_act + t_norm)


@functools.cache
def _cpu_machine(
    model_type: str,
    matmuls: tuple[tuple[int, int], ...],
    d_model: int,
    d_mlp: int,
    n_heads: int,
    d_head: int,
    act: str,
) -> Machine:
    """This machine's CPU at these widths (`_suite`, attention, and a tiny model's forward
    for the per-call overhead). The suite runs twice: with the scan's allocator setting
    (`lookuplens.scan.bound_native_heap`: every buffer of 1 MiB or more on fresh pages),
    then with the setting the scan leaves for the later stages, as in a run."""
    import torch

    from lookuplens.scan import RELEASED_MMAP_THRESHOLD, bound_native_heap

    t_start = time.perf_counter()
    bounded = bound_native_heap()
    scan_suite = _suite(matmuls, d_model, d_mlp, act)
    if bounded:
        bound_native_heap(RELEASED_MMAP_THRESHOLD)
    suite = _suite(matmuls, d_model, d_mlp, act)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        f_sdpa = torch.nn.functional.scaled_dot_product_attention
        per_row: list[float] = []
        for p in (32, 128):
            b = max(1, 4096 // p)
            q = torch.randn(b, n_heads, p, min(d_head, 256), generator=g)
            mask = torch.ones(b, 1, p, p, dtype=torch.bool).tril()
            t = _timed(functools.partial(f_sdpa, q, q, q, attn_mask=mask))
            per_row.append(t / (b * n_heads))
        # per (row, head): c0 + c1 x p^2 x d_head, through the two widths
        dh = min(d_head, 256)
        attn_unit = max((per_row[1] - per_row[0]) / ((128**2 - 32**2) * dh), 1e-13)
        attn_row = max(per_row[0] - attn_unit * 32**2 * dh, 0.0)
    layer_s, call_s = _overhead(model_type)
    return Machine(
        name="this machine's CPU",
        kind="cpu",
        matmul_flops=suite.matmul_flops,
        matmul_flops_fp32=suite.matmul_flops,
        act_s_per_element=suite.act_s,
        norm_s_per_element=suite.norm_s,
        attn_s_per_unit=attn_unit,
        attn_s_per_row_head=attn_row,
        layer_overhead_s=layer_s,
        call_overhead_s=call_s,
        bandwidth=_copy_bandwidth(),
        memory_bytes=0.0,
        python_scale=max(layer_s / REFERENCE_LAYER_OVERHEAD_S, 0.25),
        scan_slowdown=max(scan_suite.seconds / suite.seconds, 1.0) if bounded else 1.0,
        measured_s=time.perf_counter() - t_start,
    )


def _activation(name: str) -> Callable[[object], object]:
    try:
        from transformers.activations import ACT2FN

        fn = ACT2FN[name]
    except (ImportError, KeyError):
        import torch

        fn = torch.nn.functional.gelu
    return fn  # type: ignore[no-any-return]


def _forward_of(lm: Any, ids: Any, n_layers: int) -> Callable[[], object]:
    name = f"blocks.{n_layers - 1}.mlp.hook_post"
    return lambda: lm.run_with_cache(ids, [name], stop_after_layer=n_layers - 1)


def _copy_bandwidth() -> float:
    import torch

    a = torch.ones(1 << 22, dtype=torch.float64)  # 32 MiB
    t = _timed(lambda: a.mul(1.0001), budget_s=0.05)
    return 2 * a.numel() * 8 / t  # read and write


@functools.cache
def _overhead(model_type: str) -> tuple[float, float]:
    """Seconds per decoder-layer call and per forward call of the adapter on this CPU:
    forwards of a 1-layer and a 5-layer tiny model of the family (width 32, 8 tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lookuplens.model.loading import from_hf
    from lookuplens.model.tiny import tiny_config

    family = {"gpt_neox": "gpt_neox"}.get(model_type, model_type)
    if family not in ("gpt2", "gpt_neox", "llama", "mistral", "qwen2"):
        family = "llama"
    times = []
    ids = torch.zeros(2, 8, dtype=torch.long)
    for n_layers in (1, 5):
        cfg = tiny_config(family, vocab_size=64, n_layers=n_layers)
        torch.manual_seed(0)
        lm = from_hf(AutoModelForCausalLM.from_config(cfg), None, "bench")
        times.append(_timed(_forward_of(lm, ids, n_layers), budget_s=0.08, min_reps=5))
    per_layer = max((times[1] - times[0]) / 4, 1e-5)
    return per_layer, max(times[0] - per_layer, 1e-5)
