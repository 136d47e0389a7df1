"""The default run, `--tokens` and `why` on models whose tokenizers follow every convention.

Tiny random-weight models saved with: the real SentencePiece tokenizer of Mistral 7B v1
(on a Mistral and a Llama architecture), a word-level tokenizer and a GPT-2-style
byte-level one. Each goes through `load_model`, the path users take.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookuplens.model import load_model
from lookuplens.model.tiny import build_tiny_model
from lookuplens.pipeline import build_config, run_pipeline
from lookuplens.report.tokens import token_label
from test_run import cli

WORDS = (
    "the an a apple owl orange otter cat dog sat on mat and then she bought picked up "
    "old tree river market harbour fish umbrella"
).split()
MODELS = {
    "mistral_sentencepiece": ("mistral", "sentencepiece"),
    "llama_sentencepiece": ("llama", "sentencepiece"),
    "gpt2_word_level": ("gpt2", "word_level"),
    "gpt2_byte_level": ("gpt2", "byte_level"),
}


def corpus_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=24)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("conventions")
    texts = corpus_texts(80)
    corpus = root / "docs.txt"
    corpus.write_text("\n".join(texts) + "\n")
    dirs = {
        name: build_tiny_model(fam, root / name, seed=i, texts=texts, tokenizer=kind)
        for i, (name, (fam, kind)) in enumerate(MODELS.items())
    }
    return dirs, corpus


@pytest.mark.parametrize(
    "name",
    [  # the whole default pipeline: 15-60 s on the first two, about 2 s on the last
        pytest.param("llama_sentencepiece", marks=pytest.mark.slow),
        pytest.param("gpt2_word_level", marks=pytest.mark.slow),
        "gpt2_byte_level",
    ],
)
def test_default_run_selects_word_start_tokens_shown_with_their_space(
    world: tuple[dict[str, Path], Path], tmp_path: Path, name: str
) -> None:
    """The default settings (paper token filter) on each convention; before the tokenizer's
    convention was known, SentencePiece and word-level models selected no neuron at all."""
    dirs, corpus = world
    cfg = build_config(overrides={"model": str(dirs[name]), "corpus.source": str(corpus)})
    run = run_pipeline(cfg, tmp_path / "run", until="score")
    neurons = pq.read_table(run.path / "neurons.parquet").to_pandas()
    chosen = neurons[neurons.selected]
    assert len(chosen) > 0
    assert chosen.token.str.startswith(" ").mean() >= 0.9
    assert (run.path / "scores.parquet").is_file()


@pytest.mark.slow  # the whole pipeline from the CLI, then `why` (about 20-60 s)
def test_sentencepiece_model_end_to_end_from_the_command_line(
    world: tuple[dict[str, Path], Path], tmp_path: Path
) -> None:
    """`lookuplens run` with defaults, then the report, the dashboard and `why --json`
    show the same token strings, with the word's leading space."""
    dirs, corpus = world
    model = dirs["mistral_sentencepiece"]
    out = tmp_path / "run"
    r = cli("run", "--model", str(model), "--corpus", str(corpus), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    neurons = pq.read_table(out / "neurons.parquet").to_pandas()
    chosen = neurons[neurons.selected]
    assert len(chosen) > 0 and chosen.token.str.startswith(" ").mean() >= 0.9
    lm = load_model(model, device="cpu")
    an = lm.tokenizer.convert_tokens_to_ids("\u2581an")
    for tid, token in zip(chosen.token_id, chosen.token, strict=True):
        assert token == lm.token_str(int(tid))
        assert token == lm.tokenizer.convert_ids_to_tokens(int(tid)).replace("\u2581", " ")

    report = (out / "report.html").read_text()
    for token in chosen.token.head(5):
        assert token_label(token) in report  # " indoor" is shown as "·indoor"

    why = cli(
        "why", "--model", str(model), "I picked up an apple and then I picked", "--target",
        " an", "--json",
    )  # fmt: skip
    assert why.returncode == 0, why.stderr[-2000:]
    got = json.loads(why.stdout)
    assert got["target"] == " an" and got["target_id"] == an
    assert " picked" in got["tokens"] and " an" in got["tokens"]

    from fastapi.testclient import TestClient

    from lookuplens.server import create_app

    with TestClient(create_app(out, lm=lm), base_url="http://127.0.0.1") as client:
        rows = client.get("/api/neurons", params={"group": "selected", "per_page": 500})
        shown = {(r["layer"], r["neuron"]): r["token"] for r in rows.json()["rows"]}
        for layer, neuron, token in zip(chosen.layer, chosen.neuron, chosen.token, strict=True):
            assert shown[(layer, neuron)] == token
        w = client.post("/api/why", json={"prompt": "I picked up", "target": "\u2581an"})
        assert w.status_code == 200
        assert w.json()["data"]["target"] == " an" and w.json()["data"]["target_id"] == an


@pytest.mark.parametrize("name", list(MODELS))
def test_tokens_option_resolves_typed_forms_and_echoes_them(
    world: tuple[dict[str, Path], Path], tmp_path: Path, name: str
) -> None:
    """`--tokens " an"` (and "▁an", "an" where no continuation piece "an" exists) aims at
    the word-start token of " an", and the neurons table shows it as " an"."""
    dirs, corpus = world
    lm = load_model(dirs[name], device="cpu")
    an = lm.resolve_token(" an")
    assert lm.token_str(an) == " an"
    forms = [" an", "\u2581an"] + ([] if lm.vocab.convention == "metaspace" else ["an"])
    for i, typed in enumerate(forms):
        cfg = build_config(
            overrides={
                "model": str(dirs[name]),
                "corpus.source": str(corpus),
                "neurons.tokens": (typed,),
                "neurons.top_n": 2,
            }
        )
        run = run_pipeline(cfg, tmp_path / f"run{i}", until="neurons")
        t = pq.read_table(run.path / "neurons.parquet").to_pandas()
        aimed = t[t.selected]
        assert set(aimed.target_token_id) == {an}, typed
