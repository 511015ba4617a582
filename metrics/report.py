"""Tables (plain text, Markdown, LaTeX) with best / second-best marks, published numbers, JSON and CSV output.

A table is a mapping row name -> column -> value. Best and second-best values of each column are marked after
rounding to the printed precision (ties share a mark; "second" is the next distinct value):

- plain text: ``*`` after the best value, ``+`` after the second best (a legend line follows the table);
- Markdown: ``**best**`` and ``<u>second</u>``;
- LaTeX: ``\\textbf{best}`` and ``\\underline{second}``.

With ``directions`` every header shows which way is better: ``EN ↑`` / ``MSE ↓`` in Markdown, ``$\\uparrow$`` /
``$\\downarrow$`` in LaTeX; the plain style (ASCII only, safe on any console) says it in a legend line. Rows can
be shown without taking part in the ranking (reference rows), and columns left unranked (when the rows were not
scored on a common image set).

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
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import yaml

from utils.atomic import atomic_write_text

Table = Mapping[str, Mapping[str, float | None]]

PLAIN_BEST, PLAIN_SECOND = "*", "+"
ARROW_UP, ARROW_DOWN = "\u2191", "\u2193"  # ↑ higher is better, ↓ lower is better


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def rank_marks(
    table: Table,
    columns: Sequence[str],
    decimals: int = 3,
    lower_is_better: Sequence[str] = (),
    rows: Collection[str] | None = None,
) -> dict[tuple[str, str], int]:
    """Best (1) and second-best (2) cells of every column, compared at the printed precision.

    Args:
        table: row -> column -> value (missing or NaN cells are not ranked).
        columns: columns to rank.
        decimals: printed decimals; values equal after rounding tie.
        lower_is_better: columns where the smallest value wins (MSE; all Table I/II columns are higher-is-better).
        rows: the rows that compete (default: all).

    Returns:
        ``{(row, column): 1 or 2}``; columns with fewer than two ranked rows get no marks.
    """
    marks: dict[tuple[str, str], int] = {}
    for col in columns:
        cells = {
            row: round(float(vals[col]), decimals)
            for row, vals in table.items()
            if (rows is None or row in rows) and _finite(vals.get(col))
        }
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
    directions: Mapping[str, str] | None = None,
    rank_rows: Collection[str] | None = None,
    rank_columns: Collection[str] | None = None,
) -> str:
    """Render ``table`` with best / second-best marks.

    Args:
        table: row -> column -> value; rows keep their order.
        columns: columns to show, in order.
        style: ``"plain"``, ``"markdown"`` or ``"latex"``.
        decimals: digits after the decimal point.
        row_header: title of the first column.
        caption: optional text printed above the table (each line a LaTeX ``%`` comment in LaTeX).
        lower_is_better: columns where the smallest value wins.
        directions: column -> ``"higher"`` or ``"lower"``; those headers get an arrow pointing the better way.
        rank_rows: rows that take part in the marks (default: all); the others are shown unmarked.
        rank_columns: columns that get marks (default: all).

    Returns:
        The table text, ending with a newline.
    """
    directions = directions or {}
    lower = [*lower_is_better, *(c for c in columns if directions.get(c) == "lower")]
    ranked = [c for c in columns if rank_columns is None or c in rank_columns]
    marks = rank_marks(table, ranked, decimals, lower, rank_rows)
    arrows = {"markdown": {"higher": ARROW_UP, "lower": ARROW_DOWN}, "latex": {"higher": r"$\uparrow$",
                                                                           "lower": r"$\downarrow$"}}  # fmt: skip

    def header(col: str) -> str:
        name = _latex_escape(col) if style == "latex" else col
        if col not in directions or style not in arrows:
            return name
        return f"{name} {arrows[style][directions[col]]}"

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
        lines.append("| " + " | ".join([row_header, *(header(c) for c in columns)]) + " |")
        lines.append("|" + "|".join(["---", *(["---:"] * len(columns))]) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in body]
    elif style == "latex":
        if caption:
            lines += [f"% {line}" for line in caption.splitlines()]
        lines.append(r"\begin{tabular}{l" + "c" * len(columns) + "}")
        lines.append(r"\toprule")
        lines.append(" & ".join([_latex_escape(row_header), *(header(c) for c in columns)]) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join([_latex_escape(r[0]), *r[1:]]) + r" \\" for r in body]
        lines.append(r"\bottomrule")
        lines.append(r"\end{tabular}")
    elif style == "plain":
        head = [row_header, *(header(c) for c in columns)]
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        if caption:
            lines.append(caption)

        def aligned(cells: Sequence[str]) -> str:
            pairs = enumerate(zip(cells, widths, strict=True))
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

        lines.append(aligned(head))
        lines.append("  ".join("-" * w for w in widths))
        lines += [aligned(r) for r in body]
        if marks:
            lines.append(f"({PLAIN_BEST} best, {PLAIN_SECOND} second best)")
        if any(c in directions for c in columns):
            down = [c for c in columns if directions.get(c) == "lower"]
            lines.append(f"(lower is better: {', '.join(down)}; higher for the others)" if down
                         else "(higher is better in every column)")
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


def output_problem(path: str | os.PathLike) -> str | None:
    """Why a result file could not be written at ``path``, found before any work is done; None when it can.

    Creates the missing parent folders (as the writers would) and creates and removes a temporary file there, which
    is what the atomic writers need: a writable folder (the target's own permissions do not matter, it is replaced).

    Returns:
        A phrase such as ``"cannot create output folder 'x': File exists"``, or None.
    """
    path = Path(path)
    if path.is_dir():
        return f"'{path}' is a folder; give a file name"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create output folder '{path.parent}': {err.strerror or err}"
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        return f"cannot write in '{path.parent}': {err.strerror or err}"
    return None
