"""Result tables of the reproduction scripts: one printed/Markdown table per section (published rows beside ours),
written as ``.md``, ``.json`` and ``.csv``."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metrics.report import format_table, json_number, load_published, write_csv, write_json
from scripts.repro_common import PAPER_SUFFIX, json_safe, say, warn
from utils.atomic import atomic_write_text


@dataclass
class Section:
    """One printed table: published rows and ours with the same columns.

    Attributes:
        title: caption line (Markdown heading).
        columns: column names, in order.
        rows: row name → column → value (published rows first, then ours).
        sources: row name → ``paper`` or ``ours``.
        decimals: printed decimals.
        note: an optional line printed under the table.
    """

    title: str
    columns: list[str]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    decimals: int = 3
    note: str = ""

    def add(self, name: str, values: Mapping[str, float], source: str) -> None:
        """Append a row; column names are matched case-insensitively, missing ones stay empty."""
        lookup = {k.lower(): v for k, v in values.items()}
        self.rows[name] = {c: lookup.get(c.lower(), math.nan) for c in self.columns}
        self.sources[name] = source

    def add_published(self, rows: Mapping[str, Mapping[str, float]]) -> None:
        """Append published rows, each named with the ``(paper)`` suffix."""
        for name, values in rows.items():
            self.add(name + PAPER_SUFFIX, values, "paper")

    def render(self, style: str) -> str:
        """The table in ``plain`` or ``markdown`` style (best / second best marked per column)."""
        text = format_table(self.rows, self.columns, style=style, decimals=self.decimals,
                            caption=f"### {self.title}" if style == "markdown" else self.title)
        if self.note:
            text += ("\n" if style == "markdown" else "") + self.note + "\n"
        return text


def published_rows(path: Path, dataset: str | None) -> dict[str, dict[str, float]]:
    """Rows of one dataset of a published-table file; {} (with a warning) when the dataset is not in it."""
    try:
        return load_published(path, dataset)
    except ValueError as err:
        warn(f"no published rows: {err}")
        return {}


def write_tables(stem: Path, sections: Sequence[Section], meta: Mapping[str, Any], quiet: bool = False) -> list[Path]:
    """Print the sections and write ``stem.md``, ``stem.json`` and ``stem.csv``.

    JSON: ``{**meta, "sections": [{"title", "columns", "rows": {row: {"source", col: value}}}]}`` (NaN → null).
    CSV: ``section,row,source,<all columns>``.

    Returns:
        The three written paths.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for section in sections:
        print(section.render("plain"), flush=True)
    markdown = "\n".join(s.render("markdown") for s in sections)
    md_path, json_path, csv_path = (stem.with_suffix(ext) for ext in (".md", ".json", ".csv"))
    atomic_write_text(md_path, markdown)
    document = {
        **meta,
        "sections": [
            {"title": s.title, "columns": s.columns, "note": s.note,
             "rows": {r: {"source": s.sources[r], **{c: json_number(v) for c, v in vals.items()}}
                      for r, vals in s.rows.items()}}
            for s in sections
        ],
    }
    write_json(json_path, json_safe(document))
    columns: list[str] = []
    for s in sections:
        columns += [c for c in s.columns if c not in columns]
    rows = [[s.title, r, s.sources[r], *(vals.get(c, math.nan) for c in columns)]
            for s in sections for r, vals in s.rows.items()]
    write_csv(csv_path, ["section", "row", "source", *columns], rows)
    if not quiet:
        say(f"wrote {md_path}, {json_path.name}, {csv_path.name}")
    return [md_path, json_path, csv_path]
