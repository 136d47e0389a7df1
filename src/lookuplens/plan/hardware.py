"""What a machine does per second: a named GPU from a table of published figures, or this
machine's CPU measured by a short micro-benchmark.

A forward pass through one decoder layer costs, in this model of time,

    per-call overhead + matmul FLOPs / matmul rate + activation elements x time per
    element + attention units x time per unit

(on a GPU: the larger of the FLOPs at the dense peak and the weights and activations
read at the memory bandwidth, each times an efficiency factor, plus a launch overhead).
`Machine` holds those rates; `lookuplens.plan.cpu.cpu_machine` measures them on this
machine at the model's own widths (a few seconds, cached per process); `gpu_machine`
takes them from `GPUS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lookuplens.errors import UserError
from lookuplens.plan.shape import ModelShape

__all__ = [
    "GPUS",
    "GPU_BANDWIDTH_EFFICIENCY",
    "GPU_COMPUTE_EFFICIENCY",
    "GPU_LAYER_OVERHEAD_S",
    "GpuSpec",
    "Machine",
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
    layer_factor: float = 1.0
    """A real decoder layer's compute over the components' sum (measured where the
    model's layer is small enough to build: caches, the model's own code)."""
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
        compute *= self.layer_factor
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
