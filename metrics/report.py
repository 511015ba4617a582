"""Tables (plain text, Markdown, LaTeX) with best / second-best marks, published numbers, JSON and CSV output.

A table is a mapping row name -> column -> value. Best and second-best values of each column are marked after
rounding to the printed precision (ties share a mark; "second" is the next distinct value):

- plain text: ``*`` after the best value, ``+`` after the second best (a legend line follows the table);
- Markdown: ``**best**`` and ``<u>second</u>``;
- LaTeX: ``\\textbf{best}`` and ``\\underline{second}``.

Published numbers (``--published``) come from a YAML or CSV file. YAML: ``{dataset: {method: {column: value}}}``,
where a value may itself be a mapping, flattened into "key sub-key" columns (``{Car: {Acc: 94.2}}`` becomes the
column ``Car Acc``). CSV: a header ``dataset,method,<columns...>`` (the ``dataset`` column is optional).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from utils.atomic import atomic_write_text

Table = Mapping[str, Mapping[str, float | None]]

PLAIN_BEST, PLAIN_SECOND = "*", "+"


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def rank_marks(
    table: Table, columns: Sequence[str], decimals: int = 3, lower_is_better: Sequence[str] = ()
) -> dict[tuple[str, str], int]:
    """Best (1) and second-best (2) cells of every column, compared at the printed precision.

    Args:
        table: row -> column -> value (missing or NaN cells are not ranked).
        columns: columns to rank.
        decimals: printed decimals; values equal after rounding tie.
        lower_is_better: columns where the smallest value wins (all Table I/II columns are higher-is-better).

    Returns:
        ``{(row, column): 1 or 2}``; columns with fewer than two ranked rows get no marks.
    """
    marks: dict[tuple[str, str], int] = {}
    for col in columns:
        cells = {row: round(float(vals[col]), decimals) for row, vals in table.items() if _finite(vals.get(col))}
        if len(cells) < 2:
            continue
        distinct = sorted(set(cells.values()), reverse=col not in lower_is_better)
        for rank, level in enumerate(distinct[:2], start=1):
            for row, value in cells.items():
                if value == level:
                    marks[(row, col)] = rank
    return marks


def _latex_escape(text: str) -> str:
    for char, repl in [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")]:
        text = text.replace(char, repl)
    return text


def format_table(
    table: Table,
    columns: Sequence[str],
    style: str = "plain",
    decimals: int = 3,
    row_header: str = "Method",
    caption: str | None = None,
    lower_is_better: Sequence[str] = (),
) -> str:
    """Render ``table`` with best / second-best marks.

    Args:
        table: row -> column -> value; rows keep their order.
        columns: columns to show, in order.
        style: ``"plain"``, ``"markdown"`` or ``"latex"``.
        decimals: digits after the decimal point.
        row_header: title of the first column.
        caption: optional line printed above the table (a LaTeX ``%`` comment in LaTeX).
        lower_is_better: columns where the smallest value wins.

    Returns:
        The table text, ending with a newline.
    """
    marks = rank_marks(table, columns, decimals, lower_is_better)

    def cell(row: str, col: str) -> str:
        value = table[row].get(col)
        if not _finite(value):
            return "-"
        text = f"{float(value):.{decimals}f}"
        rank = marks.get((row, col))
        if style == "markdown":
            return f"**{text}**" if rank == 1 else f"<u>{text}</u>" if rank == 2 else text
        if style == "latex":
            return rf"\textbf{{{text}}}" if rank == 1 else rf"\underline{{{text}}}" if rank == 2 else text
        return text + (PLAIN_BEST if rank == 1 else PLAIN_SECOND if rank == 2 else " ")

    rows = list(table)
    body = [[row, *(cell(row, col) for col in columns)] for row in rows]
    lines: list[str] = []
    if style == "markdown":
        if caption:
            lines += [caption, ""]
        lines.append("| " + " | ".join([row_header, *columns]) + " |")
        lines.append("|" + "|".join(["---", *(["---:"] * len(columns))]) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in body]
    elif style == "latex":
        if caption:
            lines.append(f"% {caption}")
        lines.append(r"\begin{tabular}{l" + "c" * len(columns) + "}")
        lines.append(r"\toprule")
        lines.append(" & ".join(_latex_escape(c) for c in [row_header, *columns]) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join([_latex_escape(r[0]), *r[1:]]) + r" \\" for r in body]
        lines.append(r"\bottomrule")
        lines.append(r"\end{tabular}")
    elif style == "plain":
        header = [row_header, *columns]
        widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
        if caption:
            lines.append(caption)

        def aligned(cells: Sequence[str]) -> str:
            pairs = enumerate(zip(cells, widths, strict=True))
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

        lines.append(aligned(header))
        lines.append("  ".join("-" * w for w in widths))
        lines += [aligned(r) for r in body]
        if marks:
            lines.append(f"({PLAIN_BEST} best, {PLAIN_SECOND} second best)")
    else:
        raise ValueError(f"unknown table style {style!r}; choose plain, markdown or latex")
    return "\n".join(lines) + "\n"


def _flatten(values: Mapping, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix} {key}".strip()
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        elif value is None:
            out[name] = math.nan
        else:
            out[name] = float(value)
    return out


def load_published(path: str | os.PathLike, dataset: str | None = None) -> dict[str, dict[str, float]]:
    """Published rows of one dataset from a YAML or CSV file (format in the module docstring).

    Args:
        path: ``.yaml``/``.yml`` or ``.csv`` file.
        dataset: dataset key; may be omitted when the file holds exactly one dataset.

    Returns:
        method -> column -> value, in file order.

    Raises:
        ValueError: malformed file, or ``dataset`` missing / ambiguous (the message lists the datasets).
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        data: dict[str, dict[str, dict[str, float]]] = {}
        for row in rows:
            if "method" not in row:
                raise ValueError(f"{path}: a published CSV needs a 'method' column")
            key = row.pop("dataset", None) or ""
            method = row.pop("method")
            values = {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
            data.setdefault(key, {})[method] = values
    else:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
        if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
            raise ValueError(f"{path}: expected {{dataset: {{method: {{column: value}}}}}}")
        data = {str(ds): {str(m): _flatten(v) for m, v in methods.items()} for ds, methods in raw.items()}
    if dataset is None:
        if len(data) != 1:
            raise ValueError(f"{path} holds several datasets ({', '.join(data)}); choose one with --published-dataset")
        return next(iter(data.values()))
    if dataset not in data:
        raise ValueError(f"dataset {dataset!r} not in {path}; it holds: {', '.join(data) or 'nothing'}")
    return data[dataset]


def json_number(value: float | None) -> float | None:
    """``value`` as a JSON-safe number: NaN and infinities become None (null)."""
    return None if value is None or not math.isfinite(value) else float(value)


def write_json(path: str | os.PathLike, document: Mapping) -> None:
    """Write ``document`` as indented JSON, atomically, creating its folder; NaN is refused (see json_number)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """CSV text; floats with 10 significant digits, NaN/None as empty cells."""

    def fmt(value: object) -> object:
        if isinstance(value, float):
            return f"{value:.10g}" if math.isfinite(value) else ""
        return "" if value is None else value

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[fmt(v) for v in row] for row in rows])
    return buffer.getvalue()


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write :func:`csv_text` to ``path`` atomically, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, csv_text(header, rows))
