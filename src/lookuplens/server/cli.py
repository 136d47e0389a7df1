"""``lookuplens serve``: the command that starts the dashboard (mounted by the main CLI)."""

from __future__ import annotations

import logging
import socket
from typing import Annotated

import typer

from lookuplens.errors import UserError

KEEP_ALIVE_S = 30
"""Seconds an idle keep-alive connection stays open. uvicorn's default (5 s) races with
clients that reuse a connection after waiting on a slow model call: the server closes it
just as the next request is sent, and the client sees a read error."""

log = logging.getLogger(__name__)

__all__ = ["serve_command"]


def _need_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(
            "the dashboard needs FastAPI and uvicorn: pip install 'lookuplens[serve]'"
        ) from None


def serve_command(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by lookuplens.")],
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Anything but loopback (127.0.0.1, localhost, ::1) "
            "requires a token."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    token: Annotated[
        str,
        typer.Option(
            envvar="LOOKUPLENS_TOKEN",
            help="Access token (at least 16 characters; prefer the LOOKUPLENS_TOKEN "
            "environment variable). Generated and printed when --host is not loopback.",
            show_default=False,
        ),
    ] = "",
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="The model to run (hub id or folder). Default: the run's model.",
        ),
    ] = "",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_prompt_tokens: Annotated[
        int, typer.Option(help="Longest playground prompt, in tokens.")
    ] = 256,
    max_new_tokens: Annotated[
        int, typer.Option(help="Longest generated continuation, in tokens.")
    ] = 64,
) -> None:
    """Serve a local web dashboard of a run: explore it and intervene on the model live."""
    _need_extra()
    import uvicorn

    from lookuplens.server.app import create_app
    from lookuplens.server.config import ServeConfig

    if not 0 <= port <= 65535:
        raise UserError(f"--port must lie between 0 and 65535, got {port}")
    try:
        cfg = ServeConfig(
            device=device,
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            default_new_tokens=min(16, max_new_tokens),
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    app = create_app(run_dir, model=model or None, token=token or None, host=host, config=cfg)
    secret = app.state.token
    sock = _bind(host, port)
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S
    )
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if secret is not None:
        url += f"?token={secret}"
        if not token:
            typer.echo(f"access token (generated): {secret}")
    typer.echo(f"lookuplens dashboard of {run_dir}: {url}")
    typer.echo("press Ctrl+C to stop")
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one, printed by the caller."""
    try:
        family, kind, proto, _name, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e}); pick another --port") from None
    sock.listen(128)
    return sock
