"""Reading images the way the fusion-metric literature does, and pairing files by stem.

Reading convention (``shared/data/MANIFEST.md``): OpenCV decodes every file as 8-bit BGR (a gray file becomes three
equal channels), the pixels become float32, gray is Y = 0.299 R + 0.587 G + 0.114 B computed in float32 by
``cv2.cvtColor``, and Y is rounded half to even. The metrics then work on those integer values 0-255 as float64.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2")

# Leading bytes of the formats above, to tell "damaged image" from "not an image at all" in messages.
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"RIFF": "WebP",
}


class ImageReadError(Exception):
    """A file that exists but cannot be used as an image; the message says why, without the path."""


def _format_of(head: bytes) -> str | None:
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def decode_file(path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode an image file with OpenCV, raising :class:`ImageReadError` with a one-phrase reason on failure.

    Args:
        path: image file.
        flags: OpenCV ``IMREAD_*`` flags (``IMREAD_COLOR``: 8-bit BGR; ``IMREAD_UNCHANGED`` for index maps).

    Returns:
        The decoded array as OpenCV returns it (uint8 (H, W, 3) for ``IMREAD_COLOR``).
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"cannot be read ({err.strerror or err})") from None
    if data.size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as err:  # e.g. a header announcing an absurd size
        raise ImageReadError(f"cannot be decoded ({str(err).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        fmt = _format_of(data[:8].tobytes())
        if fmt is None:
            raise ImageReadError(f"not a decodable image ({data.size} bytes, unknown format)")
        raise ImageReadError(f"truncated or corrupt {fmt} file ({data.size} bytes)")
    return img


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image as the metric evaluators do: 8-bit BGR -> float32 -> Y (0.299 R + 0.587 G + 0.114 B) -> round.

    Args:
        path: any image OpenCV can decode (gray or colour, any depth; deeper files are scaled to 8 bits by OpenCV).

    Returns:
        (H, W) float64 array of integer values in [0, 255].

    Raises:
        ImageReadError: empty, truncated or non-image file.
    """
    bgr = decode_file(path, cv2.IMREAD_COLOR).astype(np.float32)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return np.round(gray).astype(np.float64)  # np.round rounds half to even


def list_images(folder: str | os.PathLike) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image files of a folder keyed by stem (not recursive; extension case-insensitive).

    Args:
        folder: directory to scan.

    Returns:
        ``(files, duplicates)``: ``files`` maps stem -> path for stems with exactly one image file; ``duplicates``
        maps stem -> paths for stems that several files share (e.g. ``a.png`` and ``a.jpg``), which are ambiguous.
    """
    by_stem: dict[str, list[Path]] = {}
    for entry in sorted(Path(folder).iterdir()):
        if entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith(".") and entry.is_file():
            by_stem.setdefault(entry.stem, []).append(entry)
    files = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}
    duplicates = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    return files, duplicates
