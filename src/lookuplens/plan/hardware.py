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
    layer_overhead_s: float
    """Python, hooks and dispatch per decoder-layer call."""
    call_overhead_s: float
    """Per forward call: embedding, masks, the model's own wrapper."""
    bandwidth: float
    """Bytes/s of memory traffic (GPU: weights read per layer call; CPU: host copies)."""
    memory_bytes: float
    """Device memory (GPU) or 0 where not known."""
    python_scale: float = 1.0
    """This machine's Python speed against the one the per-item costs were measured on
    (larger: slower)."""
    measured_s: float = 0.0
    """Seconds the micro-benchmark took (0 for a named GPU)."""

    def layer_seconds(
        self,
        shape: ModelShape,
        tokens: float,
        attn_units: float,
        calls: float,
        fp32: bool = False,
        dtype_bytes: int = 4,
    ) -> float:
        """Seconds for `calls` decoder-layer calls over `tokens` (padded) tokens in all and
        `attn_units` of attention."""
        rate = self.matmul_flops_fp32 if fp32 else self.matmul_flops
        flops = 2.0 * shape.layer_matmul_params * tokens
        act = tokens * shape.d_mlp * (2 if shape.gated_mlp else 1)
        other = tokens * 6 * shape.d_model
        compute = (
            flops / rate
            + act * self.act_s_per_element
            + other * self.norm_s_per_element
            + attn_units * self.attn_s_per_unit
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
        layer_overhead_s=GPU_LAYER_OVERHEAD_S,
        call_overhead_s=5 * GPU_LAYER_OVERHEAD_S,
        bandwidth=gpu.bandwidth_gbs * 1e9 * GPU_BANDWIDTH_EFFICIENCY,
        memory_bytes=gpu.memory_gb * 1e9,
    )


def _best_of(fn: Callable[[], object], budget_s: float = 0.15, min_reps: int = 2) -> float:
    """The fastest of repeated calls of `fn` (at least `min_reps`, at most `budget_s`)."""
    fn()  # warm-up: allocation, dispatch caches
    best = float("inf")
    spent = 0.0
    reps = 0
    while reps < min_reps or spent < budget_s:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        reps += 1
        if reps >= 50:
            break
    return best


REFERENCE_LAYER_OVERHEAD_S = 1.6e-4
"""The per-layer overhead `cpu_machine` measured for the bundled GPT-2 models on the
2-core machine where the per-item costs of `lookuplens.plan.work` were measured; the
ratio to this machine's scales those costs."""


@functools.cache
def cpu_machine(
    model_type: str, d_model: int, d_mlp: int, n_heads: int, d_head: int, act: str
) -> Machine:
    """This machine's CPU, measured at the model's widths (cached per process).

    Matrices are capped at 2048 x 4096 (32 MiB) so that the benchmark stays well under
    a second for any model; a wider model's rate is taken from the capped shape.
    """
    import torch

    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    d = min(d_model, 2048)
    m = min(d_mlp, 4096)
    rows = max(64, (1 << 22) // m)  # ~4M outputs: the size of a real batch's MLP
    x = torch.randn(rows, d, generator=g)
    w = torch.randn(d, m, generator=g)
    bias = torch.randn(m, generator=g)
    with torch.no_grad():
        t_mm = _best_of(lambda: torch.addmm(bias, x, w))
        matmul = 2.0 * rows * d * m / t_mm
        act_fn = _activation(act)
        y = torch.randn(rows, m, generator=g)
        per_elem = _best_of(lambda: act_fn(y)) / (rows * m)
        z = torch.randn(rows * m // d, d, generator=g)
        ln = torch.nn.LayerNorm(d)
        per_norm = _best_of(lambda: ln(z)) / z.numel()
        b, p = 8, 64
        q = torch.randn(b, n_heads, p, d_head, generator=g)
        mask = torch.ones(b, 1, p, p, dtype=torch.bool).tril()
        f_sdpa = torch.nn.functional.scaled_dot_product_attention
        t_attn = _best_of(lambda: f_sdpa(q, q, q, attn_mask=mask))
        attn_unit = t_attn / (b * n_heads * p * p * d_head)
    layer_s, call_s = _overhead(model_type)
    return Machine(
        name="this machine's CPU",
        kind="cpu",
        matmul_flops=matmul,
        matmul_flops_fp32=matmul,
        act_s_per_element=per_elem,
        norm_s_per_element=per_norm,
        attn_s_per_unit=attn_unit,
        layer_overhead_s=layer_s,
        call_overhead_s=call_s,
        bandwidth=_copy_bandwidth(),
        memory_bytes=0.0,
        python_scale=max(layer_s / REFERENCE_LAYER_OVERHEAD_S, 0.25),
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
    t = _best_of(lambda: a.mul(1.0001), budget_s=0.05)
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
        times.append(_best_of(_forward_of(lm, ids, n_layers), budget_s=0.08, min_reps=5))
    per_layer = max((times[1] - times[0]) / 4, 1e-5)
    return per_layer, max(times[0] - per_layer, 1e-5)
