"""A run's cost before the run: per stage the passes, tokens, FLOPs, peak memory, disk and
time (`plan_run`), from the model's config.json, the run's settings and the machine.

Time is the work of `lookuplens.plan.stages` priced by a `Machine`: this machine's CPU,
measured by a micro-benchmark at the model's widths, or a named GPU from published
figures. The model's load is counted once before the first stage (run.json's stage times
leave it out) and again in the attribute stage when it loads a float32 copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookuplens.errors import UserError
from lookuplens.plan.corpus import CorpusProfile, profile_corpus
from lookuplens.plan.cpu import cpu_machine
from lookuplens.plan.hardware import (
    GPU_BANDWIDTH_EFFICIENCY,
    GPU_COMPUTE_EFFICIENCY,
    Machine,
    find_gpu,
    gpu_machine,
    gpu_names,
    local_gpu_name,
    match_gpu,
)
from lookuplens.plan.layout import Layout, make_layout
from lookuplens.plan.shape import ModelShape, read_config, shape_from_config
from lookuplens.plan.stages import attribute_work, examples_work, neurons_work, scan_work
from lookuplens.plan.stages_late import explain_work, report_work, score_work, verify_work
from lookuplens.plan.work import Pass, Rates, StageWork
from lookuplens.run_config import RunConfig

__all__ = ["Plan", "StageEstimate", "estimate_stage", "plan_run"]

DISK_READ_BPS = 1.0e9
"""Bytes/s at which weights load from a local disk (safetensors, page cache cold)."""
TABLE_WRITE_S = 0.02
"""Writing one table atomically (fsync included) and recording it in run.json."""
GPU_HOST_BPS = 1.0e10
"""Bytes/s of host-side array work beside a GPU (copies over PCIe, NumPy)."""
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class StageEstimate:
    """One stage's predicted cost."""

    stage: str
    forward_passes: float
    """Prompt forwards (batch rows), each through as many layers as the stage needs."""
    backward_passes: float
    tokens: float
    """Padded tokens put through the model, each pass counted."""
    flops: float
    peak_memory: float
    """Bytes: the weights held plus the stage's largest batch."""
    disk: dict[str, float]
    """Bytes per table (uncompressed: Parquet usually writes 3-8x less)."""
    seconds: float
    knobs: tuple[str, ...]
    llm_requests: float = 0.0
    llm_tokens: float = 0.0


@dataclass(frozen=True)
class Plan:
    """Everything `lookuplens plan` prints."""

    model: ModelShape
    machine: Machine
    device: str
    dtype: str
    corpus: CorpusProfile
    load_seconds: float
    stages: tuple[StageEstimate, ...]
    assumptions: tuple[str, ...]
    alternatives: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.load_seconds + sum(s.seconds for s in self.stages)

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    @property
    def disk(self) -> float:
        return sum(sum(s.disk.values()) for s in self.stages)

    @property
    def peak_memory(self) -> float:
        return max((s.peak_memory for s in self.stages), default=0.0)

    def stage(self, name: str) -> StageEstimate:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {
            "model": {
                "name": m.name,
                "model_type": m.model_type,
                "params": m.params,
                "n_layers": m.n_layers,
                "n_heads": m.n_heads,
                "n_kv_heads": m.n_kv_heads,
                "d_model": m.d_model,
                "d_mlp": m.d_mlp,
                "d_vocab": m.d_vocab,
                "max_context": m.max_context,
            },
            "machine": dataclasses.asdict(self.machine),
            "device": self.device,
            "dtype": self.dtype,
            "corpus": {
                "docs": self.corpus.docs,
                "tokens": self.corpus.tokens,
                "how": self.corpus.how,
            },
            "load_seconds": self.load_seconds,
            "stages": [dataclasses.asdict(s) | {"knobs": list(s.knobs)} for s in self.stages],
            "total": {
                "seconds": self.seconds,
                "flops": self.flops,
                "disk": self.disk,
                "peak_memory": self.peak_memory,
            },
            "assumptions": list(self.assumptions),
            "alternatives": self.alternatives,
        }


def _pass_flops(shape: ModelShape, p: Pass) -> float:
    f = p.layers * shape.layer_flops(p.tokens, p.seq) * (3.0 if p.backward else 1.0)
    return f + shape.unembed_flops(p.unembed)


def _pass_seconds(shape: ModelShape, m: Machine, p: Pass, dtype_bytes: int) -> float:
    t = m.layer_seconds(shape, p.layer_tokens, p.seq, p.layer_calls, p.fp32, dtype_bytes)
    if p.backward:
        t *= 3.0
    if not p.replay:
        t += p.calls * m.call_overhead_s
    rate = m.matmul_flops_fp32 if p.fp32 else m.matmul_flops
    return t + shape.unembed_flops(p.unembed) / rate


