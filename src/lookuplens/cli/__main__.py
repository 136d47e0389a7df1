"""``python -m lookuplens.cli``: the same as the ``lookuplens`` command."""

from lookuplens.cli import main

main()
