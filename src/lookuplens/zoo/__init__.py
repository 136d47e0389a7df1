"""The bundled storyworld: a synthetic corpus with planted context look-ups, and a small
GPT-2 trained on it whose mechanisms are known (ground truth for the pipeline).

Importing this package loads nothing; the model lives in :func:`default_model_path`.
"""

from __future__ import annotations

from pathlib import Path

from lookuplens.zoo.storyworld import (
    PLANTED,
    Annotation,
    Document,
    TokenAnnotation,
    generate_corpus,
    token_positions,
)

__all__ = [
    "BUNDLED_MODELS",
    "PLANTED",
    "Annotation",
    "Document",
    "TokenAnnotation",
    "bundled_corpus",
    "bundled_model_path",
    "default_model_path",
    "generate_corpus",
    "token_positions",
]


BUNDLED_MODELS: dict[str, str] = {
    "storyworld": "storyworld_model",
    "english": "english_model",
    "tripworld": "tripworld_model",
}
"""``bundled:NAME`` -> the folder of the shipped checkpoint beside this file."""


def default_model_path() -> Path:
    """The folder of the shipped storyworld checkpoint (loadable with ``from_pretrained``)."""
    return Path(__file__).resolve().parent / "storyworld_model"


def bundled_model_path(name: str) -> Path:
    """The folder of a shipped checkpoint: ``storyworld``, ``english`` or ``tripworld``
    (``bundled:`` may prefix it). Raises ``KeyError`` naming the known models."""
    key = name.removeprefix("bundled:")
    if key not in BUNDLED_MODELS:
        raise KeyError(
            f"no bundled model {name!r}; bundled models: "
            + ", ".join(f"bundled:{k}" for k in BUNDLED_MODELS)
        )
    return Path(__file__).resolve().parent / BUNDLED_MODELS[key]


def bundled_corpus(name: str) -> str:
    """The corpus a run on bundled model `name` scans by default: the storyworld generator
    for ``storyworld``, the shipped held-out documents (``heldout.jsonl``) otherwise."""
    key = name.removeprefix("bundled:")
    if key == "storyworld":
        return "storyworld"
    return str(bundled_model_path(key) / "heldout.jsonl")
