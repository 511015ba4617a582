"""Image reading, colour conversion and writing: the project's one IO module (fusion, training and metrics).

Conventions (the names say them):

- ``*_float`` images / everything returned by :func:`read_image`: ``float32`` in [0, 1]; gray is (H, W), colour is
  (H, W, 3) in **RGB** order. 8-bit files are divided by 255, 16-bit files by 65535.
- YCrCb: OpenCV's definition on float input (Y = 0.299 R + 0.587 G + 0.114 B; Cr, Cb centred on 0.5), so the
  neutral chroma value is 0.5 and every channel stays in [0, 1] for in-gamut colours.
- Label maps: ``int64`` (H, W) class indices, read unchanged (no scaling).
- Metric reading (:func:`read_gray_0_255_metric_convention`): the fusion-metric literature's convention, gray
  float64 with integer values in [0, 255] (``shared/data/MANIFEST.md``).
- Files are read as bytes and decoded with ``cv2.imdecode`` (and written with ``cv2.imencode``), so paths with
  non-ASCII characters work on every platform; writes are atomic (temporary file, then rename).
- Pixels are always in stored order: an EXIF orientation tag is ignored by every reader here, so the fusion and
  the metrics see the same image (and the fused outputs, which carry no tag, line up with their sources).
- Folders: :func:`list_images` and :data:`IMAGE_EXTENSIONS` are the one way to find image files by stem.
- Every read failure is an :class:`ImageReadError` whose ``reason`` says what is wrong in words.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from utils.atomic import atomic_write_bytes

if TYPE_CHECKING:  # torch is imported where tensors are made, so the metrics' worker processes start without it
    import torch

PathLike = str | os.PathLike

# Neutral chroma value of OpenCV's float YCrCb (Cr = (R - Y) * 0.713 + 0.5, Cb = (B - Y) * 0.564 + 0.5).
CHROMA_NEUTRAL = 0.5

# The one list of image extensions (matched case-insensitively) that every folder reader of the project accepts:
# the formats OpenCV decodes in the wheels we install. Pairing by stem means any mix of them works.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2",
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Leading bytes of the formats above, to tell "damaged image" from "not an image at all" in messages.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
_PNM = {b"P1": "PBM", b"P2": "PGM", b"P3": "PPM", b"P4": "PBM", b"P5": "PGM", b"P6": "PPM"}
# Where a complete file of these formats ends; without it a decoding failure is called truncation.
_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the problem.

    Attributes:
        path: the offending file.
        reason: what went wrong, in words (without the path), e.g. ``"empty file (0 bytes)"``.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader and pool workers re-raise it)
        return (type(self), (self.path, self.reason))


class ImageWriteError(ValueError):
    """An image could not be written (bad array, unknown extension, or a protected input path)."""


class PairError(ValueError):
    """Two files that must form a pair do not match (for example different sizes); names both files."""


# ----------------------------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------------------------


def not_a_file_reason(path: PathLike) -> str | None:
    """Why ``path`` cannot be read as an image file, or None for an existing regular file (or a link to one).

    Returns:
        A phrase that reads after the file name: ``"does not exist"``, ``"is a broken symbolic link (…)"``,
        ``"is a folder, not an image file"``, ``"is not a regular file (…)"``; or None.
    """
    path = Path(path)
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link (its target '{os.readlink(path)}' does not exist)"
    if path.is_dir():
        return "is a folder, not an image file"
    if path.exists():
        return "is not a regular file (a device, pipe or socket)"
    return "does not exist"


@dataclass
class ImageListing:
    """The image files of one folder, keyed by file stem (see :func:`list_images`).

    Attributes:
        folder: the folder that was listed.
        files: stem -> path, for stems with exactly one image file.
        duplicates: stem -> paths, for stems several image files share (``a.png`` and ``a.jpg``): ambiguous.
        unusable: stem -> reason naming the entry, for names that look like images but are not readable files
            (``"a.png is a folder, not an image file"``, a broken symbolic link, a pipe) and whose stem has no
            image file.
    """

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    duplicates: dict[str, list[Path]] = field(default_factory=dict)
    unusable: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        """True when the folder holds anything named like an image."""
        return bool(self.files or self.duplicates or self.unusable)


def list_images(folder: PathLike) -> ImageListing:
    """List the entries of ``folder`` (not recursive) whose extension is in :data:`IMAGE_EXTENSIONS`.

    Hidden entries (names starting with ".") are skipped. Extensions match case-insensitively.

    Raises:
        FileNotFoundError, NotADirectoryError, PermissionError: ``folder`` cannot be listed.
    """
    folder = Path(folder)
    found: dict[str, list[Path]] = {}
    unusable: dict[str, str] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        reason = not_a_file_reason(entry)
        if reason is None:
            found.setdefault(entry.stem, []).append(entry)
        else:
            unusable.setdefault(entry.stem, f"{entry.name} {reason}")
    listing = ImageListing(folder)
    for stem, paths in found.items():
        if len(paths) == 1:
            listing.files[stem] = paths[0]
        else:
            listing.duplicates[stem] = paths
    listing.unusable = {stem: why for stem, why in unusable.items() if stem not in found}
    return listing


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def _sniff_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF":  # RIFF also wraps WAV and AVI; only the WEBP form is an image
        return "WebP" if head[8:12] == b"WEBP" else None
    if head[:2] in _PNM and head[2:3].isspace():
        return _PNM[head[:2]]
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def read_file_bytes(path: PathLike) -> np.ndarray:
    """Read a whole file as a flat ``uint8`` array, with clear errors for missing, empty or unreadable files.

    Raises:
        ImageReadError: the file is missing, a broken link, a folder, not a regular file, empty, or cannot be opened.
    """
    reason = not_a_file_reason(path)
    if reason is not None:  # checked first: reading a pipe would block, a folder gives a confusing OS error
        raise ImageReadError(path, reason)
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({exc.strerror or exc})") from exc
    if buffer.size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    return buffer


def _undecodable_reason(buffer: np.ndarray) -> str:
    """Why OpenCV returned nothing for these bytes: unknown format, a truncated file, or damaged data."""
    kind = _sniff_format(buffer[:16].tobytes())
    if kind is None:
        return f"not a recognised image format ({buffer.size} bytes starting with {buffer[:8].tobytes()!r})"
    end = _END_MARKERS.get(kind)
    if end is not None and end not in buffer[-64:].tobytes():
        return f"truncated {kind} file ({buffer.size} bytes; the {kind} end marker is missing)"
    return f"corrupt {kind} data or an unsupported {kind} variant ({buffer.size} bytes could not be decoded)"


def _decode(buffer: np.ndarray, flags: int, path: PathLike) -> np.ndarray | None:
    try:
        return cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # e.g. a header announcing an absurd size
        kind = _sniff_format(buffer[:16].tobytes()) or "file"
        detail = str(exc).strip().splitlines()[-1]
        raise ImageReadError(path, f"OpenCV cannot decode this {kind}: {detail}") from None


def decode_image_unchanged(path: PathLike) -> np.ndarray:
    """Decode an image file as stored: dtype and channels unchanged, colour in OpenCV's **BGR(A)** order.

    Palette PNGs come back expanded to BGR (or BGRA when they carry transparency). EXIF orientation is ignored
    (pixels in stored order), so infrared and visible files stay pixel-aligned and match the fused outputs, which
    carry no orientation tag; :func:`read_gray_0_255_metric_convention` reads the same way.

    Returns:
        (H, W) or (H, W, C) array of the file's sample type (usually ``uint8`` or ``uint16``).

    Raises:
        ImageReadError: missing, empty, not an image, or corrupt / truncated data.
    """
    buffer = read_file_bytes(path)
    image = _decode(buffer, cv2.IMREAD_UNCHANGED, path)
    if image is None or image.size == 0:
        raise ImageReadError(path, _undecodable_reason(buffer))
    return image


def _to_unit_float(image: np.ndarray, path: PathLike) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535.0)
    raise ImageReadError(path, f"unsupported sample type {image.dtype} (expected 8-bit or 16-bit integers)")


def is_effectively_gray(image: np.ndarray) -> bool:
    """True for (H, W) images and for (H, W, C) images whose first three channels are exactly equal."""
    if image.ndim == 2:
        return True
    if image.ndim == 3 and image.shape[2] == 1:
        return True
    if image.ndim == 3 and image.shape[2] >= 3:
        return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))
    return False


def read_image(path: PathLike, *, collapse_gray: bool = True) -> np.ndarray:
    """Read an image file as ``float32`` in [0, 1].

    Accepts 8-bit and 16-bit gray, gray+alpha, RGB, RGBA and palette images (alpha is dropped).

    Args:
        path: image file (any format OpenCV decodes; non-ASCII names are fine).
        collapse_gray: return a 3-channel file whose channels are all equal as (H, W) gray.

    Returns:
        (H, W) gray or (H, W, 3) **RGB**, float32 in [0, 1].

    Raises:
        ImageReadError: missing, empty, corrupt or truncated file, text file, unsupported channel count or type.
    """
    raw = decode_image_unchanged(path)
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2:
        return _to_unit_float(raw, path)
    if raw.ndim != 3:
        raise ImageReadError(path, f"unsupported array shape {raw.shape}")
    channels = raw.shape[2]
    if channels == 2:  # gray + alpha (OpenCV normally expands these, but be explicit)
        return _to_unit_float(raw[..., 0], path)
    if channels not in (3, 4):
        raise ImageReadError(path, f"unsupported channel count {channels} (expected 1, 3 or 4)")
    bgr = raw[..., :3]
    if collapse_gray and is_effectively_gray(bgr):
        return _to_unit_float(np.ascontiguousarray(bgr[..., 0]), path)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    return _to_unit_float(rgb, path)


def read_label(path: PathLike) -> np.ndarray:
    """Read a single-channel class-index PNG as ``int64`` (H, W) indices, values unchanged.

    A 3-channel file with equal channels is accepted (its first channel is used). Palette ("P" mode) PNGs hold
    indices that OpenCV would expand into colours; those are decoded with Pillow when it is installed.

    Raises:
        ImageReadError: unreadable file, or a colour (non-index) label image.
    """
    path = Path(path)
    buffer = read_file_bytes(path)
    # PNG colour type lives at byte 25 (IHDR); 3 = palette.
    if buffer.size > 26 and buffer[:8].tobytes() == _PNG_SIGNATURE and int(buffer[25]) == 3:
        return _read_palette_indices(path)
    raw = decode_image_unchanged(path)
    if raw.ndim == 3:
        if raw.shape[2] == 1 or is_effectively_gray(raw):
            raw = raw[..., 0]
        else:
            raise ImageReadError(path, f"label image has {raw.shape[2]} differing colour channels; expected a "
                                       "single-channel class-index image (use the Label folder, not the colour "
                                       "rendering)")
    if raw.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(path, f"unsupported label sample type {raw.dtype}")
    return raw.astype(np.int64)


def _read_palette_indices(path: Path) -> np.ndarray:
    try:
        from PIL import Image  # Pillow ships with matplotlib; only needed for palette label files
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImageReadError(path, "palette label PNG needs Pillow to read its indices (pip install pillow)") from exc
    try:
        with Image.open(path) as handle:
            handle.load()
            return np.asarray(handle, dtype=np.int64)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated palette PNG ({exc})") from exc


def read_gray_0_255_metric_convention(path: PathLike) -> np.ndarray:
    """Read an image the way the fusion-metric evaluators do (shared/data/MANIFEST.md).

    8-bit BGR (a gray file becomes three equal channels; OpenCV scales 16-bit files to 8 bits), float32,
    Y = 0.299 R + 0.587 G + 0.114 B, rounded half to even. Unlike ``cv2.imread``, the EXIF orientation tag is
    ignored, as in :func:`decode_image_unchanged`: the scores are those of the pixels :func:`load_fusion_pair` fuses.

    Returns:
        (H, W) float64 with integer values in [0, 255].

    Raises:
        ImageReadError: unreadable file, or one that decodes but not to 8 bits (e.g. a float TIFF).
    """
    buffer = read_file_bytes(path)
    bgr = _decode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, path)
    if bgr is None or bgr.size == 0:
        stored = decode_image_unchanged(path)  # raises the precise reason when the file does not decode at all
        kind = _sniff_format(buffer[:16].tobytes()) or "image"
        raise ImageReadError(path, f"a valid {kind} with {stored.dtype} samples, which OpenCV does not convert to "
                                   "8 bits (the metrics read 8-bit images); save it as an 8-bit image")
    gray = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY)
    return np.round(gray).astype(np.float64)  # np.round rounds half to even


# ----------------------------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------------------------


def _check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def rgb_to_ycrcb(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB float32 in [0, 1] -> (H, W, 3) YCrCb float32 (Y in [0, 1], Cr/Cb centred on 0.5)."""
    return cv2.cvtColor(_check_rgb(rgb, "rgb"), cv2.COLOR_RGB2YCrCb)


