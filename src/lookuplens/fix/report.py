"""The offline report of a fix (placeholder until the full page lands)."""

from __future__ import annotations

import html
import json
from typing import Any


def render_fix_report(fix: dict[str, Any]) -> str:
    return (
        "<!doctype html><meta charset=utf-8><title>lookuplens fix</title><pre>"
        + html.escape(json.dumps(fix["chosen"], indent=2))
        + "</pre>"
    )
