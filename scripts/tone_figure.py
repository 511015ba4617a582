"""Draw what ``data.ir_tone_reference`` does to training infrared images (docs/DECISIONS.md D14).

    python -m scripts.tone_figure --reference ../shared/data/MSRS/ir/00556D.png ../shared/data/MSRS/ir/00633D.png \\
        ../shared/data/MSRS/ir/00881N.png ../shared/data/MSRS/ir/01023N.png \\
        --images ../shared/data/MFNet/ir/00101D.png ../shared/data/MFNet/ir/00701N.png \\
        --figure docs/figures/tone_matching.png

One row per image: the image as read, the image matched onto the references' pooled histogram, and the three
cumulative histograms (image, matched, references). A last row shows the first reference image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

if not __package__:  # run by path: put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.io import luminance, read_image
from data.tone import LEVELS, ToneReference, level_histogram
from utils.atomic import save_figure

plt.switch_backend("Agg")


def draw(tone: ToneReference, images: list[Path], figure: Path) -> None:
    """Write the figure (PNG, atomically) for ``images`` matched onto ``tone``."""
    rows = len(images) + 1
    fig, axes = plt.subplots(rows, 3, figsize=(12, 3.2 * rows), squeeze=False)
    try:
        _fill(fig, axes, tone, images)
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, figure, dpi=80)


def _fill(fig: Any, axes: Any, tone: ToneReference, images: list[Path]) -> None:
    levels = np.arange(LEVELS)
    reference_share = tone.counts / tone.counts.sum()
    for row, path in zip(axes, images):
        raw = luminance(read_image(path))
        matched = tone.match(raw)
        for ax, image, title in ((row[0], raw, f"{path.name} as read (mean {raw.mean() * 255:.0f})"),
                                 (row[1], matched, f"matched (mean {matched.mean() * 255:.0f})")):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        for image, label in ((raw, "as read"), (matched, "matched")):
            counts = level_histogram([image])
            row[2].plot(levels, np.cumsum(counts) / counts.sum(), label=label)
        row[2].plot(levels, np.cumsum(reference_share), label="references", color="k", lw=1, ls="--")
        row[2].set_xlabel("level (0-255)", fontsize=8)
        row[2].set_ylabel("share of pixels at or below", fontsize=8)
        row[2].legend(fontsize=8)
    first = luminance(read_image(tone.files[0]))
    axes[-1][0].imshow(first, cmap="gray", vmin=0, vmax=1)
    axes[-1][0].set_title(f"reference {tone.files[0].name} (mean {first.mean() * 255:.0f})", fontsize=9)
    for ax in axes[-1]:
        ax.axis("off")
    fig.tight_layout()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", nargs="+", required=True, help="reference infrared images or folders")
    p.add_argument("--images", nargs="+", type=Path, required=True, help="infrared images to match")
    p.add_argument("--figure", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    if args.figure.suffix.lower() != ".png":
        print(f"error: --figure must be a .png file, not '{args.figure}'", file=sys.stderr)
        return 2
    try:
        draw(ToneReference(args.reference), args.images, args.figure)
    except (OSError, ValueError) as error:  # ImageReadError and FileNotFoundError included: name the file
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
