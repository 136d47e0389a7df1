"""Token strings made visible and escaped, and shaded token spans.

A token is shown as the text it decodes to, with spaces as a middle dot (``·``),
newlines as ``↵``, tabs as ``⇥`` and other control characters as ``\\xNN``; then it is
HTML-escaped. A shaded token is a ``<span class="t ...">`` whose background strength is
the CSS variable ``--a`` (0 to 1) and whose ``title`` holds the exact value.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Callable, Sequence
from typing import Literal

from lookuplens.report.markup import Html

__all__ = ["TokenText", "shaded_tokens", "token_label", "token_pill", "visible"]

TokenText = Callable[[int], str]
"""Decodes one token id to its text."""

_REPLACE = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def visible(text: str) -> str:
    """`text` with whitespace and control characters made visible (not escaped)."""
    out = []
    for ch in text:
        if ch in _REPLACE:
            out.append(_REPLACE[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) if out else "\u2205"  # an empty token shows as the empty-set sign


def token_label(text: str) -> str:
    """A token made visible and HTML-escaped, ready to insert into a page."""
    return html.escape(visible(text))


def token_pill(text: object) -> Html:
    """A token as a boxed label (``<span class="tokpill">``); None or "" shows as the
    empty token."""
    return Html(f'<span class="tokpill">{token_label(str(text or ""))}</span>')


def _num(x: float) -> str:
    return f"{x:.4g}"


def shaded_tokens(
    ids: Sequence[int],
    decode: TokenText,
    values: Sequence[float] | None,
    scale: float,
    kind: Literal["act", "attn"],
    value_name: str,
    mark_last: bool = True,
) -> str:
    """A prompt as token spans, each shaded by ``|value| / scale`` (clipped to 1).

    Negative values get the ``neg`` class (another colour); without `values` the tokens
    are plain. The last token (the firing token) is outlined when `mark_last`.
    """
    parts = []
    n = len(ids)
    for i, tid in enumerate(ids):
        text = decode(int(tid))
        cls = ["t"]
        style = ""
        title = f"{text!r} (id {int(tid)}, position {i})"
        if values is not None and i < len(values):
            v = float(values[i])
            a = min(abs(v) / scale, 1.0) if scale > 0 else 0.0
            cls.append(kind)
            if v < 0:
                cls.append("neg")
            style = f' style="--a:{a:.2f}"'
            title += f" {value_name} {_num(v)}"
        if mark_last and i == n - 1:
            cls.append("fire")
        parts.append(
            f'<span class="{" ".join(cls)}"{style} title="{html.escape(title, quote=True)}">'
            f"{token_label(text)}</span>"
        )
    return "".join(parts)
