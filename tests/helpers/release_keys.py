"""Key listings of the authors' checkpoint, and synthetic checkpoints built from them.

A listing (``release_state_dict.txt``, a copy ships as ``tests/assets/release_state_dict.txt``) has one
tab-separated line per tensor: ``<top>.<key>``, its shape as a Python tuple, its dtype, e.g.::

    model_s.cls_conv.weight\t(15, 256, 1, 1)\ttorch.float32
    model_s.cat_conv.1.num_batches_tracked\t()\ttorch.int64

``<top>`` is ``model_f`` (fusion network) or ``model_s`` (segmenter). Synthetic checkpoints have the release's
structure ``{"model_f": {...}, "model_s": {...}}`` with random values of the listed shapes and dtypes, so that
converters and loaders can be tested without the authors' weights.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

KeyListing = dict[str, tuple[tuple[int, ...], torch.dtype]]

_SHAPE_RE = re.compile(r"^\(\s*(?:\d+\s*(?:,\s*\d+\s*)*,?\s*)?\)$")


def _parse_shape(text: str) -> tuple[int, ...]:
    if not _SHAPE_RE.match(text):
        raise ValueError(f"not a shape tuple: {text!r}")
    return tuple(int(part) for part in text.strip("()").split(",") if part.strip())


def _parse_dtype(text: str) -> torch.dtype:
    name = text.removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {text!r}")
    return dtype


def read_key_listing(path: str | Path) -> KeyListing:
    """Parse a key listing.

    Args:
        path: text file with ``key<TAB>shape<TAB>dtype`` lines; blank lines and ``#`` comments are skipped.

    Returns:
        ``{key: (shape, dtype)}`` in file order, keys with their ``model_f.`` / ``model_s.`` prefix.

    Raises:
        ValueError: on a malformed line or a repeated key (with the line number).
    """
    listing: KeyListing = {}
    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields, got {len(fields)}: {line!r}")
        key, shape_text, dtype_text = (f.strip() for f in fields)
        if key in listing:
            raise ValueError(f"{path}:{number}: repeated key {key!r}")
        try:
            listing[key] = (_parse_shape(shape_text), _parse_dtype(dtype_text))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
    return listing


def sub_listing(listing: KeyListing, prefix: str) -> KeyListing:
    """The entries under ``prefix`` (e.g. ``"model_s."``), keys without it."""
    return {k[len(prefix):]: v for k, v in listing.items() if k.startswith(prefix)}


def _module_of(key: str) -> str:
    return key.rpartition(".")[0]


def synthetic_release_checkpoint(listing: KeyListing, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A random checkpoint with the release's structure, shapes and dtypes.

    Values are plausible rather than uniform noise, so that networks built from them run stably:
    conv / linear weights ~ N(0, 1/fan_in); biases and BN ``running_mean`` ~ N(0, 0.1²); BN weights ~ 1 + N(0, 0.1²);
    BN ``running_var`` ~ U(0.5, 1.5) (positive); ``num_batches_tracked`` random int64 scalars; one-element weights
    of bias-free modules (the shared PReLU slopes) ~ 0.25 + N(0, 0.01²); ``alpha`` (the step sizes ρ) ~ U(5e-4, 2e-3).

    Args:
        listing: from :func:`read_key_listing`; keys ``<top>.<key>``.
        seed: seed of a private generator (the global RNG is untouched).

    Returns:
        ``{top: {key: tensor}}``, e.g. ``{"model_f": {...}, "model_s": {...}}``, in listing order.
    """
    gen = torch.Generator().manual_seed(seed)
    modules_with_bias = {_module_of(k) for k in listing if k.endswith(".bias")}
    bn_modules = {_module_of(k) for k in listing if k.endswith(".running_var")}
    out: dict[str, dict[str, torch.Tensor]] = {}

    def normal(shape: tuple[int, ...], mean: float, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen) * (high - low) + low

    for full_key, (shape, dtype) in listing.items():
        top, sep, key = full_key.partition(".")
        if not sep:
            raise ValueError(f"key {full_key!r} has no '<top>.' prefix (e.g. 'model_s.')")
        leaf = key.rpartition(".")[2]
        if not dtype.is_floating_point:
            if leaf == "num_batches_tracked":
                value = torch.randint(1, 100_000, shape, generator=gen, dtype=torch.int64).to(dtype)
            else:
                value = torch.randint(0, 10, shape, generator=gen, dtype=torch.int64).to(dtype)
        else:
            is_bn = _module_of(full_key) in bn_modules
            if is_bn and leaf == "weight":
                value = normal(shape, 1.0, 0.1)
            elif is_bn and leaf == "running_var":
                value = uniform(shape, 0.5, 1.5)
            elif is_bn:  # bias, running_mean
                value = normal(shape, 0.0, 0.1)
            elif leaf == "alpha":
                value = uniform(shape, 5e-4, 2e-3)
            elif leaf == "weight" and len(shape) >= 2:
                fan_in = math.prod(shape[1:])
                value = normal(shape, 0.0, 1.0 / math.sqrt(max(fan_in, 1)))
            elif leaf == "weight" and math.prod(shape) == 1 and _module_of(full_key) not in modules_with_bias:
                value = normal(shape, 0.25, 0.01)
            else:
                value = normal(shape, 0.0, 0.1)
            value = value.to(dtype)
        out.setdefault(top, {})[key] = value
    return out
