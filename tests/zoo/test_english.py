"""The real-English corpus reader and trainer (`lookuplens.zoo.english*`), and the
bundled English model as users load it."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch

from lookuplens.errors import UserError
from lookuplens.zoo import english
from lookuplens.zoo.english import Document, _sword_verses, _words_chunks, documents, split_of


def write_sword_module(root: Path, testament: str, verses: list[str], per_block: int) -> None:
    """A SWORD zText testament: verse entries packed `per_block` to a zlib block."""
    bzs, bzv, bzz = b"", b"", b""
    for b0 in range(0, len(verses), per_block):
        block = b""
        for v in verses[b0 : b0 + per_block]:
            raw = v.encode()
            bzv += struct.pack("<IIH", b0 // per_block, len(block), len(raw))
            block += raw
        packed = zlib.compress(block)
        bzs += struct.pack("<III", len(bzz), len(packed), len(block))
        bzz += packed
    bzv += struct.pack("<IIH", 0, 0, 0)  # an empty entry (a heading slot) is skipped
    (root / f"{testament}.bzs").write_bytes(bzs)
    (root / f"{testament}.bzv").write_bytes(bzv)
    (root / f"{testament}.bzz").write_bytes(bzz)


def test_sword_verses_are_read_in_order_without_markup(tmp_path: Path) -> None:
    ot = [
        '<chapter n="1" sID="Gen.1"/><w lemma="x">In</w> the beginning.',
        'God<note placement="foot">a footnote</note> made an <w>apple</w>.',
        '<title type="x">A heading</title><chapter sID="Gen.2"/>Then it rained.',
    ]
    nt = ["<chapter sID='Matt.1'/>The book.", "Of an owl."]
    write_sword_module(tmp_path, "ot", ot, per_block=2)
    write_sword_module(tmp_path, "nt", nt, per_block=1)
    got = list(_sword_verses(tmp_path))
    assert got == [
        (True, "In the beginning."),
        (False, "God made an apple."),
        (True, "Then it rained."),
        (True, "The book."),
        (False, "Of an owl."),
    ]


def test_passages_are_cut_at_sentence_ends_within_the_word_limit() -> None:
    para = " ".join(f"w{i}." if i % 5 == 4 else f"w{i}" for i in range(23))
    chunks = list(_words_chunks(iter([para, "short one", "another short"]), max_words=10))
    assert all(len(c.split()) <= 10 for c in chunks)
    assert chunks[0].endswith("w9.") and chunks[1].endswith("w19.")
    assert " ".join(chunks).split() == [*para.split(), "short", "one", "another", "short"]


def test_the_split_is_a_fixed_tenth_by_hash() -> None:
    splits = [split_of("src", f"text {i}") for i in range(2000)]
    assert splits == [split_of("src", f"text {i}") for i in range(2000)]
    assert 0.07 < splits.count("heldout") / len(splits) < 0.13
    assert Document("src", "text 3").split == splits[3]


def test_missing_debian_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(english, "SWORD_WEB", tmp_path / "nope")
    monkeypatch.setattr(english, "JARGON", tmp_path / "nope.gz")
    with pytest.raises(UserError, match="apt-get install sword-text-web jargon-text"):
        documents(sources=english.SOURCES[:2])


@pytest.mark.slow  # trains a model
def test_training_resumes_to_the_same_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A tiny run on a tiny corpus; interrupted after its first save, then rerun."""
    from lookuplens.zoo import english_train, fit
    from lookuplens.zoo.english_train import EnglishConfig, train_english
    from lookuplens.zoo.fit import FitSettings

    words = "the an a apple owl of in and so then old tree river stone".split()
    docs = [
        Document("web-bible", " ".join(words[(i * j) % len(words)] for j in range(30)) + f" {i}")
        for i in range(60)
    ]
    monkeypatch.setattr(english_train, "documents", lambda max_words: docs)
    cfg = EnglishConfig(steps=6, batch_size=4, n_layer=1, n_head=2, d_model=16, d_mlp=32,
                        vocab_size=300, num_threads=1, warmup_steps=2, log_every=2)  # fmt: skip
    whole = train_english(cfg, tmp_path / "whole", save_every=2)
    for name in ("model.safetensors", "tokenizer.json", "MODEL_CARD.md", "recipe.json"):
        assert (whole / name).is_file()
    held = [json.loads(x) for x in (whole / "heldout.jsonl").read_text().splitlines()]
    assert held and all(d["source"] == "web-bible" for d in held)

    real_lr = fit.lr_at

    def interrupt(step: int, s: FitSettings) -> float:
        if step == 3:
            raise KeyboardInterrupt
        return real_lr(step, s)

    monkeypatch.setattr(fit, "lr_at", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_english(cfg, tmp_path / "again", save_every=2)
    assert not (tmp_path / "again").exists()
    assert (tmp_path / ".again.partial" / "state.pt").is_file()
    monkeypatch.setattr(fit, "lr_at", real_lr)
    again = train_english(cfg, tmp_path / "again", save_every=2)
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".again.partial").exists()


def test_the_bundled_english_model_loads_by_name_and_scans_its_own_text() -> None:
    from lookuplens.errors import ModelLoadError
    from lookuplens.model import load_model
    from lookuplens.pipeline import build_config
    from lookuplens.zoo import bundled_model_path

    folder = bundled_model_path("english")
    lm = load_model("bundled:english", device="cpu")
    assert lm.vocab.convention == "byte_level" and lm.n_layers == 4
    assert lm.token_str(lm.resolve_token(" an")) == " an"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 20 * 2**20
    cfg = build_config(overrides={"model": "bundled:english"})
    assert cfg.corpus.source == str(folder / "heldout.jsonl")
    assert cfg.model_source == str(folder)
    named = build_config(overrides={"model": "bundled:english", "corpus.source": "my.txt"})
    assert named.corpus.source == "my.txt"
    assert build_config().corpus.source == "storyworld"
    shipped = {s.name for s in english.SOURCES if s.shipped}
    lines = (folder / "heldout.jsonl").read_text().splitlines()
    assert len(lines) > 500 and {json.loads(x)["source"] for x in lines} <= shipped
    card = (folder / "MODEL_CARD.md").read_text()
    for src in english.SOURCES:
        assert src.package in card and src.licence in card
    known = "bundled:storyworld, bundled:english, bundled:tripworld"
    with pytest.raises(ModelLoadError, match=known):
        load_model("bundled:klingon")
