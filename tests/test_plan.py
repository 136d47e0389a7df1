"""`lookuplens plan` and `run --plan`: the cost of a run from config.json alone."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from cli_helpers import cli as run_cli
from lookuplens.plan import Machine, plan_run, read_config, shape_from_config
from lookuplens.plan.estimate import count_work, estimate_stage
from lookuplens.plan.stages import attribute_work, simulate_batches
from lookuplens.plan.work import Rates
from lookuplens.run_config import build_config
from lookuplens.store import STAGES

# Meta's Llama-3-8B config.json, the numbers that decide the cost (no weights)
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
GPT2_SMALL = {
    "model_type": "gpt2",
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
    "activation_function": "gelu_new",
}

# a fixed machine, so that the estimates in these tests need no micro-benchmark
MACHINE = Machine(
    name="test",
    kind="cpu",
    matmul_flops=5e10,
    matmul_flops_fp32=5e10,
    act_s_per_element=1e-8,
    norm_s_per_element=1e-9,
    attn_s_per_unit=1e-10,
    attn_s_per_row_head=1e-6,
    layer_overhead_s=2e-4,
    call_overhead_s=2e-4,
    bandwidth=5e9,
    memory_bytes=0.0,
)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, columns=160)


def _folder(root: Path, name: str, config: dict[str, object]) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("plan"), "llama3-8b", LLAMA3_8B)


def test_llama3_8b_parameters_from_config_only(llama3: Path) -> None:
    shape = shape_from_config(*read_config(str(llama3)))
    assert abs(shape.params - 8.03e9) / 8.03e9 < 0.02
    assert shape.params == 8_030_261_248  # Meta's figure for Llama-3-8B
    assert (shape.n_kv_heads, shape.d_head, shape.gated_mlp) == (8, 128, True)


def test_gpt2_small_parameters() -> None:
    shape = shape_from_config(GPT2_SMALL, "gpt2-small")
    assert shape.params == 124_439_808  # GPT-2 small, tied LM head


def test_plan_counts_every_stage_of_a_llama3_8b_run(llama3: Path) -> None:
    cfg = build_config(overrides={"model": str(llama3), "dtype": "bfloat16"})
    plan = plan_run(cfg, corpus_tokens=5_000_000, gpu="H100")
    assert [s.stage for s in plan.stages] == list(STAGES)
    for s in plan.stages:
        assert s.seconds > 0 and s.peak_memory > 16e9 and sum(s.disk.values()) > 0, s.stage
        if s.stage != "neurons":
            assert s.forward_passes > 0 and s.tokens > 0 and s.flops > 0, s.stage
    assert plan.stage("attribute").backward_passes > 0
    # the attribute stage holds a float32 copy beside the bf16 weights
    assert plan.stage("attribute").peak_memory > 8.03e9 * 6
    assert "attribute with --candidates 0" in plan.alternatives


def _attribute_seconds(config: dict[str, object], candidates: int) -> float:
    shape = shape_from_config(config, "x")
    cfg = build_config(overrides={"attribute.candidates": candidates})
    corpus = _corpus()
    layout, _ = count_work(cfg, shape, corpus, Rates())
    work = attribute_work(cfg, shape, layout)
    return estimate_stage(work, shape, MACHINE, "float32").seconds


def _corpus():  # type: ignore[no-untyped-def]
    from lookuplens.plan.corpus import CorpusProfile

    return CorpusProfile(docs=20_000, tokens=10_000_000, lengths=(500,) * 64, how="test")


def test_pruning_costs_less_and_grows_with_candidates_not_heads() -> None:
    small = {**LLAMA3_8B, "num_hidden_layers": 12, "hidden_size": 1024, "intermediate_size": 4096}
    by_heads = {}
    for heads in (8, 16, 32):
        cfg = {**small, "num_attention_heads": heads, "num_key_value_heads": heads}
        by_heads[heads] = (_attribute_seconds(cfg, 16), _attribute_seconds(cfg, 0))
    for heads, (pruned, full) in by_heads.items():
        assert full > pruned, heads
    # without pruning the ablations grow with the heads; with it, hardly
    assert by_heads[32][1] > 1.8 * by_heads[16][1] > 1.8**2 * by_heads[8][1]
    assert by_heads[32][0] < 1.3 * by_heads[8][0]
    assert by_heads[32][1] / by_heads[32][0] > 5


def test_make_batches_simulation_matches_the_scan_batching() -> None:
    from lookuplens.corpus import make_batches
    from lookuplens.corpus.spec import TokenizedDoc

    lengths = (5, 9, 3, 30, 2, 2, 17, 40, 1, 8)
    import numpy as np

    docs = [TokenizedDoc(i, np.ones(n, dtype=np.int64)) for i, n in enumerate(lengths)]
    batches = list(make_batches(docs, 48, 0))
    calls, padded, _ = simulate_batches(lengths, 48)
    assert calls == len(batches)
    assert padded == sum(b.input_ids.numel() for b in batches)


def test_plan_cli_prints_every_stage_of_the_8b_config(llama3: Path) -> None:
    out = cli("plan", "--model", str(llama3), "--corpus-tokens", "1000000")
    assert out.returncode == 0, out.stderr
    for stage in STAGES:
        assert stage in out.stdout
    assert "8.03B parameters" in out.stdout
    assert "6+3 candidate heads" in out.stdout and "--candidates 0" in out.stdout


def test_plan_cli_json_parses(llama3: Path) -> None:
    out = cli("plan", "--model", str(llama3), "--gpu", "a100-80gb", "--json", "--dtype", "bfloat16")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [s["stage"] for s in data["stages"]] == list(STAGES)
    assert data["model"]["params"] == 8_030_261_248
    assert data["total"]["seconds"] > 0 and data["machine"]["name"] == "A100-80GB"


@pytest.mark.parametrize(
    ("what", "needle"),
    [
        ("empty", "holds no config.json"),
        ("bert", "not supported"),
        ("gpu", "unknown GPU 'B300'; known: H100"),
        ("hub", "cannot read the config of"),
    ],
)
def test_plan_bad_input_is_one_line_exit_2(
    tmp_path: Path, llama3: Path, what: str, needle: str
) -> None:
    args = {
        "empty": ["--model", str(tmp_path)],
        "bert": ["--model", str(_folder(tmp_path, "bert", {"model_type": "bert"}))],
        "gpu": ["--model", str(llama3), "--gpu", "B300"],
        "hub": ["--model", "someone/no-such-model"],
    }[what]
    out = cli("plan", *args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_run_plan_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    out = cli("run", "--plan", "--out", str(tmp_path / "run"), "--storyworld-docs", "200")
    assert out.returncode == 0, out.stderr
    for stage in STAGES:
        assert stage in out.stdout
    assert "storyworld" in out.stdout
    assert not (tmp_path / "run").exists()
    scan = cli("scan", "--plan", "--model", "bundled:tripworld")
    assert scan.returncode == 0, scan.stderr
    assert "examples" in scan.stdout and "verify" not in scan.stdout  # the stages it runs


def test_plan_follows_the_run_options() -> None:
    base = build_config()
    fewer = dataclasses.replace(
        base, neurons=dataclasses.replace(base.neurons, top_n=5, layers=(1, 2))
    )
    a = plan_run(base, gpu="L4")
    b = plan_run(fewer, gpu="L4")
    assert b.stage("attribute").seconds < a.stage("attribute").seconds / 3
    assert b.stage("scan").forward_passes == a.stage("scan").forward_passes
