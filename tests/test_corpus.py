"""Corpus sources, the tokenisation rule, batching and fingerprints."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from jaxtyping import Int64
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lookuplens.corpus import (
    Batch,
    CorpusHasher,
    CorpusSpec,
    TokenizedDoc,
    corpus_fingerprint,
    corpus_meta,
    document_prefix_id,
    iter_documents,
    iter_tokenized,
    make_batches,
    source_kind,
    tokenize,
)
from lookuplens.errors import CorpusError

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the bird sang a song in the tree",
    "once upon a time there was a small fox",
    "the fox and the cat were friends",
]


def _train(special: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return tok


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style: BOS = EOS = <|endoftext|>, id 0."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_train(["<|endoftext|>"]),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def bare_tokenizer() -> PreTrainedTokenizerFast:
    """No BOS, no EOS."""
    return PreTrainedTokenizerFast(tokenizer_object=_train([]))


def _texts(spec: CorpusSpec) -> list[tuple[int, str]]:
    return [(d.doc_id, d.text) for d in iter_documents(spec)]


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------- sources


def test_txt_line_mode_skips_blank_lines_and_numbers_nonblank_docs(tmp_path: Path) -> None:
    src = _write(tmp_path / "c.txt", "alpha beta\n\n   \ngamma\r\ndelta  \n")
    spec = CorpusSpec(src, txt_mode="line")
    assert _texts(spec) == [(0, "alpha beta"), (1, "gamma"), (2, "delta  ")]


def test_txt_paragraph_mode_keeps_inner_newlines(tmp_path: Path) -> None:
    src = _write(tmp_path / "c.txt", "\n\nfirst line\nsecond line\n\n\n\nthird\n  \nfourth\nend")
    spec = CorpusSpec(src, txt_mode="paragraph")
    assert _texts(spec) == [(0, "first line\nsecond line"), (1, "third"), (2, "fourth\nend")]


def test_txt_auto_mode_picks_paragraphs_only_for_inner_blank_lines(tmp_path: Path) -> None:
    para = _write(tmp_path / "p.txt", "a\nb\n\nc\n")
    assert _texts(CorpusSpec(para)) == [(0, "a\nb"), (1, "c")]
    # A trailing (or leading) blank line does not turn a line-per-document file into one doc.
    lines = _write(tmp_path / "l.txt", "\na\nb\nc\n\n\n")
    assert _texts(CorpusSpec(lines)) == [(0, "a"), (1, "b"), (2, "c")]


def test_txt_utf8_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\nworld\n")
    assert _texts(CorpusSpec(str(path))) == [(0, "hello"), (1, "world")]


def test_jsonl_custom_field_and_null_or_blank_skipped(tmp_path: Path) -> None:
    rows = [
        {"body": "first doc\nwith newline", "id": 7},
        {"body": "   "},
        {"body": None},
        {"body": "second"},
    ]
    src = _write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    spec = CorpusSpec(src, text_field="body")
    assert _texts(spec) == [(0, "first doc\nwith newline"), (1, "second")]


def test_parquet_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["one", "", None, "two"], "n": [1, 2, 3, 4]}), path)
    spec = CorpusSpec(str(path), text_field="content")
    assert _texts(spec) == [(0, "one"), (1, "two")]


def test_max_docs(tmp_path: Path) -> None:
    src = _write(tmp_path / "c.txt", "\n".join(SENTENCES))
    assert [d for d, _ in _texts(CorpusSpec(src, max_docs=2))] == [0, 1]


def test_storyworld_source() -> None:
    if importlib.util.find_spec("lookuplens.zoo.storyworld") is None:
        pytest.skip("lookuplens.zoo.storyworld is not written yet")
    from lookuplens.zoo.storyworld import generate_corpus

    docs = list(iter_documents(CorpusSpec("storyworld", storyworld_docs=4, storyworld_seed=3)))
    expected = generate_corpus(4, 3, split="heldout")
    assert [(d.doc_id, d.text) for d in docs] == [(e.doc_id, e.text) for e in expected]
    capped = CorpusSpec("storyworld", storyworld_docs=4, storyworld_seed=3, max_docs=2)
    assert list(iter_documents(capped)) == docs[:2]


def test_source_kind_resolution(tmp_path: Path) -> None:
    assert source_kind("storyworld") == "storyworld"
    assert source_kind("hf:org/name") == "hf"
    assert source_kind("roneneldan/TinyStories") == "hf"
    assert source_kind(_write(tmp_path / "x.jsonl", "{}")) == "jsonl"


# -------------------------------------------------------------------------- errors


def test_missing_file_names_path_and_accepted_kinds(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="does not exist") as e:
        list(iter_documents(CorpusSpec(str(missing))))
    assert str(missing) in str(e.value)
    assert ".jsonl" in str(e.value) and ".parquet" in str(e.value)


def test_unknown_extension(tmp_path: Path) -> None:
    src = _write(tmp_path / "c.csv", "text\nhello\n")
    with pytest.raises(CorpusError, match=r"'\.csv'.*convert it to \.txt"):
        list(iter_documents(CorpusSpec(src)))


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="is a directory"):
        list(iter_documents(CorpusSpec(str(tmp_path))))


def test_non_utf8_file_reports_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"good line\ncaf\xe9\n")
    with pytest.raises(CorpusError, match=r"byte offset 13 \(line 2\).*re-encode it as UTF-8"):
        list(iter_documents(CorpusSpec(str(path))))
    jpath = tmp_path / "latin.jsonl"
    jpath.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match="byte offset 13"):
        list(iter_documents(CorpusSpec(str(jpath))))


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_corpus(tmp_path: Path, content: str) -> None:
    src = _write(tmp_path / "empty.txt", content)
    with pytest.raises(CorpusError, match="is empty.*pass a source with text"):
        list(iter_documents(CorpusSpec(src)))


def test_jsonl_bad_line_reports_line_number(tmp_path: Path) -> None:
    src = _write(tmp_path / "c.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(CorpusError, match=r"line 2 is not valid JSON.*one JSON object"):
        list(iter_documents(CorpusSpec(src)))


def test_jsonl_missing_field_lists_fields(tmp_path: Path) -> None:
    src = _write(tmp_path / "c.jsonl", '{"text": "ok"}\n{"body": "x", "id": 1}\n')
    with pytest.raises(CorpusError, match=r"line 2 has no field 'text'.*'body', 'id'.*text_field"):
        list(iter_documents(CorpusSpec(src)))


def test_jsonl_non_object_and_non_string(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.jsonl", "[1, 2]\n")
    with pytest.raises(CorpusError, match="line 1 is a JSON list, not an object"):
        list(iter_documents(CorpusSpec(src)))
    src = _write(tmp_path / "b.jsonl", '{"text": 5}\n')
    with pytest.raises(CorpusError, match="holds a int, not a string"):
        list(iter_documents(CorpusSpec(src)))


def test_parquet_without_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(CorpusError, match=r"no column 'text' \(its columns: 'body'\)"):
        list(iter_documents(CorpusSpec(str(path))))


def test_broken_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match="not a readable parquet file"):
        list(iter_documents(CorpusSpec(str(path))))


def test_hf_without_datasets_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(CorpusError, match=r"pip install 'lookuplens\[datasets\]'"):
        list(iter_documents(CorpusSpec("org/some-dataset")))


def test_hf_unreachable_says_to_pass_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: object, **kwargs: object) -> object:
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(CorpusError, match="cannot be fetched.*pass a local"):
        list(iter_documents(CorpusSpec("hf:org/some-dataset")))


def test_hf_streams_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    def load_dataset(name: str, config: str | None, split: str, streaming: bool) -> object:
        calls.append((name, config, split, streaming))
        return iter([{"text": "a"}, {"text": ""}, {"text": "b"}, {"text": "c"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    spec = CorpusSpec("hf:org/ds:cfg", split="test", max_docs=2)
    assert _texts(spec) == [(0, "a"), (1, "b")]
    assert calls == [("org/ds", "cfg", "test", True)]

    spec = CorpusSpec("hf:org/ds", text_field="body")
    with pytest.raises(CorpusError, match=r"no feature 'body' \(its features: 'text'\)"):
        list(iter_documents(spec))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": ""}, "non-empty"),
        ({"source": "x.txt", "txt_mode": "lines"}, "txt_mode must be one of"),
        ({"source": "x.txt", "max_docs": 0}, "max_docs must be at least 1"),
        ({"source": "x.txt", "max_context": 1}, "max_context must be at least 2"),
        ({"source": "x.txt", "max_tokens": True}, "max_tokens must be an integer"),
        ({"source": "hf:"}, "needs a dataset name"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CorpusSpec(**kwargs)  # type: ignore[arg-type]


# -------------------------------------------------------------------- tokenisation


def test_bos_rule_and_truncation(tokenizer: PreTrainedTokenizerFast) -> None:
    assert document_prefix_id(tokenizer) == tokenizer.bos_token_id == 0
    plain = tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    (full,) = tokenize(["the cat sat on the mat"], tokenizer, None)
    assert full.dtype == np.int64
    assert full.tolist() == [0, *plain]
    (cut,) = tokenize(["the cat sat on the mat"], tokenizer, 3)
    assert cut.tolist() == [0, *plain[:2]]
    assert not cut.flags.writeable


def test_eos_used_when_no_bos() -> None:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_train(["<|endoftext|>"]), eos_token="<|endoftext|>"
    )
    assert tok.bos_token_id is None
    assert document_prefix_id(tok) == 0
    assert tokenize(["a dog"], tok, None)[0][0] == 0


def test_no_bos_no_eos_prepends_nothing_and_logs(
    bare_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    assert document_prefix_id(bare_tokenizer) is None
    plain = bare_tokenizer("a dog ran", add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="lookuplens.corpus"):
        (arr,) = tokenize(["a dog ran"], bare_tokenizer, 2)
    assert arr.tolist() == plain[:2]
    assert "neither a BOS nor an EOS" in caplog.text


def test_iter_tokenized_context_and_model_limit(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast
) -> None:
    src = _write(tmp_path / "c.txt", "\n".join(SENTENCES))
    docs = list(iter_tokenized(CorpusSpec(src), tokenizer, None, batch_docs=2))
    assert [d.doc_id for d in docs] == list(range(len(SENTENCES)))
    expected = tokenize(SENTENCES, tokenizer, None)
    assert all(np.array_equal(d.tokens, e) for d, e in zip(docs, expected, strict=True))
    # spec.max_context and the model limit: the smaller one wins.
    for spec_max, model_max in [(4, None), (None, 4), (4, 9), (9, 4)]:
        docs = list(iter_tokenized(CorpusSpec(src, max_context=spec_max), tokenizer, model_max))
        assert max(len(d.tokens) for d in docs) == 4
        assert all(d.tokens[0] == 0 for d in docs)


def test_iter_tokenized_max_tokens_cuts_last_doc(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast
) -> None:
    src = _write(tmp_path / "c.txt", "\n".join(SENTENCES))
    full = list(iter_tokenized(CorpusSpec(src), tokenizer, None))
    budget = len(full[0].tokens) + 3
    docs = list(iter_tokenized(CorpusSpec(src, max_tokens=budget), tokenizer, None))
    assert [d.doc_id for d in docs] == [0, 1]
    assert sum(len(d.tokens) for d in docs) == budget
    assert docs[1].tokens.tolist() == full[1].tokens[:3].tolist()
    # A remainder of only the BOS token is dropped rather than yielded.
    budget = len(full[0].tokens) + 1
    docs = list(iter_tokenized(CorpusSpec(src, max_tokens=budget), tokenizer, None))
    assert [d.doc_id for d in docs] == [0]


def test_iter_tokenized_is_deterministic_and_chunk_independent(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast
) -> None:
    src = _write(tmp_path / "c.txt", "\n\n".join(SENTENCES * 3))
    spec = CorpusSpec(src, max_context=6)
    a = list(iter_tokenized(spec, tokenizer, 1024, batch_docs=1))
    b = list(iter_tokenized(spec, tokenizer, 1024, batch_docs=64))
    assert [(d.doc_id, d.tokens.tolist()) for d in a] == [(d.doc_id, d.tokens.tolist()) for d in b]


# ------------------------------------------------------------------------ batching


def _docs(lengths: list[int]) -> list[TokenizedDoc]:
    return [
        TokenizedDoc(i, np.arange(1, n + 1, dtype=np.int64) + 100 * i)
        for i, n in enumerate(lengths)
    ]


def test_make_batches_invariants() -> None:
    lengths = [3, 5, 2, 8, 1, 4, 4, 6, 2]
    docs = _docs(lengths)
    batches = list(make_batches(docs, max_batch_tokens=12, pad_id=-1))
    assert all(isinstance(b, Batch) for b in batches)
    # order preserved, nothing lost
    assert [d for b in batches for d in b.doc_ids] == list(range(len(lengths)))
    for b in batches:
        assert isinstance(b.input_ids, Int64[torch.Tensor, "batch pos"])
        assert isinstance(b.attention_mask, Int64[torch.Tensor, "batch pos"])
        rows, width = b.input_ids.shape
        assert b.input_ids.dtype == torch.int64 and b.attention_mask.dtype == torch.int64
        assert b.attention_mask.shape == (rows, width)
        assert rows * width <= 12
        assert width == max(b.lengths)
        assert b.n_tokens == int(b.attention_mask.sum())
        for row, (doc_id, n) in enumerate(zip(b.doc_ids, b.lengths, strict=True)):
            assert b.input_ids[row, :n].tolist() == docs[doc_id].tokens.tolist()
            assert b.attention_mask[row, :n].eq(1).all() and b.attention_mask[row, n:].eq(0).all()
            assert b.input_ids[row, n:].eq(-1).all()
    # greedy: the next doc would not have fit into each batch
    for b, nxt in zip(batches, batches[1:], strict=False):
        n_next = lengths[nxt.doc_ids[0]]
        assert (len(b.doc_ids) + 1) * max(max(b.lengths), n_next) > 12


def test_make_batches_oversized_doc_gets_own_batch() -> None:
    batches = list(make_batches(_docs([2, 20, 2]), max_batch_tokens=8, pad_id=0))
    assert [b.doc_ids for b in batches] == [(0,), (1,), (2,)]
    assert batches[1].input_ids.shape == (1, 20)


def test_make_batches_rejects_bad_budget() -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        list(make_batches(_docs([2]), max_batch_tokens=0, pad_id=0))


# --------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_sensitive(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast
) -> None:
    src = _write(tmp_path / "c.txt", "\n".join(SENTENCES))
    spec = CorpusSpec(src)
    fp1 = corpus_fingerprint(iter_tokenized(spec, tokenizer, None))
    fp2 = corpus_fingerprint(iter_tokenized(spec, tokenizer, None, batch_docs=1))
    assert fp1 == fp2
    assert len(fp1.fingerprint) == 64
    assert fp1.documents == len(SENTENCES)
    assert fp1.tokens == sum(len(t) for t in tokenize(SENTENCES, tokenizer, None))

    hasher = CorpusHasher()
    seen = list(hasher.track(iter_tokenized(spec, tokenizer, None)))
    assert len(seen) == len(SENTENCES) and hasher.result() == fp1

    assert corpus_fingerprint(iter_tokenized(CorpusSpec(src, max_docs=4), tokenizer, None)) != fp1
    assert corpus_fingerprint(iter_tokenized(spec, tokenizer, 5)) != fp1
    # Same tokens, different document boundaries -> different fingerprint.
    a = corpus_fingerprint([TokenizedDoc(0, np.array([1, 2, 3])), TokenizedDoc(1, np.array([4]))])
    b = corpus_fingerprint([TokenizedDoc(0, np.array([1, 2])), TokenizedDoc(1, np.array([3, 4]))])
    assert a.fingerprint != b.fingerprint

    meta = corpus_meta(spec, fp1)
    assert meta["source"] == src and meta["fingerprint"] == fp1.fingerprint
    assert meta["documents"] == fp1.documents and meta["tokens"] == fp1.tokens
