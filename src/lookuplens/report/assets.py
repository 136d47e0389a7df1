"""The report's stylesheet and its optional script, inlined into every page."""

from __future__ import annotations

import base64
import hashlib

__all__ = ["CSS", "SCRIPT", "script_hash"]

CSS = """
:root {
  --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --panel: #f6f8fa;
  --accent: #0969da; --act: 37, 99, 235; --neg: 220, 38, 38; --attn: 234, 88, 12;
}
* { box-sizing: border-box; }
body {
  margin: 0; color: var(--fg); background: var(--bg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif;
  display: grid; grid-template-columns: 250px minmax(0, 1fr);
}
nav.toc {
  position: sticky; top: 0; height: 100vh; overflow-y: auto; padding: 16px 14px;
  border-right: 1px solid var(--line); background: var(--panel); font-size: 13px;
}
nav.toc h2 { font-size: 14px; margin: 0 0 8px; }
nav.toc ul { list-style: none; margin: 0; padding: 0 0 0 4px; }
nav.toc li { margin: 2px 0; }
nav.toc details > summary { cursor: pointer; margin: 6px 0 2px; font-weight: 600; }
nav.toc a { color: var(--fg); text-decoration: none; }
nav.toc a:hover { color: var(--accent); text-decoration: underline; }
main { padding: 20px 32px 60px; max-width: 1180px; }
header.top h1 { margin: 0 0 4px; font-size: 26px; }
header.top p { margin: 0; color: var(--muted); }
h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 17px; margin: 0 0 8px; display: flex; flex-wrap: wrap; gap: 8px;
  align-items: baseline; }
h4 { font-size: 14px; margin: 16px 0 6px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
a { color: var(--accent); }
code, .mono, .t, .tokpill, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas,
  "Liberation Mono", monospace; }
pre { background: var(--panel); padding: 10px; border-radius: 6px; overflow: auto;
  font-size: 12px; max-height: 360px; }
.note { color: var(--muted); font-style: italic; margin: 6px 0; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 6px 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin: 14px 0;
  background: var(--bg); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
  gap: 12px 24px; }
.numbers { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.number { background: var(--panel); border-radius: 8px; padding: 8px 12px; }
.number .v { font-size: 20px; font-weight: 600; }
.number .k { font-size: 12px; color: var(--muted); }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 4px 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: left;
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
table.sortable th { cursor: pointer; }
table.matrix td { text-align: right; background: rgba(var(--act), calc(var(--a, 0) * .55)); }
table.matrix td.negv { background: rgba(var(--neg), calc(var(--a, 0) * .55)); }
table.confusion td, table.confusion th { text-align: center; min-width: 64px; }
.scroll { overflow-x: auto; }
.badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 0 8px;
  border-radius: 10px;
  background: #eaeef2; color: #424a53; }
.badge.selected { background: #dafbe1; color: #116329; }
.badge.baseline { background: #eaeef2; color: #59636e; }
.badge.active { background: #ffe7d1; color: #953800; }
.badge.inactive { background: #f6f8fa; color: #59636e; }
.badge.score { background: #ddf4ff; color: #0550ae; }
.tokpill { background: var(--panel); border: 1px solid var(--line); border-radius: 4px;
  padding: 0 5px;
  font-size: 14px; }
.toklist { display: flex; flex-wrap: wrap; gap: 4px 6px; font-size: 13px; }
.toklist span.tokpill { font-size: 13px; }
.toklist .val { color: var(--muted); font-size: 11px; margin-left: 2px; }
.prompt { margin: 6px 0; padding: 6px 8px; border-left: 3px solid var(--line);
  background: #fbfcfd; }
.prompt.is-active { border-left-color: rgb(var(--attn)); }
.pmeta { font-size: 12px; color: var(--muted); margin-bottom: 2px; }
.toks { line-height: 1.95; overflow-wrap: anywhere; font-size: 13px; }
.t { padding: 1px 1px; margin: 0 1px 0 0; border-radius: 3px; white-space: pre-wrap; }
.t.act { background: rgba(var(--act), calc(var(--a) * .8)); }
.t.act.neg { background: rgba(var(--neg), calc(var(--a) * .8)); }
.t.attn { background: rgba(var(--attn), calc(var(--a) * .8)); }
.t.fire { outline: 2px solid #1f2328; outline-offset: 0; }
.legend { font-size: 12px; color: var(--muted); display: flex; gap: 10px; align-items: center;
  flex-wrap: wrap; }
.swatch { display: inline-block; width: 60px; height: 10px; border-radius: 2px;
  vertical-align: middle; }
.swatch.act { background: linear-gradient(90deg, rgba(var(--act), 0), rgba(var(--act), .8)); }
.swatch.neg { background: linear-gradient(90deg, rgba(var(--neg), 0), rgba(var(--neg), .8)); }
.swatch.attn { background: linear-gradient(90deg, rgba(var(--attn), 0), rgba(var(--attn), .8)); }
blockquote.explanation { margin: 6px 0; padding: 6px 12px; border-left: 4px solid var(--accent);
  background: #f3f8ff; white-space: pre-wrap; }
svg.figure { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
@media (max-width: 900px) {
  body { display: block; }
  nav.toc { position: static; height: auto; max-height: 40vh; border-right: 0;
    border-bottom: 1px solid var(--line); }
  main { padding: 14px; }
}
@media print {
  body { display: block; }
  nav.toc { display: none; }
  .card { break-inside: avoid; }
}
"""

SCRIPT = """
(function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v === null) { v = td.textContent.trim(); }
    var x = parseFloat(v);
    return isNaN(x) ? v.toLowerCase() : x;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('th').forEach(function (th, col) {
      th.title = 'click to sort';
      th.addEventListener('click', function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute('data-dir') === 'desc' ? 'asc' : 'desc';
        table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
        th.setAttribute('data-dir', dir);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          var c = x < y ? -1 : x > y ? 1 : 0;
          return dir === 'asc' ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def script_hash(script: str = SCRIPT) -> str:
    """The Content-Security-Policy source that allows exactly `script` to run."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"
