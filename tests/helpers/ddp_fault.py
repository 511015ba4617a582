"""torchrun entry for the DDP failure test: train.py, with rank UAAF_FAIL_RANK raising at step UAAF_FAIL_STEP."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

from engine.trainer import Trainer

_rank = int(os.environ.get("RANK", "0"))
_fail_rank = int(os.environ["UAAF_FAIL_RANK"])
_fail_step = int(os.environ["UAAF_FAIL_STEP"])
_original_step = Trainer.train_step


def _failing_step(self, batch):
    if _rank == _fail_rank and self.global_step + 1 == _fail_step:
        raise RuntimeError(f"injected failure on rank {_rank} at step {_fail_step}")
    return _original_step(self, batch)


Trainer.train_step = _failing_step
runpy.run_path(str(Path(__file__).resolve().parents[2] / "train.py"), run_name="__main__")
