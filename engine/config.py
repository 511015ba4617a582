"""Configuration: YAML files over built-in defaults, ``--set key=value`` overrides, strict keys and types.

Every key a config may hold appears in :data:`DEFAULTS` (paper settings). A YAML file or an override
naming another key, or giving a value of the wrong type, is rejected with the dotted key in the message.
A config may start from another with ``base: other.yaml`` (path relative to the file).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from utils.atomic import atomic_write_text

# Keys whose default is None take any value of these types (None included).
OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "segmenter.encoder_weights": (str,),
    "segmenter.output": (str,),
    "data.root": (str,),
    "data.ir_dir": (str,),
    "data.vi_dir": (str,),
    "data.label_dir": (str,),
    "data.num_classes": (int,),
    "train.max_steps_per_epoch": (int,),
    "train.segmenter_checkpoint": (str,),
    "train.grad_clip": (int, float),
    "train.checkpoint_every_steps": (int,),
    "test.tile": (int,),
    "attribution.ig_chunk": (int,),
}

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "amp": "none",  # none | bf16 | fp16 (CUDA only; attribution always runs in float32)
    "data": {
        "name": "fmb",  # fmb | msrs | roadscene | folders
        "root": None,
        "ir_dir": None,
        "vi_dir": None,
        "label_dir": None,
        "num_classes": None,  # from the dataset unless given
        "train_split": "train",
        "val_split": "test",
        "patch_size": 128,
        "mode": "random_crop",  # random_crop | release_patches
        "ignore_index": 255,
        "num_workers": 0,
        "val_pairs": 4,  # pairs of the validation split used for fusion metrics each epoch
        "check": True,  # validate the dataset folders before training
    },
    "fusion": {
        "stages": 5,
        "channels": 32,
        "rho_init": 0.01,
        "gradient_step": True,
        "attention": True,
        "short_memory": True,
        "long_memory": True,
        "lstm_first_step": "zero_state",
    },
    "segmenter": {
        "arch": "deeplabv3plus",
        "encoder": "mobilenet_v2",
        "encoder_weights": None,
        "in_channels": 1,
        "output": None,
    },
    "attribution": {
        "ig_steps": 5,
        "eps": 1e-8,
        "score_activation": "none",
        "ig_method": "fast",
        "region_pooling": "image",
        "region_normalization": "sum",
        "segmenter_mode": "eval",
        "attention": "ig",
        "attention_substeps": 1,
        "attention_reduction": "sum",
        "attention_score": "region",
        "ig_chunk": None,  # images per forward in the fast IG; null = the batch size N, 0 = all at once
        "fold_batchnorm": True,
        "ignore_index": 255,
    },
    "loss": {
        "lambda_grad": 1.0,
        "mu_seg": 0.1,
        "use_intensity": True,
        "use_gradient": True,
        "use_segmentation": True,
        "seg_sources": ["ir", "vi", "fused"],
        "intensity_form": "weighted",
        "ignore_index": 255,
        "ignore_classes": [],
    },
    "train": {
        "epochs": 50,
        "batch_size": 8,
        "lr": 1e-4,
        "lr_step_epochs": 10,
        "lr_gamma": 0.5,
        "separate_segmenter_optimizer": False,  # release row 11: the segmenter has its own Adam
        "segmenter_lr": 1e-4,
        "segmenter_pretrain_epochs": 0,  # stage 1: segmenter alone on the source images
        "segmenter_checkpoint": None,  # start the segmenter from this file (release row 11)
        "max_steps_per_epoch": None,
        "log_every": 10,
        "image_log_every": 100,
        "val_every": 1,
        "on_nonfinite_loss": "skip",  # skip | stop
        "checkpoint_every_steps": None,  # also write last.pt every N steps (mid-epoch resume)
        "grad_clip": None,
    },
    "test": {
        "output": "clamp",  # clamp | stretch (release row 14)
        "chroma": "visible",  # visible | release (row 14: saturation-weighted mean of both sources)
        "batch_size": 1,
        "tile": None,  # fuse large images in tiles of this side (bounded memory); None = whole image
    },
}


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def _check_type(key: str, value: Any, default: Any) -> Any:
    if key in OPTIONAL_TYPES:
        if value is None or isinstance(value, OPTIONAL_TYPES[key]) and not isinstance(value, bool):
            return value
        names = "/".join(t.__name__ for t in OPTIONAL_TYPES[key])
        raise ConfigError(f"config key '{key}' must be {names} or null, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true/false, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
    return value


def merge(base: dict, update: dict, prefix: str = "") -> dict:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys and wrong types raise ConfigError."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key '{dotted}' (known here: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping, got {value!r}")
            out[key] = merge(base[key], value, prefix=f"{dotted}.")
        else:
            out[key] = _check_type(dotted, value, base[key])
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        parent = _read_yaml((path.parent / base).resolve())
        data = _deep_update(parent, data)
    return data


def _deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value parsed as YAML: numbers, true/false, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=2)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults ← YAML file (with its ``base:`` chain) ← overrides; returns a fully resolved, checked dict."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = merge(cfg, _read_yaml(Path(path)))
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        cfg = merge(cfg, nested)
    return cfg


def save_config(cfg: dict, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