def estimate_stage(
    w: StageWork, shape: ModelShape, m: Machine, dtype: str, load_s: float = 0.0
) -> StageEstimate:
    """The cost of one counted stage on machine `m` with the model in `dtype`."""
    nbytes = _DTYPE_BYTES.get(dtype, 4)
    seconds = sum(_pass_seconds(shape, m, p, nbytes) for p in w.passes)
    if w.stage == "scan":
        seconds *= m.scan_slowdown
    seconds += w.flops_extra / m.matmul_flops_fp32
    host_bps = m.bandwidth if m.kind == "cpu" else GPU_HOST_BPS
    seconds += w.host_bytes / host_bps
    seconds += sum(i.count * i.seconds_each for i in w.items) * m.python_scale
    seconds += len(w.tables) * TABLE_WRITE_S
    weights = shape.params * nbytes
    if w.fp32_copy:
        weights += shape.params * 4
        seconds += load_s * 4 / nbytes
    act_scale = 1.0 if w.stage == "attribute" else nbytes / 4
    return StageEstimate(
        stage=w.stage,
        forward_passes=sum(p.rows for p in w.passes),
        backward_passes=sum(p.rows for p in w.passes if p.backward),
        tokens=sum(p.tokens for p in w.passes),
        flops=sum(_pass_flops(shape, p) for p in w.passes) + w.flops_extra,
        peak_memory=weights + w.activation_bytes * act_scale,
        disk={t.name: t.bytes for t in w.tables},
        seconds=seconds,
        knobs=tuple(w.knobs),
        llm_requests=w.llm_requests,
        llm_tokens=w.llm_tokens,
    )


def _planted(cfg: RunConfig) -> bool:
    from lookuplens.zoo import bundled_corpus

    if cfg.corpus.source == "storyworld" and cfg.model in ("", "bundled:storyworld"):
        return True
    try:
        return cfg.model == "bundled:tripworld" and cfg.corpus.source == bundled_corpus("tripworld")
    except KeyError:  # pragma: no cover
        return False


def count_work(
    cfg: RunConfig, shape: ModelShape, corpus: CorpusProfile, rates: Rates
) -> tuple[Layout, list[StageWork]]:
    """Every stage's work, counted."""
    layout = make_layout(cfg, shape, corpus, rates)
    return layout, [
        neurons_work(cfg, shape, layout),
        scan_work(cfg, shape, layout, corpus),
        examples_work(cfg, shape, layout, corpus, rates),
        attribute_work(cfg, shape, layout),
        verify_work(cfg, shape, layout, rates),
        explain_work(cfg, shape, layout, rates),
        score_work(cfg, shape, layout, rates),
        report_work(cfg, shape, layout, rates, _planted(cfg), corpus.mean_length),
    ]


def _machine(shape: ModelShape, device: str, gpu: str | None, dtype: str) -> tuple[Machine, str]:
    if gpu:
        if device == "cpu":
            raise UserError(
                "--gpu names the GPU a run on --device cuda would use; drop --device cpu"
            )
        return gpu_machine(find_gpu(gpu), dtype), "cuda"
    local = local_gpu_name() if device != "cpu" else None
    if device.startswith("cuda") and local is None:
        raise UserError(
            "--device cuda, but this machine has no CUDA device; name the GPU to plan for with "
            f"--gpu ({', '.join(gpu_names())})"
        )
    if local is not None:
        spec = match_gpu(local)
        if spec is None:
            raise UserError(
                f"this machine's GPU ({local}) is not in the table; name the closest with --gpu "
                f"({', '.join(gpu_names())})"
            )
        return gpu_machine(spec, dtype), "cuda"
    return cpu_machine(shape), "cpu"


def _dtype(cfg: RunConfig, shape: ModelShape) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    saved = shape.dtype.replace("torch.", "")
    return saved if saved in _DTYPE_BYTES else "float32"


