"""Self-contained HTML pages: escaped text, embedded images and data, no network.

Every string that comes from a file (paths, class names, settings) goes through `esc`; data for
scripts goes through `json_script`, which escapes ``<``, ``>`` and ``&`` so that no file name can
close the ``<script>`` element; images are embedded as ``data:`` URIs of bytes we checked or made.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_EMBED_BYTES = 20 << 20

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       color: #1b1f24; padding: 0 16px; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th { background: #f6f8fa; cursor: default; }
th.sortable { cursor: pointer; }
td:first-child, th:first-child { text-align: left; }
td.path { font-family: ui-monospace, monospace; font-size: 0.9em; text-align: left; }
.note { color: #57606a; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 150px; font-size: 0.78em; word-break: break-all; }
.card img { width: 150px; height: 150px; object-fit: cover; border: 1px solid #d0d7de; background: #eee; }
.plots img { max-width: 100%; border: 1px solid #d0d7de; margin: 4px 0; }
.warn { color: #9a6700; }
.leak { color: #cf222e; font-weight: bold; }
#summary ul { padding-left: 1.2em; } #summary li { margin: 6px 0; }
code { font-family: ui-monospace, monospace; background: #f6f8fa; padding: 2px 5px; }
details > summary { cursor: pointer; color: #57606a; margin: 6px 0; }
details.run > summary { color: inherit; } details.run > summary h2 { display: inline-block; }
"""

SORT_SCRIPT = """
// Click a sortable column heading to sort its table; marks the page ready when done.
document.querySelectorAll('table').forEach(function (table) {
  table.querySelectorAll('th.sortable').forEach(function (th, col) {
    th.title = 'sort';
    th.addEventListener('click', function () {
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      const dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
      th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
      rows.sort(function (a, b) {
        const x = a.cells[col].textContent, y = b.cells[col].textContent;
        const nx = parseFloat(x), ny = parseFloat(y);
        return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.body.setAttribute('data-ready', '1');
"""


def esc(value: Any) -> str:
    """Text for HTML (quotes escaped too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def json_script(element_id: str, data: Any) -> str:
    """A ``<script type="application/json">`` element that no string in ``data`` can break out of."""
    text = json.dumps(data, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_file_uri(path: Path) -> str | None:
    """A ``data:`` URI of a PNG file, or None if it is missing, too large or not a PNG."""
    from headstart.errors import UnsafeFileError
    from headstart.files import read_regular

    try:
        data = read_regular(path, MAX_EMBED_BYTES)  # no pipe, no device, no file past the cap
    except (OSError, UnsafeFileError):
        return None
    return data_uri(data, "image/png") if data.startswith(PNG_MAGIC) else None


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    classes: Sequence[str] = (),
    sortable: bool = False,
    table_id: str | None = None,
) -> str:
    """An HTML table; every cell is escaped. ``classes``: a CSS class per column ("" for none)."""
    th = '<th class="sortable">' if sortable else "<th>"
    head = "".join(f"{th}{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for k, value in enumerate(row):
            cls = classes[k] if k < len(classes) and classes[k] else ""
            td = f'<td class="{esc(cls)}">' if cls else "<td>"
            cells.append(f"{td}{esc(fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def cards(items: Sequence[dict[str, Any]], caption) -> str:
    """A grid of thumbnails (``item["thumb"]``, a data: URI or None) with ``caption(item)`` (HTML) under each."""
    out = []
    for item in items:
        img = f'<img alt="" src="{item["thumb"]}">' if item.get("thumb") else '<img alt="unreadable">'
        out.append(f'<div class="card">{img}<div>{caption(item)}</div></div>')
    return '<div class="grid">' + "".join(out) + "</div>"


def folded(title: str, content: str) -> str:
    """``content`` (HTML) behind a closed ``<details>`` whose summary is ``title`` (text)."""
    return f"<details><summary>{esc(title)}</summary>{content}</details>"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def page(title: str, body: str, script: str = "") -> str:
    """A whole HTML document: our own style and script inline, nothing loaded from anywhere."""
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
        f"<script>{script}</script>\n</body></html>\n"
    )
