"""The local web dashboard: explore a run directory and intervene on its model live.

``lookuplens serve RUN_DIR`` (see `lookuplens.server.cli.serve_command`) serves
`create_app`: an overview of the run, a page per neuron and per (neuron, head) pair, a
playground that runs the model on typed prompts with heads switched off or scaled and
the neuron ablated or amplified, and a JSON API (``/api/...``) with the same data.

Needs the ``serve`` extra (FastAPI and uvicorn), imported only when `create_app` is
first used, so that ``lookuplens.server.cli`` can be imported without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookuplens.server.config import ServeConfig

if TYPE_CHECKING:
    from lookuplens.server.app import create_app

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> object:
    if name == "create_app":
        from lookuplens.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
