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
    "PLANTED",
    "Annotation",
    "Document",
    "TokenAnnotation",
    "default_model_path",
    "generate_corpus",
    "token_positions",
]


def default_model_path() -> Path:
    """The folder of the shipped storyworld checkpoint (loadable with ``from_pretrained``)."""
    return Path(__file__).resolve().parent / "storyworld_model"
