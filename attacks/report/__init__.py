"""audit.json, Markdown and self-contained HTML reports, and the PNG plots they show."""
