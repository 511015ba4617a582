"""Every script runs both ways people run it: ``python -m scripts.NAME`` from the repository, and
``python scripts/NAME.py`` by path, from any folder."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (REPO / "scripts").glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def _help(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *command, "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], subprocess.CompletedProcess]:
    """``--help`` of every script in both forms, two processes at a time (each start imports torch)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    jobs = {}
    for script in SCRIPTS:
        jobs[(script.stem, "module")] = (["-m", f"scripts.{script.stem}"], REPO)
        jobs[(script.stem, "path")] = ([str(script)], elsewhere)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_help, *job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def test_the_scripts_are_found():
    assert {"demo", "figures", "real_results", "pretrain_segmenter", "convert_release_checkpoint"} <= {
        p.stem for p in SCRIPTS}


@pytest.mark.parametrize("form", ["module", "path"])
@pytest.mark.parametrize("name", [p.stem for p in SCRIPTS])
def test_help_works_in_both_forms(results, name, form):
    done = results[(name, form)]
    assert done.returncode == 0, f"{name} ({form}): {done.stderr[-2000:]}"
    if name == "repro_common":  # the scripts' shared library: its help says which scripts to run instead
        assert "does nothing by itself" in done.stdout and "table1_fusion" in done.stdout
    else:
        assert "usage:" in done.stdout
