"""Pairing infrared, visible and label files by file stem, with any image extension, and naming every file that
has no partner."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from data.io import IMAGE_EXTENSIONS
from data.io import list_images as io_list_images

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset folder.

    Attributes:
        kind: short category, e.g. ``missing-partner``, ``missing-label``, ``duplicate-stem``, ``empty-folder``,
            ``missing-folder``, ``unreadable``, ``size-mismatch``, ``label-range``, ``absent-class``.
        path: the file or folder the problem is about.
        detail: what is wrong, in words.
    """

    kind: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass(frozen=True)
class PairPaths:
    """The files of one sample; ``name`` is the common file stem."""

    name: str
    ir: Path
    vi: Path
    label: Path | None = None


def ambiguous_stem(paths: list[Path]) -> str:
    """The one rule for a stem that several image files share (``a.png`` and ``a.jpg``), in ``test.py``, training and
    ``eval_metrics.py`` alike: it is ambiguous, none of them is used, and this says so naming the files."""
    return f"ambiguous: {', '.join(sorted(p.name for p in paths))} share the stem; none is used (keep one of them)"


def list_images(folder: PathLike) -> tuple[dict[str, Path], list[Problem]]:
    """Map file stem -> image path for the image files directly inside ``folder`` (the extensions of
    :data:`data.io.IMAGE_EXTENSIONS`, case-insensitive).

    Returns:
        (stems, problems): problems report a missing or empty folder, stems present under two extensions (ambiguous:
        none of the files is used; :func:`ambiguous_stem`), and entries named like images that are not files (a
        folder, a broken link), by name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}, [Problem("missing-folder", str(folder), "folder does not exist")]
    listing = io_list_images(folder)
    stems = dict(listing.files)
    problems: list[Problem] = []
    for stem, paths in sorted(listing.duplicates.items()):
        problems.append(Problem("duplicate-stem", str(folder / stem), ambiguous_stem(paths)))
    for stem, reason in sorted(listing.unusable.items()):
        problems.append(Problem("unusable", str(folder / stem), reason))
    stems = dict(sorted(stems.items()))
    if not listing:  # nothing named like an image (ambiguous or unusable entries are reported above)
        problems.append(Problem("empty-folder", str(folder), f"no image files ({', '.join(IMAGE_EXTENSIONS)})"))
    return stems, problems


def pair_files(
    ir_dir: PathLike, vi_dir: PathLike, label_dir: PathLike | None = None
) -> tuple[list[PairPaths], list[Problem]]:
    """Pair infrared, visible (and label) files by stem, with any image extension.

    Returns:
        (pairs, problems): ``pairs`` sorted by name, complete only (ir, vi and, when ``label_dir`` is given,
        label); ``problems`` names every file whose partner is missing, plus folder problems.
    """
    ir_files, problems = list_images(ir_dir)
    vi_files, vi_problems = list_images(vi_dir)
    problems += vi_problems
    label_files: dict[str, Path] = {}
    if label_dir is not None:
        label_files, label_problems = list_images(label_dir)
        problems += label_problems
    pairs: list[PairPaths] = []
    named = {Path(p.path).name for p in problems if p.kind in ("unusable", "duplicate-stem")}  # already reported
    for stem in sorted(set(ir_files) | set(vi_files)):
        ir, vi = ir_files.get(stem), vi_files.get(stem)
        if (ir is None or vi is None) and stem in named:
            continue
        if ir is None:
            problems.append(Problem("missing-partner", str(vi), f"no infrared image named '{stem}.*' in {ir_dir}"))
            continue
        if vi is None:
            problems.append(Problem("missing-partner", str(ir), f"no visible image named '{stem}.*' in {vi_dir}"))
            continue
        label = None
        if label_dir is not None:
            label = label_files.get(stem)
            if label is None:
                problems.append(Problem("missing-label", str(vi), f"no label named '{stem}.*' in {label_dir}"))
                continue
        pairs.append(PairPaths(stem, ir, vi, label))
    for stem in sorted(set(label_files) - set(ir_files) - set(vi_files)):
        problems.append(Problem("missing-partner", str(label_files[stem]),
                                f"label without infrared or visible image named '{stem}.*'"))
    return pairs, problems
