"""Token ids as running text under every tokenizer convention (`lookuplens.model.vocab`).

The SentencePiece cases use the real Mistral 7B v1 tokenizer (shipped in the PyPI package
mistral-common); the others are trained here on a few sentences.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lookuplens.errors import UserError
from lookuplens.model.tiny import build_tokenizer
from lookuplens.model.vocab import Vocab, detect_convention
from lookuplens.neurons import NeuronsConfig, token_passes

TEXTS = (
    "She bought an apple and a pear at the market.",
    "An owl sat on an old oak tree near the river.",
    "I picked up an orange and then I picked a lemon.",
    "Naïve café owners sell crème brûlée for 12 euros.",
)
KINDS = {
    "byte_level": "byte_level",
    "sentencepiece": "metaspace",
    "word_level": "word_level",
    "wordpiece": "wordpiece",
}


@pytest.fixture(scope="module", params=list(KINDS))
def vocab(request: pytest.FixtureRequest) -> Vocab:
    return Vocab(build_tokenizer(TEXTS, vocab_size=400, kind=request.param))


@pytest.fixture(scope="module")
def sp() -> Vocab:
    return Vocab(build_tokenizer(kind="sentencepiece"))


def test_the_convention_is_read_from_the_tokenizer(vocab: Vocab) -> None:
    kind = {v: k for k, v in KINDS.items()}[vocab.convention]
    assert vocab.convention == KINDS[kind]
    assert detect_convention(vocab.tokenizer) == vocab.convention


def test_running_text_of_a_sentence_is_the_sentence(vocab: Vocab) -> None:
    """Every word of a sentence is one or more tokens; its first token starts the word."""
    text = "She bought an apple and a pear"
    ids = vocab.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vocab.join(ids).strip() == text
    words = vocab.join(ids).split()
    starts = [i for i in ids if vocab.starts_word(i)]
    # the first word of a byte-level text has no space before it, so it is not a word start
    assert len(starts) >= len(words) - 1
    an = vocab.resolve(" an")
    assert vocab.text(an) == " an" and vocab.starts_word(an) and vocab.word(an) == "an"
    assert an in ids


def test_typed_forms_resolve_to_the_word_start_token(vocab: Vocab) -> None:
    an = vocab.resolve(" an")
    marks = {"byte_level": "\u0120an", "metaspace": "\u2581an"}
    for typed in (" an", marks.get(vocab.convention, " an"), "\u2581an", "\u0120an"):
        assert vocab.resolve(typed) == an, typed


def test_sentencepiece_pieces_render_as_running_text(sp: Vocab) -> None:
    tok = sp.tokenizer
    an, cont = tok.convert_tokens_to_ids("\u2581an"), tok.convert_tokens_to_ids("an")
    assert sp.convention == "metaspace" and sp.size == 32000
    # the decoder alone drops the space: the bug this module exists for
    assert tok.decode([an]) == "an"
    assert sp.text(an) == " an" and sp.starts_word(an)
    assert sp.text(cont) == "an" and not sp.starts_word(cont)
    assert sp.resolve(" an") == an and sp.resolve("\u2581an") == an
    assert sp.resolve("an") == cont, "a string that is a continuation piece means that piece"
    byte_a = tok.convert_tokens_to_ids("<0x41>")
    assert sp.text(byte_a) == "A" and not sp.starts_word(byte_a)
    bos = tok.bos_token_id
    assert sp.text(bos) == "<s>" and not sp.starts_word(bos) and bos in sp.special_ids
    # bytes of one character split over byte pieces are joined before decoding
    e_acute = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "é".encode()]
    assert sp.join(e_acute) == "é"


def test_byte_level_joins_a_character_split_over_tokens() -> None:
    v = Vocab(build_tokenizer(TEXTS, vocab_size=260, kind="byte_level"))
    ids = v.tokenizer(" brûlée", add_special_tokens=False)["input_ids"]
    assert v.join(ids) == " brûlée" == v.tokenizer.decode(ids)


def test_word_level_and_wordpiece_words_carry_their_separating_space() -> None:
    wl = Vocab(build_tokenizer(TEXTS, kind="word_level"))
    apple = wl.resolve("apple")
    assert wl.text(apple) == " apple" and wl.resolve(" apple") == apple
    assert wl.tokenizer.decode([apple]) == "apple"
    wp = Vocab(build_tokenizer(TEXTS, vocab_size=120, kind="wordpiece"))
    cont = [i for p, i in wp.tokenizer.get_vocab().items() if p.startswith("##")]
    assert cont, "the WordPiece vocabulary has continuation pieces"
    piece = wp.piece(cont[0])
    assert piece is not None and wp.text(cont[0]) == piece[2:]
    assert not wp.starts_word(cont[0])


def test_a_string_of_several_tokens_lists_its_pieces(sp: Vocab) -> None:
    with pytest.raises(UserError, match=r"not a single token.*2 pieces \[' apple', ' pie'\]"):
        sp.resolve(" apple pie", "target")
    with pytest.raises(UserError, match="empty"):
        sp.resolve("")


def test_the_paper_filter_means_the_same_under_every_convention(vocab: Vocab) -> None:
    """A word start longer than 2 characters with its space: " an" and " apple" pass (the
    paper's own example, GPT-2's " an"), " a", continuation pieces and specials do not."""
    cfg = NeuronsConfig()
    assert token_passes(vocab, vocab.resolve(" an"), cfg)
    assert not token_passes(vocab, vocab.resolve(" a"), cfg)
    for tid in vocab.special_ids:
        assert not token_passes(vocab, tid, cfg)
    n = len(vocab.tokenizer)
    passing = [t for t in range(n) if token_passes(vocab, t, cfg)]
    assert passing and all(vocab.text(t).startswith(" ") for t in passing)
    excluded = NeuronsConfig(exclude_tokens=(" an",))
    assert not token_passes(vocab, vocab.resolve(" an"), excluded)


def test_a_slow_tokenizer_is_read_from_its_vocabulary() -> None:
    """Without a fast backend the marks of the vocabulary decide."""
    pieces = {"<s>": 0, "\u2581an": 1, "\u2581apple": 2, "an": 3, "\u2581the": 4}
    slow = SimpleNamespace(get_vocab=lambda: pieces)
    assert detect_convention(slow) == "metaspace"
    gpt = SimpleNamespace(get_vocab=lambda: {"\u0120an": 0, "an": 1, "\u0120the": 2})
    assert detect_convention(gpt) == "byte_level"
    assert detect_convention(SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 1})) == "plain"


def test_a_tokenizer_that_needs_a_missing_package_says_which(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' own words when sentencepiece (or protobuf) is missing become one line
    naming the package to install."""
    import transformers

    from lookuplens.errors import ModelLoadError
    from lookuplens.model import load_model

    def needs_sentencepiece(*args: object, **kwargs: object) -> None:
        raise ImportError(
            "LlamaTokenizer requires the SentencePiece library but it was not found in your "
            "environment. Check out the instructions on the installation page"
        )

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", needs_sentencepiece)
    with pytest.raises(ModelLoadError, match="needs the Python package 'sentencepiece'.*pip"):
        load_model(tiny_dirs["llama"], device="cpu")

    def needs_protobuf(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'google.protobuf'", name="google.protobuf")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", needs_protobuf)
    with pytest.raises(ModelLoadError, match="'protobuf'.*pip install protobuf"):
        load_model(tiny_dirs["llama"], device="cpu")
