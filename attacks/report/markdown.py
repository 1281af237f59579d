"""Markdown rendering of the report blocks (report.md; images are links to the PNGs)."""

from __future__ import annotations

from attacks.report.document import Block, Heading, Image, Paragraph, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            text = f"**{block.text}**" if block.emphasis == "fail" else block.text
            lines += [text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_cell(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            for row in block.rows:
                lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
            lines.append("")
        elif isinstance(block, Image):
            lines += [f"![{block.caption}]({block.path.as_posix()})", "", f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"
