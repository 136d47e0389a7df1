"""`lookuplens run` end to end on a model and corpus the project has never seen."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cli_helpers import cli as run_cli

pytestmark = pytest.mark.slow  # each test runs the whole pipeline from the CLI (10-16 s)

NAMES = ["zorp", "quill", "mab", "tesk", "vorn", "lupa", "kesh", "dorv"]
COLOURS = ["red", "blue", "green", "amber"]


def task_texts(n: int, seed: int) -> list[str]:
    """A recall task: an item's colour is stated early and asked for at the end."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        item, colour = rng.choice(NAMES), rng.choice(COLOURS)
        fill = " ".join(rng.choice(NAMES + ["and", "then", "so"], size=int(rng.integers(2, 6))))
        out.append(f"the {item} is {colour} . {fill} . what colour is the {item} ? {colour}")
    return out


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny GPT-2 trained here for a few seconds on its own task, with its own tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lookuplens.model.tiny import build_tokenizer

    root = tmp_path_factory.mktemp("unseen")
    texts = task_texts(400, 0)
    tok = build_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=48, n_layer=2, n_head=4, n_inner=96)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]] for t in texts]
    width = max(len(i) for i in ids)
    batch = torch.tensor([i + [tok.bos_token_id] * (width - len(i)) for i in ids])
    for step in range(40):
        rows = batch[(step * 32) % 400 : (step * 32) % 400 + 32]
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in task_texts(150, 1)))
    return root / "model", corpus


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, columns=160, timeout=600)


def tables(run: Path) -> dict[str, object]:
    return {p.name: pq.read_table(p) for p in sorted(run.glob("*.parquet"))}


def tables_equal(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and values, NaN equal to NaN (Table.equals says NaN != NaN)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for name in a.schema.names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            if not np.array_equal(
                x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False), equal_nan=True
            ):
                return False
        elif not x.equals(y):
            return False
    return True


def test_run_on_an_unseen_model_and_corpus_twice_gives_identical_tables(
    unseen: tuple[Path, Path], tmp_path: Path
) -> None:
    model, corpus = unseen
    args = [
        "run",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--text-field",
        "body",
        "--top-n",
        "4",
        "--k",
        "12",
        "--layers",
        "1",
        "--token-filter",
        "none",
    ]
    a = cli(*args, "--out", str(tmp_path / "a"))
    assert a.returncode == 0, a.stderr[-3000:]
    assert "run directory:" in a.stdout
    meta = json.loads((tmp_path / "a" / "run.json").read_text())
    from lookuplens.pipeline import available_stages

    assert list(meta["stages"]) == available_stages()
    assert meta["model"]["architecture"] == "gpt2" and meta["corpus"]["documents"] == 150
    ta = tables(tmp_path / "a")
    assert {
        "neurons.parquet",
        "examples.parquet",
        "attributions.parquet",
        "pairs.parquet",
        "effects.parquet",
    } <= set(ta)
    b = cli(*args, "--out", str(tmp_path / "b"))
    assert b.returncode == 0, b.stderr[-3000:]
    tb = tables(tmp_path / "b")
    assert ta.keys() == tb.keys()
    for name in ta:
        assert tables_equal(ta[name], tb[name]), name  # type: ignore[arg-type]
    again = cli(*args, "--out", str(tmp_path / "a"))  # finished stages are skipped
    assert again.returncode == 0 and "already done" in again.stderr
    # every pair task is counted, scored or not, and the summary says why some were not
    from lookuplens.store import RunDir
    from lookuplens.summary import key_numbers

    scores = pq.read_table(tmp_path / "a" / "scores.parquet").to_pandas()
    status = key_numbers(RunDir.open(tmp_path / "a"))["pair_score_status"]
    assert isinstance(status, dict)
    assert sum(status.values()) == int((scores.target == "pair").sum())
    for reason in set(status) - {"ok"}:
        assert reason.replace("_", " ") in a.stdout.replace("\n", " ")


def test_token_targeted_run_selects_exactly_the_requested_tokens(
    unseen: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model, corpus = unseen
    tok = AutoTokenizer.from_pretrained(model)
    wanted = {t: tok(t, add_special_tokens=False)["input_ids"] for t in (" red", " blue")}
    assert all(len(v) == 1 for v in wanted.values())
    res = cli(
        "run",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--text-field",
        "body",
        "--tokens",
        " red, blue",
        "--top-n",
        "2",
        "--k",
        "10",
        "--out",
        str(tmp_path / "t"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    neurons = pq.read_table(tmp_path / "t" / "neurons.parquet").to_pandas()
    sel = neurons[neurons.selected]
    assert set(sel.target_token_id) == {v[0] for v in wanted.values()}
    assert (sel.groupby(["layer", "target_token_id"]).size() == 2).all()
    meta = json.loads((tmp_path / "t" / "run.json").read_text())
    from lookuplens.pipeline import available_stages

    assert list(meta["stages"]) == available_stages()
    bad = cli(
        "run",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--text-field",
        "body",
        "--tokens",
        " notatokenatall",
        "--out",
        str(tmp_path / "bad"),
    )
    assert bad.returncode == 2 and "not a single token" in bad.stderr
    assert not (tmp_path / "bad").exists()
