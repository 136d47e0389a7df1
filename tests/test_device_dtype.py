"""Devices and dtypes: the scan in bfloat16 close to float32, the attribute stage closing
exactly whatever dtype the model was loaded in, the pipeline on a (simulated) CUDA
device, and a clear error where CUDA is missing.

No test here needs a GPU: `fake_cuda` marks tensors as on ``cuda:0`` and raises where
CUDA would (a CPU tensor mixed into a CUDA operation, ``.numpy()`` of a CUDA tensor).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fake_cuda import FakeCudaError, fake_cuda, is_marked
from lookuplens import cli
from lookuplens.attribute import (
    AttributeConfig,
    attribute_examples,
    decompose_neuron_input,
    upstream_layers,
)
from lookuplens.corpus import CorpusSpec, iter_tokenized, make_batches
from lookuplens.model import LoadedModel, as_float32, load_model
from lookuplens.neurons import NeuronsConfig
from lookuplens.pipeline import RunConfig, run_pipeline
from lookuplens.scan import NeuronReader, ScanConfig

TEXTS = ["An owl sat on the", "She bought an apple at the market", "The quick brown fox"]
WORDS = "the quick brown fox an owl apple market river tree she bought at".split()


def write_corpus(path: Path, n_docs: int = 40) -> Path:
    rng = np.random.default_rng(0)
    path.write_text(
        "\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for _ in range(n_docs))
        + "\n"
    )
    return path


def run_config(model: Path, corpus: Path, dtype: str) -> RunConfig:
    return RunConfig(
        model=str(model),
        corpus=CorpusSpec(str(corpus)),
        device="cpu",
        dtype=dtype,  # type: ignore[arg-type]
        neurons=NeuronsConfig(top_n=3, token_filter="none"),
        scan=ScanConfig(k=5, shard_docs=10, batch_tokens=256),
    )


def tables(run: Path) -> dict[str, pa.Table]:
    return {p.stem: pq.read_table(p) for p in sorted(run.glob("*.parquet"))}


# ------------------------------------------------------------------ the simulated device


def test_fake_cuda_raises_where_cuda_would() -> None:
    lin = torch.nn.Linear(3, 2)
    with fake_cuda(lin):
        w = lin.weight
        assert w.device == torch.device("cuda", 0) and is_marked(w * 2)
        with pytest.raises(FakeCudaError):
            _ = w + torch.ones(2, 3)  # a CPU tensor in a CUDA operation
        _ = w + torch.tensor(1.0)  # a CPU scalar is allowed
        assert is_marked(w[torch.tensor([1])])  # a CPU index into a CUDA tensor too
        with pytest.raises(FakeCudaError):
            torch.zeros(2, 3)[w[:, 0].long()]
        with pytest.raises(TypeError, match="numpy"):
            w.numpy()
        assert not is_marked(w.cpu()) and is_marked(torch.zeros(2, device=w.device))
        assert is_marked(torch.zeros(2).to(w.device)) and is_marked(lin(torch.ones(1, 3).cuda()))
    assert not is_marked(lin.weight)


# ------------------------------------------------------------------ dtypes


@pytest.fixture
def both(tiny_dirs: dict[str, Path], family: str) -> tuple[LoadedModel, LoadedModel]:
    """The same checkpoint loaded in float32 and in bfloat16."""
    path = tiny_dirs[family]
    return load_model(path, device="cpu"), load_model(path, device="cpu", dtype="bfloat16")


def test_scan_activations_in_bfloat16_are_close_to_float32(
    both: tuple[LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    lm32, lm16 = both
    assert lm16.dtype == torch.bfloat16
    spec = CorpusSpec(str(write_corpus(tmp_path / "c.txt", 12)))
    docs = list(iter_tokenized(spec, lm32.tokenizer, lm32.max_context))
    batch = next(iter(make_batches(docs, 512, 0)))
    neurons = [(layer, n) for layer in range(lm32.n_layers) for n in (0, 5, 17, 40)]
    a32 = NeuronReader(lm32, neurons).run(batch.input_ids, batch.attention_mask)
    a16 = NeuronReader(lm16, neurons).run(batch.input_ids, batch.attention_mask)
    valid = batch.attention_mask.bool()
    a32, a16 = a32[valid], a16[valid]
    scale = float(a32.abs().max())
    # bfloat16 keeps 8 bits of mantissa (relative error 2^-9 per rounding); through a
    # couple of layers of random weights the activations stay within a few percent
    assert float((a16 - a32).abs().max()) <= 0.05 * scale
    assert not torch.equal(a16, a32)  # the scan did run in bfloat16


def test_as_float32_upcasts_a_copy_and_keeps_ties(
    both: tuple[LoadedModel, LoadedModel],
) -> None:
    lm32, lm16 = both
    assert as_float32(lm32) is lm32
    up = as_float32(lm16)
    assert up.dtype == torch.float32 and lm16.dtype == torch.bfloat16
    for (name, p), q in zip(lm16.hf.named_parameters(), up.hf.parameters(), strict=True):
        assert torch.equal(p.float(), q), name
    if lm16.hf.get_output_embeddings().weight is lm16.hf.get_input_embeddings().weight:
        assert up.hf.get_output_embeddings().weight is up.hf.get_input_embeddings().weight


def examples(lm: LoadedModel, layer: int) -> pa.Table:
    prompts = [lm.to_tokens(t)[0].tolist() for t in TEXTS]
    return pa.table(
        {
            "example_id": [0, 1, 2],
            "layer": [layer] * 3,
            "neuron": [7, 3, 9],
            "tokens": prompts,
        }
    )


def test_attribution_of_a_bfloat16_model_closes(both: tuple[LoadedModel, LoadedModel]) -> None:
    _, lm16 = both
    layer = lm16.n_layers - 1
    ex = examples(lm16, layer)
    cfg = AttributeConfig(methods=("direct",), label_rule="mean_std")
    att = attribute_examples(lm16, ex, cfg).to_pandas()
    up = as_float32(lm16)  # what attribute_examples attributed
    for i, prompt in enumerate(ex.column("tokens").to_pylist()):
        d = decompose_neuron_input(up, torch.tensor(prompt), layer, [7, 3, 9][i], len(prompt) - 1)
        # the decomposition closes exactly (float32), not to bfloat16's ~1e-2
        assert sum(d.terms.values()) == pytest.approx(d.pre_activation, abs=1e-5)
        rows = att[att.example_id == i]
        got = {f"L{r.head_layer}H{r.head}": r.value for r in rows.itertuples()}
        assert got == pytest.approx({k: d.terms[k] for k in got}, abs=1e-6)
        assert len(got) == sum(1 for k in d.terms if "H" in k)


# ------------------------------------------------------------------ the pipeline


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """A whole bfloat16 run on the CPU: (model, corpus, run directory)."""
    from lookuplens.model.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("bf16")
    model = build_tiny_model("llama", root / "model", seed=3)
    corpus = write_corpus(root / "c.txt")
    run_pipeline(run_config(model, corpus, "bfloat16"), root / "run")
    yield model, corpus, root / "run"


def assert_direct_closes(run: Path, lm: LoadedModel, tol: float = 1e-6) -> None:
    """The run's `direct` values are `lm`'s exact decomposition, which closes."""
    t = tables(run)
    ex = t["examples"].to_pandas().set_index("example_id")
    att = t["attributions"].to_pandas()
    att = att[att.method == "direct"]
    assert len(att)
    for eid in att.example_id.unique()[:4]:
        e = ex.loc[eid]
        toks = list(e.tokens)
        at = len(toks) - 1
        d = decompose_neuron_input(lm, torch.tensor(toks), int(e.layer), int(e.neuron), at)
        assert sum(d.terms.values()) == pytest.approx(d.pre_activation, abs=10 * tol)
        for r in att[att.example_id == eid].itertuples():
            assert r.value == pytest.approx(d.terms[f"L{r.head_layer}H{r.head}"], abs=tol)


def test_a_bfloat16_run_attributes_in_float32(bf16_run: tuple[Path, Path, Path]) -> None:
    model, _, run = bf16_run
    assert {"firings", "attributions", "effects", "scores"} <= set(tables(run))
    # the direct values are the float32 checkpoint's exact decomposition
    assert_direct_closes(run, load_model(model, device="cpu", dtype="float32"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_real_gpu_a_bfloat16_run_completes_and_attributes_in_float32(
    bf16_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, corpus, cpu_run = bf16_run
    cfg = dataclasses.replace(run_config(model, corpus, "bfloat16"), device="cuda")
    run_pipeline(cfg, tmp_path / "run")
    assert tables(tmp_path / "run").keys() == tables(cpu_run).keys()
    assert_direct_closes(tmp_path / "run", load_model(model, device="cuda"), tol=1e-5)


def test_the_float32_copy_lives_only_through_the_attribute_stage(
    bf16_run: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import weakref

    import lookuplens.pipeline as pipeline

    model, corpus, _ = bf16_run
    copies: list[weakref.ref[LoadedModel]] = []
    alive: dict[str, bool] = {}

    def load(source: str, device: str = "auto", dtype: str = "float32") -> LoadedModel:
        lm = load_model(source, device=device, dtype=dtype)
        if dtype == "float32":
            copies.append(weakref.ref(lm))
        return lm

    class Watch(pipeline.SilentReporter):
        def start(self, stage: str, total: int | None, unit: str) -> None:
            gc.collect()
            alive[stage] = any(c() is not None for c in copies)

    monkeypatch.setattr(pipeline, "load_model", load)
    cfg = run_config(model, corpus, "bfloat16")
    run_pipeline(cfg, tmp_path / "run", until="verify", reporter=Watch())
    assert len(copies) == 1  # loaded for the attribute stage, freed before verify
    assert not alive["attribute"] and not alive["verify"]


def test_a_run_on_cuda_equals_the_cpu_run(
    bf16_run: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stage on a (simulated) CUDA device: no tensor left on the wrong device."""
    import lookuplens.pipeline as pipeline

    model, corpus, cpu_run = bf16_run
    # loaded outside the simulation (Hugging Face's loading is not run under it)
    models = {dt: load_model(model, device="cpu", dtype=dt) for dt in ("bfloat16", "float32")}
    loaded: list[str] = []

    def load_on_cuda(source: str, device: str = "auto", dtype: str = "float32") -> LoadedModel:
        assert device == "cuda" and source == str(model)
        loaded.append(dtype)
        return models[dtype]

    monkeypatch.setattr(pipeline, "load_model", load_on_cuda)
    cfg = dataclasses.replace(run_config(model, corpus, "bfloat16"), device="cuda")
    with fake_cuda(*(lm.hf for lm in models.values())):
        run_pipeline(cfg, tmp_path / "run")
    assert loaded == ["bfloat16", "float32"]  # float32 for the attribute stage only
    got, want = tables(tmp_path / "run"), tables(cpu_run)
    assert got.keys() == want.keys()
    for name in ("firings", "examples", "attributions", "effects"):
        assert got[name].equals(want[name]), name


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_every_attribution_method_and_why_run_on_cuda(tiny_dirs: dict[str, Path], fam: str) -> None:
    """The methods the pipeline run leaves out (mean and resample ablation, candidate
    pruning) and ``lookuplens why``, on the simulated CUDA device: equal to the CPU's."""
    from lookuplens.attribute import METHODS
    from lookuplens.why import WhyConfig, explain_prediction

    lm = load_model(tiny_dirs[fam], device="cpu")
    ex = examples(lm, 1)
    # small activations: the candidate share's floor admits heads beyond the top 2 + 1
    ex = ex.append_column("trimmed_activation", pa.array([1e-3] * ex.num_rows))
    cfg = AttributeConfig(
        methods=METHODS,
        candidates=2,
        label_method="zero_ablation",
        candidate_share=0.5,
        sweep_heads=0,
    )
    want = attribute_examples(lm, ex, cfg), explain_prediction(lm, TEXTS[0], WhyConfig())
    with fake_cuda(lm.hf):
        got = attribute_examples(lm, ex, cfg), explain_prediction(lm, TEXTS[0], WhyConfig())
    assert got[0].equals(want[0])
    assert got[1].to_dict() == want[1].to_dict()
    ablated = want[0].column("method").to_pylist().count("zero_ablation")
    n_up = len(upstream_layers(lm, 1)) * lm.n_heads
    top = attribute_examples(lm, ex, dataclasses.replace(cfg, candidate_share=0))
    base = top.column("method").to_pylist().count("zero_ablation")  # the top 2 + 1 only
    assert base < ablated < 3 * n_up, (base, ablated, n_up)  # the floor added, not every head


def test_cuda_asked_for_without_cuda_is_one_line_and_nothing_written(
    tiny_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    corpus = write_corpus(tmp_path / "c.txt", 5)
    out = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        ["lookuplens", "run", "--model", str(tiny_dirs["gpt2"]), "--corpus", str(corpus)]
        + ["--device", "cuda", "--dtype", "bfloat16", "--out", str(out)],
    )
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "CUDA is not available" in err[0] and "--device cpu" in err[0]
    assert not out.exists()
