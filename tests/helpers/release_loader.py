"""A second, independent loader of the release's segmenter weights (strict key and shape check), used by the
tests to cross-check models.release.convert; not part of the product."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class ReleaseStateDictError(RuntimeError):
    """A release state dict does not match the module key for key and shape for shape."""


def model_s_state_dict_keys(module: nn.Module, prefix: str = "model_s.") -> list[str]:
    """The keys ``module`` expects in the release checkpoint, in state-dict order, each with ``prefix``."""
    return [prefix + k for k in module.state_dict().keys()]


def select_prefixed(sd: Mapping[str, object], prefix: str = "model_s.") -> dict[str, torch.Tensor]:
    """The sub-state-dict named by ``prefix``, keys without it: from a nested checkpoint (``sd["model_s"]``),
    a flat dict with prefixed keys (others dropped), or an unprefixed state dict (returned as is)."""
    nested = sd.get(prefix.rstrip(".")) if prefix else None
    if isinstance(nested, Mapping):
        return dict(nested)
    if prefix and any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)  # type: ignore[arg-type]


def load_release_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor], prefix: str = "model_s.") -> None:
    """Load the release's segmenter weights into ``module`` strictly; every problem is listed.

    Raises:
        ReleaseStateDictError: listing every missing key, unexpected key and shape mismatch.
    """
    own = select_prefixed(sd, prefix)
    expected = module.state_dict()
    missing = [k for k in expected if k not in own]
    unexpected = [k for k in own if k not in expected]
    mismatched = [f"{prefix}{k}: checkpoint {tuple(own[k].shape)} vs module {tuple(v.shape)}"
                  for k, v in expected.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = [f"release state dict does not match {type(module).__name__}(num_classes="
                 f"{getattr(module, 'num_classes', '?')}, in_channels={getattr(module, 'in_channels', '?')}):"]
        for title, items in (("missing keys", [prefix + k for k in missing]),
                             ("unexpected keys", [prefix + k for k in unexpected]),
                             ("shape mismatches", mismatched)):
            if items:
                parts.append(f"  {len(items)} {title}:")
                parts.extend(f"    {item}" for item in items)
        raise ReleaseStateDictError("\n".join(parts))
    module.load_state_dict(dict(own), strict=True)
