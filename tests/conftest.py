"""Test-wide settings: offline hub, pinned threads, seeded RNGs, and the path to the shared real data."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from engine.runtime import tune_allocator  # noqa: E402

torch.set_num_threads(int(os.environ.get("UAAF_TEST_THREADS", "2")))
tune_allocator()  # as the entry scripts do

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UAAF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def shared_data() -> Path:
    """Folder with the real MSRS/RoadScene/TNO pairs; skips the test when it is not beside the checkout."""
    if not (SHARED_DATA / "MSRS" / "ir").is_dir():
        pytest.skip(f"real image pairs not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic FMB-layout dataset (32 train + 4 test pairs, 64×48), generated once per session."""
    from data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic_fmb")
    generate_dataset(root, n_train=32, n_test=4, size=(64, 48), seed=0, overwrite=True)
    return root
