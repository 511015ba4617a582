"""The one place that makes torchvision importable next to a CPU-only torch.

The torchvision 0.28.0 wheel is a CUDA build. With torch 2.13.0+cpu its C extension does not load, and
its import then fails with ``operator torchvision::nms does not exist`` (pytorch/vision#9085) because
``torchvision/_meta_registrations.py`` registers fake kernels for two operators whose schemas only the
extension defines. Defining those two schemas first is enough: nothing in this project calls them.
On a machine where the extension loads, the import succeeds on the first try and nothing is defined.
"""
from __future__ import annotations

import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping the Library object would remove the definitions


def _drop_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision():
    """Import and return torchvision, defining the missing operator schemas only when needed."""
    global _library
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
        _drop_partial_import()
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)
        import torchvision
    return torchvision


import_torchvision()
