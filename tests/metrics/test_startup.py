"""eval_metrics.py starts without what only the reference (direct) path needs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from metrics import direct


def test_the_cli_does_not_import_scipy_signal():
    code = "import sys, metrics.cli, metrics.fast; print('scipy.signal' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_direct_path_still_convolves_as_scipy_does():
    from scipy.signal import convolve2d

    rng = np.random.default_rng(0)
    image, kernel = rng.random((7, 9)), rng.random((3, 3))
    for mode in ("valid", "same"):
        np.testing.assert_array_equal(direct.convolve2d(image, kernel, mode=mode), convolve2d(image, kernel, mode=mode))
