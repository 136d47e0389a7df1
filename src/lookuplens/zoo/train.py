"""``python -m lookuplens.zoo.train --out DIR``: train the storyworld tokenizer and model.

The recipe lives in `lookuplens.zoo.storyworld_train` and the command in
`lookuplens.zoo.cli` (``lookuplens zoo train``); this module runs that command and keeps
the recipe's names importable from ``lookuplens.zoo.train``.
"""

from __future__ import annotations

from lookuplens.zoo.storyworld_train import (
    CHECKPOINT_FILES,
    TrainConfig,
    TrainResult,
    build_model,
    echo_sequences,
    measure,
    train,
    train_tokenizer,
)
from lookuplens.zoo.training import (
    gpt2_model,
    package_versions,
    partial_path,
    prepare_out_dir,
    publish_folder,
)

__all__ = [
    "CHECKPOINT_FILES",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "echo_sequences",
    "gpt2_model",
    "measure",
    "package_versions",
    "partial_path",
    "prepare_out_dir",
    "publish_folder",
    "train",
    "train_tokenizer",
]

if __name__ == "__main__":
    from lookuplens.zoo.cli import train_main

    train_main()
