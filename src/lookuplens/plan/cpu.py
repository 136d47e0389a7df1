"""This machine's CPU, measured at a model's widths: the `Machine` that prices a plan when
no GPU is named (a few seconds, cached per process).

What is timed, each the median of repeats (on a machine other jobs share, the median is
what a stage sees):

- the decoder layer's own matrix multiplications, with bias, on a batch like a stage's
  (wider ones at a narrower shape of the same aspect: their rate is near peak anyway);
- the MLP's activation function and a norm on ~4M elements;
- attention at two widths (a per-row cost and a per-position^2 cost);
- the adapter's forward of a 1-layer and a 5-layer tiny model of the family (the
  per-layer and per-call overhead of Python, hooks and dispatch);
- where the model's decoder layer is small (`MAX_REAL_LAYER_PARAMS`), one forward of a
  real layer built at its widths: the components' sum is scaled to it (`layer_factor`),
  because on small widths caches and the model's own code decide as much as the FLOPs.

The scan serves every buffer of 1 MiB or more on fresh pages
(`lookuplens.scan.bound_native_heap`) and leaves a 256 MiB threshold to the later
stages; the layer (or, for a large one, the matmuls and activation) is timed in both
settings, in that order, as in a run, and their ratio is the scan's `scan_slowdown`.
This sets glibc's allocator threshold of the calling process, as a scan does.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lookuplens.plan.hardware import Machine
from lookuplens.plan.shape import ModelShape

__all__ = ["MAX_REAL_LAYER_PARAMS", "REFERENCE_LAYER_OVERHEAD_S", "cpu_machine", "layer_matmuls"]

REFERENCE_LAYER_OVERHEAD_S = 1.6e-4
"""The per-layer overhead measured on the 2-core machine where the per-item (host-side)
costs of `lookuplens.plan.stages` were measured; the ratio to this machine's scales
those costs (`Machine.python_scale`)."""
MAX_REAL_LAYER_PARAMS = 16_000_000
"""Decoder layers up to this many parameters (GPT-2 medium's: 12.6M) are built and timed;
larger ones, whose time is mostly their matmuls, are not."""
MAX_BENCH_ROWS = 8192
"""Rows of the benchmark's matmuls at most: the prompt stages' batches (8,192 tokens)."""
MAX_BENCH_WEIGHT = 2048 * 4096
"""Weights per benchmarked matmul at most (32 MiB)."""


def layer_matmuls(shape: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of each matrix multiplication of one decoder layer."""
    d, m = shape.d_model, shape.d_mlp
    q, kv = shape.n_heads * shape.d_head, shape.n_kv_heads * shape.d_head
    if shape.gated_mlp:
        return [(d, q), (d, kv), (d, kv), (q, d), (d, m), (d, m), (m, d)]
    return [(d, 3 * d), (d, d), (d, m), (m, d)]


def cpu_machine(shape: ModelShape) -> Machine:
    """This machine's CPU at the widths of `shape` (see the module docstring)."""
    act = "silu" if shape.gated_mlp else ("gelu_new" if shape.model_type == "gpt2" else "gelu")
    real = shape.layer_params <= MAX_REAL_LAYER_PARAMS and shape.d_model % shape.n_heads == 0
    return _cpu_machine(
        _Widths(
            model_type=shape.model_type,
            matmuls=tuple(layer_matmuls(shape)),
            d_model=shape.d_model,
            d_mlp=shape.d_mlp,
            n_heads=shape.n_heads,
            d_head=shape.d_head,
            act=act,
            parallel=shape.parallel_residual,
            real_layer=real,
        ),
        shape,
    )


@dataclass(frozen=True)
class _Widths:
    model_type: str
    matmuls: tuple[tuple[int, int], ...]
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    act: str
    parallel: bool
    real_layer: bool


def _timed(fn: Callable[[], object], budget_s: float = 0.12, min_reps: int = 3) -> float:
    """The median time of repeated calls of `fn` (at least `min_reps`, about `budget_s`)."""
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


@dataclass(frozen=True)
class _Suite:
    matmul_flops: float
    act_s: float
    norm_s: float
    seconds: float


def _suite(w: _Widths) -> _Suite:
    """The layer's matmuls (with bias; ~4M outputs and ~0.5 GFLOP each at most), its MLP
    activation on ~4M elements, and a norm."""
    import torch

    g = torch.Generator().manual_seed(0)
    flops = t_mm = 0.0
    with torch.no_grad():
        for n_in, n_out in w.matmuls:
            shrink = max(1.0, (n_in * n_out / MAX_BENCH_WEIGHT) ** 0.5)
            k, n = max(8, int(n_in / shrink)), max(8, int(n_out / shrink))
            rows = max(64, min(MAX_BENCH_ROWS, (1 << 22) // n, (1 << 28) // (k * n)))
            x = torch.randn(rows, k, generator=g)
            weight = torch.randn(k, n, generator=g)
            bias = torch.randn(n, generator=g)
            t_mm += _timed(functools.partial(torch.addmm, bias, x, weight))
            flops += 2.0 * rows * k * n
        d, m = min(w.d_model, 2048), min(w.d_mlp, 4096)
        rows = max(64, (1 << 22) // m)
        y = torch.randn(rows, m, generator=g)
        t_act = _timed(functools.partial(_activation(w.act), y))
        z = torch.randn(rows * m // d, d, generator=g)
        t_norm = _timed(functools.partial(torch.nn.LayerNorm(d), z))
    return _Suite(flops / t_mm, t_act / (rows * m), t_norm / z.numel(), t_mm + t_act + t_norm)


@functools.cache
def _cpu_machine(w: _Widths, shape: ModelShape) -> Machine:
    import torch

    from lookuplens.scan import RELEASED_MMAP_THRESHOLD, bound_native_heap

    t_start = time.perf_counter()
    bounded = bound_native_heap()  # the scan's setting
    scan_time = _real_layer(w)[0] if w.real_layer else _suite(w).seconds
    if bounded:
        bound_native_heap(RELEASED_MMAP_THRESHOLD)  # what the scan leaves to later stages
    suite = _suite(w)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        f_sdpa = torch.nn.functional.scaled_dot_product_attention
        dh = min(w.d_head, 256)
        per_row: list[float] = []
        for p in (32, 128):
            b = max(1, 4096 // p)
            q = torch.randn(b, w.n_heads, p, dh, generator=g)
            mask = torch.ones(b, 1, p, p, dtype=torch.bool).tril()
            t = _timed(functools.partial(f_sdpa, q, q, q, attn_mask=mask))
            per_row.append(t / (b * w.n_heads))
        # per (row, head): c0 + c1 x p^2 x d_head, through the two widths
        attn_unit = max((per_row[1] - per_row[0]) / ((128**2 - 32**2) * dh), 1e-13)
        attn_row = max(per_row[0] - attn_unit * 32**2 * dh, 0.0)
    layer_s, call_s = _overhead(w.model_type)
    m = Machine(
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
    )
    factor, scan_slowdown = 1.0, 1.0
    if w.real_layer:
        real, tokens, seq = _real_layer(w)
        compute = m.layer_seconds(shape, tokens, seq, 0.0)
        factor = (real - layer_s - call_s) / max(compute, 1e-12)
        scan_slowdown = scan_time / real
    elif bounded:
        scan_slowdown = scan_time / suite.seconds
    return Machine(
        **{
            **m.__dict__,
            "layer_factor": min(max(factor, 0.5), 3.0),
            "scan_slowdown": min(max(scan_slowdown, 1.0), 4.0),
            "measured_s": time.perf_counter() - t_start,
        }
    )


def _real_layer(w: _Widths) -> tuple[float, float, float]:
    """(seconds, tokens, positions) of one forward through a one-layer model of the
    family at these widths (random weights, a 64-token vocabulary): 64 rows of 64."""
    import torch
    from transformers import AutoModelForCausalLM

    from lookuplens.model.loading import from_hf
    from lookuplens.model.tiny import tiny_config

    family = _family(w.model_type)
    if family == "gpt_neox" and not w.parallel:
        family = "gpt_neox_seq"
    cfg = tiny_config(family, 64, n_layers=1, d_model=w.d_model, n_heads=w.n_heads, d_mlp=w.d_mlp)
    torch.manual_seed(0)
    lm = from_hf(AutoModelForCausalLM.from_config(cfg), None, "bench")
    rows, seq = 64, 64
    ids = torch.randint(0, 64, (rows, seq), generator=torch.Generator().manual_seed(0))
    return _timed(_forward_of(lm, ids, 1), budget_s=0.25, min_reps=5), float(rows * seq), seq


def _family(model_type: str) -> str:
    return (
        model_type if model_type in ("gpt2", "gpt_neox", "llama", "mistral", "qwen2") else "llama"
    )


def _activation(name: str) -> Callable[[Any], object]:
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
    return 2 * a.numel() * 8 / _timed(functools.partial(a.mul, 1.0001), budget_s=0.05)


@functools.cache
def _overhead(model_type: str) -> tuple[float, float]:
    """Seconds per decoder-layer call and per forward call of the adapter on this CPU:
    forwards of a 1-layer and a 5-layer tiny model of the family (width 32, 8 tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lookuplens.model.loading import from_hf
    from lookuplens.model.tiny import tiny_config

    times = []
    ids = torch.zeros(2, 8, dtype=torch.long)
    for n_layers in (1, 5):
        cfg = tiny_config(_family(model_type), vocab_size=64, n_layers=n_layers)
        torch.manual_seed(0)
        lm = from_hf(AutoModelForCausalLM.from_config(cfg), None, "bench")
        times.append(_timed(_forward_of(lm, ids, n_layers), budget_s=0.08, min_reps=5))
    per_layer = max((times[1] - times[0]) / 4, 1e-5)
    return per_layer, max(times[0] - per_layer, 1e-5)
