"""Evaluate fused images (fusion metrics, paper Table I and more) or segmentation predictions (Table II scores).

Fusion (default mode)::

    python eval_metrics.py --ir DIR --vi DIR --fused [NAME=]DIR [--fused [NAME=]DIR ...] [--references]
        [--metrics EN,SF,...|all] [--convention paper|cddfuse|tdfusion] [--json F] [--csv F] [--markdown]
        [--latex] [--workers N] [--published FILE [--published-dataset KEY]] [--impl fast|direct]

Segmentation::

    python eval_metrics.py seg --pred [NAME=]DIR [...] --label DIR --classes N [--class-names ...|fmb|msrs] ...

Exit status: 0 everything evaluated, 1 some image failed (named on stderr), 2 unusable arguments or outputs.
The work is done by :mod:`metrics.cli` (options) and the rest of the :mod:`metrics` package.
"""
from __future__ import annotations

import sys

from metrics.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
