"""The entry scripts as importable modules (``test`` would otherwise be Python's own test package)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    """Import ``REPO/name.py`` under a private module name."""
    spec = importlib.util.spec_from_file_location(f"uaafusion_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


test_cli = load_script("test")
train_cli = load_script("train")
