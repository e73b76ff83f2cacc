"""A self-contained HTML report: provenance, key numbers and every figure as an embedded PNG."""
from __future__ import annotations

import base64
import html
import io as _io
import json
import os
from pathlib import Path

from .figures import result_figures


def write_report(results: dict, path, title: str = "tomostrain report") -> Path:
    """Write ``results`` (a result tree as read by ``tomostrain.io.read_results``) as HTML.

    The file embeds its figures, so it can be mailed or archived alone. Written atomically.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts.append(_table("Provenance", _flatten(results.get("provenance", {}).get("@attrs", {}))))
    numbers = results.get("tomo", {}).get("quantify", {}).get("@attrs", {})
    if numbers:
        parts.append(_table("Tomography: quantification", _flatten(numbers)))
    summary = results.get("stem", {}).get("strain", {}).get("@attrs", {})
    if summary:
        parts.append(_table("4D-STEM: strain summary", _flatten(summary)))
    for caption, fig in result_figures(results):
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode()
        parts.append(f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    body = "\n".join(parts)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}"
        "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}"
        f"</style></head><body>{body}</body></html>"
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _flatten(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict):
            for k, v in value.items():
                out[f"{key}.{k}"] = v
        else:
            out[key] = value
    return out


def _table(heading: str, rows: dict) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<h2>{html.escape(heading)}</h2><table>{cells}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{', '.join(_fmt(v) for v in value[:8])}, ...] ({len(value)} values)"
    return str(value)