def plan_run(
    cfg: RunConfig,
    corpus_tokens: int | None = None,
    gpu: str | None = None,
    rates: Rates | None = None,
) -> Plan:
    """The predicted cost of running `cfg` (see the module docstring). Reads the model's
    config.json only; `corpus_tokens` overrides the corpus's size; `gpu` names a GPU of
    `lookuplens.plan.hardware.GPUS` to plan for instead of this machine."""
    rates = rates or Rates()
    source = cfg.model_source
    data, _ = read_config(cfg.model or source)
    shape = shape_from_config(data, cfg.model or "bundled:storyworld")
    folder = Path(source) if Path(source).is_dir() else None
    if corpus_tokens is not None and corpus_tokens < 1:
        raise UserError(f"--corpus-tokens must be at least 1, got {corpus_tokens}")
    corpus = profile_corpus(cfg.corpus, folder, shape.max_context, corpus_tokens)
    dtype = _dtype(cfg, shape)
    machine, device = _machine(shape, cfg.device, gpu, dtype)
    layout, works = count_work(cfg, shape, corpus, rates)
    load_s = shape.params * _DTYPE_BYTES.get(dtype, 4) / DISK_READ_BPS
    stages = tuple(
        estimate_stage(w, shape, machine, dtype, load_s if w.stage == "attribute" else 0.0)
        for w in works
    )
    alternatives: dict[str, dict[str, float]] = {}
    a = cfg.attribute
    if a.candidates > 0:
        full_cfg = dataclasses.replace(cfg, attribute=dataclasses.replace(a, candidates=0))
        full = estimate_stage(attribute_work(full_cfg, shape, layout), shape, machine, dtype)
        alternatives["attribute with --candidates 0"] = {
            "seconds": full.seconds,
            "flops": full.flops,
            "attributions_bytes": full.disk.get("attributions", 0.0),
        }
    return Plan(
        model=shape,
        machine=machine,
        device=device,
        dtype=dtype,
        corpus=corpus,
        load_seconds=load_s,
        stages=stages,
        assumptions=tuple(_assumptions(cfg, shape, machine, corpus, layout, rates)),
        alternatives=alternatives,
    )


def _assumptions(
    cfg: RunConfig,
    shape: ModelShape,
    m: Machine,
    corpus: CorpusProfile,
    layout: Layout,
    rates: Rates,
) -> list[str]:
    out = [
        f"model: {shape.params / 1e9:.3g}B parameters ({shape.n_layers} layers, "
        f"{shape.n_heads} heads, {shape.n_kv_heads} key/value heads, d_model {shape.d_model}, "
        f"d_mlp {shape.d_mlp}, vocabulary {shape.d_vocab:,}), from config.json only",
        f"corpus: {corpus.docs:,} documents, {corpus.tokens:,} tokens ({corpus.how})",
        f"neurons: {layout.n_selected:,} selected + {layout.n_tracked - layout.n_selected:,} "
        f"baseline in {len(layout.layers)} layers; every later stage follows both",
        f"prompts: ~{layout.top_per_neuron:.0f} top + ~{layout.contrast_per_neuron:.0f} contrast "
        f"per neuron, ~{layout.top_len:.0f} and ~{layout.contrast_len:.0f} tokens (untrimmed "
        f"~{layout.untrimmed:.0f}; assumed: {rates.top_kept:.0%} of firings kept, trimmed to "
        f"{rates.trim_keep:.0%}, {rates.contrast_found:.0%} of contrasts found)",
        f"pairs: {rates.kept_pairs_per_neuron:g} kept per neuron, cues on "
        f"{rates.cue_rate:.0%} of top prompts (typical of the bundled runs; they vary by model)",
    ]
    if m.kind == "cpu":
        out.append(
            f"time: this machine's CPU, measured in {m.measured_s:.1f} s at the model's widths: "
            f"{m.matmul_flops / 1e9:.1f} GFLOP/s float32 matmuls, "
            f"{m.layer_overhead_s * 1e3:.2f} ms per layer call, host costs x{m.python_scale:.2f} "
            "the reference machine's"
        )
    else:
        out.append(
            f"time: {m.name} at {GPU_COMPUTE_EFFICIENCY:.0%} of its dense peak "
            f"({m.matmul_flops / GPU_COMPUTE_EFFICIENCY / 1e12:.0f} TFLOP/s {cfg.dtype}, "
            f"{m.matmul_flops_fp32 / GPU_COMPUTE_EFFICIENCY / 1e12:.1f} float32) and "
            f"{GPU_BANDWIDTH_EFFICIENCY:.0%} of its memory bandwidth, "
            f"{m.layer_overhead_s * 1e3:.1f} ms per layer call; host-side costs as on the "
            "2-core reference CPU (not measured on a GPU machine)"
        )
        if m.memory_bytes:
            out.append(f"memory: {m.name} holds {m.memory_bytes / 1e9:.0f} GB")
    out.append(
        "disk: uncompressed bytes (rows x columns x 8, strings at their length); Parquet "
        "usually writes 3-8x less"
    )
    if (
        cfg.dtype != "float32"
        and cfg.dtype != "auto"
        or (cfg.dtype == "auto" and _dtype(cfg, shape) != "float32")
    ):
        out.append(
            "attribute: loads a float32 copy of the model beside the "
            f"{_dtype(cfg, shape)} one (its decompositions must close)"
        )
    return out
