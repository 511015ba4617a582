"""``torch.compile`` of the fusion network's stages: an option (``train.compile``, ``test.py --compile``), never fatal.

Each :class:`~models.fusion_net.UnfoldingStage` is compiled on its own (the path attention between stages calls the
segmenter's autograd and stays eager). The stages keep their parameters and state-dict names; only their
``forward`` is replaced, so checkpoints are the same with and without compilation. Before compiling, a one-line
probe compiles a tiny function with its backward pass through the same backend: where no C++ compiler (CPU) or
Triton (CUDA) is usable, or the probe fails for any other reason, a one-line warning is logged and the model runs
eagerly. A compile error at a stage's first call likewise falls back to eager for that stage.

Compilation is per input shape: training compiles once for its fixed patch size (one graph per stage; the first
stage, which has no ConvLSTM state yet, and the last, which has no ConvLSTM, differ from the middle ones); fusing
images of several sizes recompiles per size until torch marks the shape dynamic. Measured costs and speed-ups are
in docs/PERFORMANCE.md ("torch.compile").
"""
from __future__ import annotations

import logging
import shutil
from typing import Any

import torch
from torch import nn

log = logging.getLogger("uaafusion")

BACKENDS = ("inductor", "aot_eager", "eager")  # inductor generates kernels; the other two only trace (for tests)


def compiler_problem(device: torch.device, backend: str = "inductor") -> str | None:
    """Why ``backend`` cannot compile for ``device`` here, or None when it can (a tiny probe compiled and ran)."""
    if backend not in BACKENDS:
        return f"unknown compile backend {backend!r} (one of {', '.join(BACKENDS)})"
    if backend == "inductor":
        if device.type == "cpu":
            from torch._inductor import config as inductor_config

            cxx = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) else None
            names = [n for n in (cxx, "g++", "c++", "clang++") if n]
            if not any(shutil.which(n) for n in names):
                return "no C++ compiler found (g++, c++ or clang++ on PATH)"
        elif device.type == "cuda":
            import importlib.util

            if importlib.util.find_spec("triton") is None:
                return "Triton is not installed"
    try:
        probe = torch.compile(lambda x: (torch.sigmoid(x) * x).sum(), backend=backend)
        with torch.enable_grad():  # also when called under no_grad (fusing)
            x = torch.linspace(-1.0, 1.0, 8, device=device, requires_grad=True)
            probe(x).backward()
        if not torch.isfinite(x.grad).all():
            return "the probe's gradient was not finite"
    except Exception as err:  # noqa: BLE001 - any failure of the toolchain means: run eagerly
        return f"the probe failed ({type(err).__name__}: {_first_line(err)})"
    return None


class _StageForward:
    """A stage's forward through ``torch.compile``, falling back to the eager forward on a compile error."""

    def __init__(self, module: nn.Module, backend: str, dynamic: bool | None) -> None:
        self.eager = module.forward  # the class's bound forward
        self.compiled = torch.compile(self.eager, backend=backend, dynamic=dynamic)
        self.name = type(module).__name__
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001
                if not _is_compile_error(err):
                    raise
                self.failed = True
                log.warning("torch.compile failed for %s (%s: %s); running it eagerly", self.name,
                            type(err).__name__, _first_line(err)[:200])
        return self.eager(*args, **kwargs)


def _is_compile_error(err: Exception) -> bool:
    """Raised by dynamo or inductor (BackendCompilerFailed, CppCompileError, InductorError, ...)."""
    return (type(err).__module__ or "").startswith(("torch._dynamo", "torch._inductor"))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def compile_fusion(fusion: nn.Module, device: torch.device, backend: str = "inductor",
                   dynamic: bool | None = None) -> bool:
    """Compile every stage of a :class:`~models.fusion_net.UAAFusionNet` in place; returns whether it did.

    ``dynamic``: None (torch's default: static first, dynamic after a second shape), False (one graph per shape:
    training's fixed patch) or True. Undo with :func:`uncompile_fusion`.
    """
    problem = compiler_problem(device, backend)
    if problem is not None:
        log.warning("compile requested but not possible: %s; running eagerly", problem)
        return False
    for stage in fusion.stages:
        stage.forward = _StageForward(stage, backend, dynamic)
    return True


def is_compiled(fusion: nn.Module) -> bool:
    """Whether :func:`compile_fusion` has replaced the stages' forward."""
    return any(isinstance(stage.__dict__.get("forward"), _StageForward) for stage in fusion.stages)


def uncompile_fusion(fusion: nn.Module) -> None:
    """Back to the eager stages."""
    for stage in fusion.stages:
        stage.__dict__.pop("forward", None)
