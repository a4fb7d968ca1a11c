"""Self-contained HTML pages: the page's CSS and script inlined, its data embedded as JSON.

Model-written text reaches the page only inside the embedded JSON, with ``<``, ``>``,
``&`` and U+2028/U+2029 escaped, so no text can close the script element or start
markup; the script then inserts texts with ``textContent`` only.

Example::

    html = render_page({"mode": "run", "run": page_data(load_log(path))}, title="run x")
    Path("run.html").write_text(html, encoding="utf-8")
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_TABLE = str.maketrans(_ESCAPES)


def embed_json(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (and parses to ``data``)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).translate(_TABLE)


def _asset(name: str) -> str:
    return resources.files("loopagent.view").joinpath("assets", name).read_text(encoding="utf-8")


def render_page(data: dict[str, Any], *, title: str) -> str:
    """One HTML document showing ``data`` (``mode`` is ``run``, ``compare`` or ``index``)."""
    script = f"\n{_asset('view.js')}\n"
    # Only this exact script may run: markup that slipped into the page could not execute anything.
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # No network: everything the page needs is in this file.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        f"style-src 'unsafe-inline'; script-src 'sha256-{digest}'; img-src data:; connect-src 'self'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_asset('view.css')}\n</style></head>\n"
        "<body><div id=\"app\"><noscript>This page needs JavaScript.</noscript></div>\n"
        f"<script id=\"data\" type=\"application/json\">{embed_json(data)}</script>\n"
        f"<script>{script}</script>\n</body></html>\n"
    )


def write_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary file, so a reader never sees half a page."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
