"""Self-contained HTML rendering of the report blocks: PNGs are embedded as data URIs."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from attacks.report.document import Block, Heading, Image, Paragraph, Table

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.fail { background: #fde2e1; border-left: 4px solid #c62828; padding: 0.5rem; font-weight: bold; }
.ok { background: #e6f4ea; border-left: 4px solid #2e7d32; padding: 0.5rem; }
figure { margin: 1rem 0; } figcaption { font-size: 0.85rem; color: #555; }
img { max-width: 100%; }
"""


def _inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _data_uri(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def render_html(blocks: list[Block], root: Path, title: str = "securedream privacy audit") -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            cls = f' class="{block.emphasis}"' if block.emphasis else ""
            parts.append(f"<p{cls}>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append("<table><thead><tr>")
            parts += [f"<th>{_inline(h)}</th>" for h in block.header]
            parts.append("</tr></thead><tbody>")
            for row in block.rows:
                parts.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            parts.append("</tbody></table>")
        elif isinstance(block, Image):
            src = _data_uri(root / block.path)
            parts.append(
                f'<figure><img src="{src}" alt="{html.escape(block.caption)}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