def ycrcb_to_rgb(ycrcb: np.ndarray) -> np.ndarray:
    """(H, W, 3) YCrCb float32 -> (H, W, 3) RGB float32 (not clipped; out-of-gamut values can leave [0, 1])."""
    return cv2.cvtColor(_check_rgb(ycrcb, "ycrcb"), cv2.COLOR_YCrCb2RGB)


def luminance(image: np.ndarray) -> np.ndarray:
    """Y of an image: (H, W) is returned as float32, (H, W, 3) RGB is converted. Output (H, W) float32."""
    if image.ndim == 2:
        return np.asarray(image, dtype=np.float32)
    return np.ascontiguousarray(rgb_to_ycrcb(image)[..., 0])


def split_luma_chroma(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split an image from :func:`read_image` into Y (H, W) and CrCb (H, W, 2), or (Y, None) for gray input."""
    if image.ndim == 2 or is_effectively_gray(image):
        return luminance(image if image.ndim == 2 else image[..., 0]), None
    ycrcb = rgb_to_ycrcb(image)
    return np.ascontiguousarray(ycrcb[..., 0]), np.ascontiguousarray(ycrcb[..., 1:])


INPUT_READINGS = ("exact", "release")


def release_luminance(path: PathLike) -> np.ndarray:
    """Y of an image file as the authors' release reads its test inputs (release row 16).

    The file is decoded as 8-bit BGR (a gray file becomes three equal channels, a 16-bit one is reduced to 8 bits),
    converted to float32 RGB in [0, 255], then to YCrCb by OpenCV in float32, and Y is divided by 255 in float32.
    For an 8-bit gray value v this is 0.299 v + 0.587 v + 0.114 v rounded in float32, then / 255, which can differ
    from the exact v / 255 by a few units of float32 round-off (up to about 6e-8). EXIF orientation is ignored, as by
    every reader here. Returns (H, W) float32 in [0, 1].
    """
    buffer = read_file_bytes(path)
    bgr = _decode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, path)
    if bgr is None or bgr.size == 0:
        raise ImageReadError(path, _undecodable_reason(buffer))
    rgb = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 0]) / np.float32(255.0)


def load_fusion_pair(ir_path: PathLike, vi_path: PathLike, reading: str = "exact") -> dict[str, Any]:
    """Read an infrared/visible pair as the fusion network sees it.

    ``reading``: ``exact`` (the luminance of :func:`read_image`'s [0, 1] values; a gray file gives exactly v / 255)
    or ``release`` (the luminance as the authors' release computes it, :func:`release_luminance`; chroma as in
    ``exact``).

    Returns:
        dict with ``ir`` (H, W) float32 in [0, 1] (a colour infrared file is reduced to its luminance),
        ``vi_y`` (H, W) float32 in [0, 1] (visible luminance), ``vi_crcb`` (H, W, 2) float32 or None when the
        visible image is gray, ``ir_crcb`` likewise for the infrared file (used by the release's chroma fusion),
        ``name`` (the visible file's stem), ``ir_path`` and ``vi_path`` (str).

    Raises:
        ImageReadError: either file cannot be read.
        PairError: the two images differ in size (the message names both files and sizes).
    """
    ir_img = read_image(ir_path)
    vi_img = read_image(vi_path)
    if ir_img.shape[:2] != vi_img.shape[:2]:
        (ih, iw), (vh, vw) = ir_img.shape[:2], vi_img.shape[:2]
        raise PairError(f"infrared '{ir_path}' is {iw}x{ih} (WxH) but visible '{vi_path}' is {vw}x{vh}; "
                        "a pair must have the same size")
    ir_y, ir_crcb = split_luma_chroma(ir_img)
    vi_y, vi_crcb = split_luma_chroma(vi_img)
    if reading == "release":
        ir_y, vi_y = release_luminance(ir_path), release_luminance(vi_path)
    elif reading != "exact":
        raise ValueError(f"input reading must be one of {INPUT_READINGS}, got {reading!r}")
    return {
        "ir": ir_y,
        "vi_y": vi_y,
        "vi_crcb": vi_crcb,
        "ir_crcb": ir_crcb,
        "name": Path(vi_path).stem,
        "ir_path": str(ir_path),
        "vi_path": str(vi_path),
    }


def recombine_color(fused_y: np.ndarray, vi_crcb: np.ndarray | None) -> np.ndarray:
    """Put chroma back on a fused luminance (the paper's default: chroma of the visible image).

    Args:
        fused_y: (H, W) float32, nominally in [0, 1].
        vi_crcb: (H, W, 2) float32 chroma, or None for a gray visible image.

    Returns:
        (H, W, 3) RGB float32 clipped to [0, 1]; or ``fused_y`` as (H, W) float32 when ``vi_crcb`` is None.
    """
    fused_y = np.asarray(fused_y, dtype=np.float32)
    if fused_y.ndim != 2:
        raise ValueError(f"fused_y must have shape (H, W), got {fused_y.shape}")
    if vi_crcb is None:
        return fused_y
    if vi_crcb.shape != (*fused_y.shape, 2):
        raise ValueError(f"chroma shape {vi_crcb.shape} does not match fused luminance {fused_y.shape}")
    ycrcb = np.concatenate([fused_y[..., None], np.asarray(vi_crcb, dtype=np.float32)], axis=2)
    return np.clip(ycrcb_to_rgb(ycrcb), 0.0, 1.0)


def fuse_chroma_release(ir_crcb: np.ndarray | None, vi_crcb: np.ndarray | None) -> np.ndarray | None:
    """Chroma fusion of the authors' test script (release row 14), on [0, 1] float chroma.

    Per channel (Cr and Cb separately) and per pixel, the weighted mean of the two sources with weights
    ``abs(C - 0.5)``, so the more saturated source dominates; where both weights are 0 the plain mean is used.
    A missing (gray) source has neutral chroma, so with one colour source the result is that source's chroma.

    Args:
        ir_crcb: (H, W, 2) float32 or None (gray infrared).
        vi_crcb: (H, W, 2) float32 or None (gray visible).

    Returns:
        (H, W, 2) float32, or None when both sources are gray.
    """
    if ir_crcb is None and vi_crcb is None:
        return None
    if ir_crcb is None:
        return np.asarray(vi_crcb, dtype=np.float32).copy()
    if vi_crcb is None:
        return np.asarray(ir_crcb, dtype=np.float32).copy()
    a = np.asarray(ir_crcb, dtype=np.float32)
    b = np.asarray(vi_crcb, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"chroma shapes differ: {a.shape} vs {b.shape}")
    wa = np.abs(a - CHROMA_NEUTRAL)
    wb = np.abs(b - CHROMA_NEUTRAL)
    total = wa + wb
    safe = np.where(total > 0, total, 1.0)
    weighted = (a * wa + b * wb) / safe
    return np.where(total > 0, weighted, 0.5 * (a + b)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def float_to_uint8(image: np.ndarray, mode: Literal["clamp", "stretch"] = "clamp") -> np.ndarray:
    """Convert a float image in [0, 1] to ``uint8``.

    Args:
        image: any shape, float.
        mode: ``"clamp"`` (default) clips to [0, 1]; ``"stretch"`` maps the image's own min..max to 0..1 first
            (the release's per-image stretch; a constant image is clamped instead, avoiding a division by 0).

    Returns:
        uint8 array of the same shape, ``round(255 * x)`` (half to even).

    Raises:
        ValueError: unknown mode, or the image holds NaN / infinity.
    """
    if mode not in ("clamp", "stretch"):
        raise ValueError(f"mode must be 'clamp' or 'stretch', not {mode!r}")
    values = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError("image contains NaN or infinite values; refusing to convert it to uint8")
    if mode == "stretch" and values.size:
        low, high = float(values.min()), float(values.max())
        if high > low:
            values = (values - low) / (high - low)
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file or folder: by identity (device and inode) when both exist, else by path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def encode_image(image: np.ndarray, ext: str = ".png", params: Sequence[int] = ()) -> bytes:
    """Encode an RGB(A)/gray array to file bytes.

    Args:
        image: (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, or float in [0, 1] (clamped
            to uint8).
        ext: file extension choosing the encoder, e.g. ``".png"``.
        params: extra OpenCV encoder flags (``cv2.IMWRITE_*`` pairs).
    """
    array = np.asarray(image)
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating) or array.dtype in (np.uint8, np.uint16)):
        raise ImageWriteError(f"cannot write an image of dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if np.issubdtype(array.dtype, np.floating):
        array = float_to_uint8(array, "clamp")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGBA2BGRA)
    elif array.ndim != 2:
        raise ImageWriteError(f"cannot write an image of shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    try:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(array), list(params))
    except cv2.error as exc:
        raise ImageWriteError(f"OpenCV cannot encode a {array.dtype} image as '{ext}': {exc}") from exc
    if not ok:
        raise ImageWriteError(f"OpenCV failed to encode a {array.dtype} image as '{ext}'")
    return encoded.tobytes()


def write_image_atomic(
    path: PathLike,
    image: np.ndarray,
    *,
    forbid: Iterable[PathLike] = (),
    params: Sequence[int] = (),
) -> Path:
    """Write an image atomically (temporary file in the same folder, then rename); the format follows the extension.

    Args:
        path: destination; missing parent folders are created.
        image: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, or float in [0, 1] (clamped).
        forbid: paths that must never be overwritten (for example the input images).
        params: extra OpenCV encoder flags.

    Returns:
        The destination path.

    Raises:
        ImageWriteError: ``path`` is one of ``forbid``, has no extension, or the array cannot be encoded.
    """
    path = Path(path)
    for protected in forbid:
        if same_file(path, Path(protected)):
            raise ImageWriteError(f"refusing to write '{path}': it is an input file ('{protected}')")
    if not path.suffix:
        raise ImageWriteError(f"cannot choose an image format for '{path}': the name has no extension")
    payload = encode_image(image, path.suffix.lower(), params)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, payload)
    return path


# ----------------------------------------------------------------------------------------------------------------
# numpy <-> torch
# ----------------------------------------------------------------------------------------------------------------


def to_tensor_1hw(image: np.ndarray) -> torch.Tensor:
    """(H, W) float array -> (1, H, W) float32 tensor; (H, W, C) -> (C, H, W). Values are not rescaled.

    The tensor owns a copy of the data, so in-place changes never reach the array (or a dataset's cache).
    """
    import torch

    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = array.transpose(2, 0, 1)
    else:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {array.shape}")
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """Tensor (H, W), (1, H, W), (1, 1, H, W) or (C, H, W) / (1, C, H, W) -> numpy float32 (H, W) or (H, W, C)."""
    import torch

    array = tensor.detach().to("cpu", torch.float32).numpy()
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] == 1:
        return np.ascontiguousarray(array[0])
    if array.ndim == 3:
        return np.ascontiguousarray(array.transpose(1, 2, 0))
    if array.ndim == 2:
        return np.ascontiguousarray(array)
    raise ValueError(f"cannot turn a tensor of shape {tuple(tensor.shape)} into one image")
