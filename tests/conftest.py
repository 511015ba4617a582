"""Test-wide settings: offline hub, pinned threads (and cores, under pytest-xdist), seeded RNGs, and the path to
the shared real data."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from engine.runtime import tune_allocator  # noqa: E402


def _worker_cores() -> set[int] | None:
    """Under pytest-xdist (``make test`` runs one worker per core): this worker's share of the usable cores, so
    that the workers, and the scripts their tests start (which inherit the mask), never run more OpenMP threads
    than there are cores (spinning threads on a shared core run many times slower; docs/RELIABILITY.md)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker.startswith("gw") or not count or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < int(count):  # more workers than cores: leave the mask alone
        return None
    return set(cores[int(worker[2:]) % int(count)::int(count)])


_CORES = _worker_cores()
if _CORES is not None:
    os.sched_setaffinity(0, _CORES)
torch.set_num_threads(int(os.environ.get("UAAF_TEST_THREADS", len(_CORES) if _CORES else 2)))
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
