"""Configuration: YAML files over built-in defaults, ``--set key=value`` overrides, strict keys and types.

Every key a config may hold appears in :data:`DEFAULTS` (paper settings). A YAML file or an override
naming another key, or giving a value of the wrong type, is rejected with the dotted key in the message.
A config may start from another with ``base: other.yaml`` (path relative to the file).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
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
    "data.val_name": (str,),
    "data.val_root": (str,),
    "data.num_classes": (int,),
    "data.ir_tone_reference": (list, str),
    "data.scale_range": (list,),
    "train.max_steps_per_epoch": (int,),
    "train.segmenter_checkpoint": (str,),
    "train.init_checkpoint": (str,),
    "train.grad_clip": (int, float),
    "train.checkpoint_every_steps": (int,),
    "test.tile": (int,),
    "test.max_memory_gb": (int, float),
    "attribution.ig_chunk": (int,),
}

# The run's own settings: (default, what it means). The model blocks (fusion, segmenter, attribution, loss) are
# the constructor arguments of MODEL_BLOCKS, with their defaults and docstrings; they are written only there.
RUN_SETTINGS: dict[str, dict[str, tuple[Any, str]]] = {
    "": {
        "seed": (0, "seeds every generator; runs are repeatable on the CPU"),
        "device": ("auto", "auto | cpu | cuda | cuda:N"),
        "amp": ("none", "none | bf16 (CUDA, or CPUs with native bf16) | fp16 (CUDA): autocast for the fusion "
                        "network and L_seg; attribution always stays float32"),
    },
    "data": {
        "name": ("fmb", "dataset layout: fmb | msrs | mfnet | roadscene | folders (data/layouts.py)"),
        "root": (None, "the dataset folder"),
        "ir_dir": (None, "infrared folder ('folders' layout; relative to root; {split} is replaced)"),
        "vi_dir": (None, "visible folder ('folders' layout)"),
        "label_dir": (None, "label folder ('folders' layout)"),
        "num_classes": (None, "number of classes (default: from the dataset's class list)"),
        "train_split": ("train", "split used for training"),
        "val_split": ("test", "split validated each epoch (FMB has no validation split: this is its test split)"),
        "val_name": (None, "validation dataset from another folder: its layout (default: data.name)"),
        "val_root": (None, "validation dataset from another folder: the folder (default: data.root)"),
        "patch_size": (128, "training patch side"),
        "mode": ("tiles", "tiles (every non-overlapping patch of every image, each epoch: the paper's 'cropped into "
                          "128x128 patches') | random_crop (one random crop per image per epoch) | release_patches "
                          "(release row 10); docs/DECISIONS.md D1"),
        "flips": (False, "random horizontal/vertical flips in random_crop and tiles modes (not in the paper or the "
                         "release)"),
        "vertical_flips": (True, "with flips: also flip upside down (false: left-right flips only, as road-scene "
                                 "segmentation trains)"),
        "scale_range": (None, "[lo, hi]: random_crop mode resizes each scene by a random factor in this range "
                              "before its crop (segmentation's scale augmentation; labels by nearest neighbour; "
                              "docs/DECISIONS.md D18); null: no resizing"),
        "crops_per_scene": (1, "random_crop mode: crops per scene per epoch (15 makes an MFNet epoch as long as one "
                               "of 128x128 tiles)"),
        "min_spread": (0.1, "release_patches: keep a patch when both sources' 10-90 percentile spread reaches this"),
        "contrast_relative_to": ("p90", "release_patches: spread relative to the patch's 90th percentile (p90, the "
                                        "release) or to the [0, 1] range (range)"),
        "ir_tone_reference": (None, "image files or folders: every training infrared image is histogram-matched onto "
                                    "their pooled histogram (an extension, data/tone.py, docs/DECISIONS.md D14; the "
                                    "validation images are left as they are; name training-split files, never "
                                    "evaluation scenes)"),
        "cache": (False, "keep decoded images in memory (small datasets; each DataLoader worker holds its copy)"),
        "strict": (False, "fail on files without a partner instead of leaving them out with a warning"),
        "ignore_index": (255, "label value of 'no class': skipped by L_seg, the mIoU and the attribution regions"),
        "num_workers": (0, "DataLoader worker processes"),
        "val_pairs": (4, "validation pairs fused and scored each epoch (0: no validation)"),
        "check": (True, "check the dataset folders before training (python -m data.check)"),
    },
    "train": {
        "epochs": (50, "joint-training epochs"),
        "batch_size": (8, "images per step"),
        "lr": (1e-4, "Adam learning rate of the joint stage"),
        "lr_step_epochs": (10, "the learning rate is multiplied by lr_gamma every this many epochs"),
        "lr_gamma": (0.5, "learning-rate factor per step of the schedule"),
        "separate_segmenter_optimizer": (False, "release row 11: the segmenter has its own Adam"),
        "segmenter_lr": (1e-4, "that Adam's rate, and the rate of the pre-training stage"),
        "segmenter_pretrain_epochs": (0, "stage 1: epochs of segmenter-only training on the source images"),
        "segmenter_checkpoint": (None, "start the segmenter from this file (replaces stage 1; release row 11)"),
        "init_checkpoint": (None, "start the whole model (fusion network and segmenter) from this model file, a "
                                  "shipped/exported one or a run's last.pt, with fresh optimisers and schedule: "
                                  "continue or fine-tune a trained model (replaces stage 1; "
                                  "train.segmenter_checkpoint, if also given, replaces the segmenter, and then only "
                                  "the file's fusion network is read, so its segmenter may have another encoder)"),
        "max_steps_per_epoch": (None, "cap on the steps of an epoch (null: the whole dataset)"),
        "log_every": (10, "TensorBoard scalars every N steps"),
        "image_log_every": (100, "TensorBoard images every N steps"),
        "val_every": (1, "validate every N epochs (and after the last)"),
        "on_nonfinite_loss": ("skip", "skip | stop: what a NaN/Inf loss does"),
        "checkpoint_every_steps": (None, "also write last.pt every N steps (exact mid-epoch resume)"),
        "grad_clip": (None, "clip the gradient norm to this value"),
        "grad_clip_scope": ("all", "all | optimizer: one norm over every parameter, or one per optimizer (with "
                                   "separate_segmenter_optimizer, the fusion network's own norm; not in the paper)"),
        "segmenter_batchnorm": ("train", "train | frozen: in joint training the segmenter's BatchNorm layers "
                                         "update their running statistics (train, as torch does by default) or keep "
                                         "those they start with (frozen: eval-mode BatchNorm, weights still learn; an "
                                         "extension, docs/DECISIONS.md D15)"),
        "compile": (False, "torch.compile the fusion network's stages at the training patch size (engine/compile.py; "
                           "falls back to eager with a warning where no compiler is usable; validation stays eager)"),
    },
    "test": {
        "output": ("clamp", "clamp | stretch (release row 14): how the output becomes 8-bit"),
        "chroma": ("visible", "visible | release (row 14: saturation-weighted chroma of both sources)"),
        "input_reading": ("exact", "exact | release (row 16: luminance via float32 YCrCb of 8-bit RGB in [0, 255])"),
        "batch_size": (1, "pairs of one size fused together"),
        "tile": (None, "fuse in tiles of this side (at least 64, twice the 32-pixel overlap; bounded memory); "
                       "null: whole images ..."),
        "max_memory_gb": (8.0, "... or tiles chosen automatically when an image would need more memory"),
    },
}

EXCLUDED_ARGS = {"num_classes", "ignore_index"}  # given by the dataset (data.num_classes, data.ignore_index)


def _model_blocks() -> dict[str, Any]:
    from losses import LossSettings
    from models.attribution import AttributionSettings
    from models.fusion_net import UAAFusionNet
    from models.segmenter import build_segmenter

    return {"fusion": UAAFusionNet, "segmenter": build_segmenter, "attribution": AttributionSettings,
            "loss": LossSettings}


def constructor_defaults(target: Any) -> dict[str, Any]:
    """Keyword defaults of a class, dataclass or function, minus :data:`EXCLUDED_ARGS`."""
    if dataclasses.is_dataclass(target):
        out = {}
        for f in dataclasses.fields(target):
            if f.name in EXCLUDED_ARGS:
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out
    signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    return {name: p.default for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty and name not in EXCLUDED_ARGS}


def _build_defaults() -> dict[str, Any]:
    blocks = {block: {key: copy.deepcopy(value) for key, (value, _) in keys.items()}
              for block, keys in RUN_SETTINGS.items()}
    out: dict[str, Any] = dict(blocks.pop(""))
    out["data"] = blocks["data"]
    out.update({name: constructor_defaults(target) for name, target in _model_blocks().items()})
    out["train"], out["test"] = blocks["train"], blocks["test"]
    return out


DEFAULTS: dict[str, Any] = _build_defaults()


def _docstring_entries(target: Any) -> dict[str, str]:
    """``name: text`` entries of the Args/Attributes section of a docstring (Google style)."""
    doc = inspect.getdoc(target.__init__ if inspect.isclass(target) and not dataclasses.is_dataclass(target)
                         and target.__init__.__doc__ else target) or ""
    if inspect.isclass(target) and "Args:" not in doc and "Attributes:" not in doc:
        doc = inspect.getdoc(target) or ""
    entries: dict[str, str] = {}
    current: list[str] = []
    in_section = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Attributes:"):
            in_section = True
            continue
        if in_section and line and not line.startswith(" "):
            in_section = False
        if not in_section:
            continue
        match = re.match(r"^ {4}([A-Za-z_][\w, ]*):\s*(.*)$", line)
        if match:
            current = [name.strip() for name in match[1].split(",")]
            for name in current:
                entries[name] = match[2].strip()
        elif line.strip() and current:
            for name in current:
                entries[name] += " " + line.strip()
    return entries


def describe_keys() -> list[tuple[str, Any, str]]:
    """Every config key with its default and meaning: (dotted key, default, description)."""
    rows = []
    for block, keys in RUN_SETTINGS.items():
        for key, (default, text) in keys.items():
            rows.append((f"{block}.{key}" if block else key, default, text))
    for name, target in _model_blocks().items():
        entries = _docstring_entries(target)
        for key, default in DEFAULTS[name].items():
            rows.append((f"{name}.{key}", default, entries.get(key, "")))
    order = list(DEFAULTS)
    return sorted(rows, key=lambda row: order.index(row[0].split(".")[0]) if "." in row[0] else -1)


def config_markdown() -> str:
    """docs/CONFIG.md: every key, its default and its meaning (regenerate: python -m engine.config)."""
    lines = ["# Configuration keys", "",
             "Every key a config may hold, its default (the paper's settings) and what it does. A YAML config",
             "overrides any of them, may start from another with `base: other.yaml`, and `--set KEY=VALUE` overrides",
             "on the command line; unknown keys and wrong types are errors. The blocks `fusion`, `segmenter`,",
             "`attribution` and `loss` are the constructor arguments of `UAAFusionNet`, `build_segmenter`,",
             "`AttributionSettings` and `LossSettings`, so their defaults live in those constructors.",
             "Generated by `python -m engine.config` from `engine/config.py` and the constructors' docstrings.", ""]
    block = None
    for key, default, text in describe_keys():
        name = key.split(".")[0] if "." in key else "run"
        if name != block:
            block = name
            lines += ["", f"## {block}", "", "| key | default | meaning |", "|---|---|---|"]
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"| `{key}` | `{shown}` | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def _check_type(key: str, value: Any, default: Any) -> Any:
    if key in OPTIONAL_TYPES:
        if isinstance(value, str) and float in OPTIONAL_TYPES[key]:  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
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


class _RepeatedKeyError(yaml.YAMLError):
    """A mapping of a YAML file gives the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (instead of keeping the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool):
                if key in seen:
                    raise _RepeatedKeyError(f"key '{key}' is given twice (lines {seen[key]} and {line}); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        loop = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config file {chain[0]}: its 'base:' chain loops back to {path} ({loop})")
    if not path.is_file():
        where = f" (the base of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not a text (YAML) file: {err.reason} at byte {err.start}") from err
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from err
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader that refuses repeated keys
    except _RepeatedKeyError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        raise ConfigError(f"config file {path} is empty; give at least one key (e.g. 'base: fmb_paper.yaml')")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, not a {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"config file {path}: 'base' must be a file name, got {base!r}")
        parent = _read_yaml(path.parent / base, (*chain, path))
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


# keys that earlier versions had and that are now derived (old run folders and checkpoints still load)
MERGED_KEYS = {
    ("attribution", "ignore_index"): ("data", "ignore_index"),
    ("loss", "ignore_index"): ("data", "ignore_index"),
}

# (dotted key, lowest allowed value) for numbers that must be positive / non-negative
_LOWER_BOUNDS = {
    "train.epochs": 1, "train.batch_size": 1, "train.segmenter_pretrain_epochs": 0, "train.lr_step_epochs": 1,
    "train.max_steps_per_epoch": 1, "train.checkpoint_every_steps": 1, "train.log_every": 1,
    "train.image_log_every": 1, "train.val_every": 1, "data.patch_size": 16, "data.crops_per_scene": 1,
    "data.num_workers": 0, "data.val_pairs": 0, "fusion.stages": 1, "fusion.channels": 2, "attribution.ig_steps": 1,
    "attribution.attention_substeps": 1, "test.batch_size": 1, "train.grad_clip": 0, "test.tile": 64,
}
_POSITIVE = ("train.lr", "train.segmenter_lr", "train.lr_gamma", "test.max_memory_gb")


def _migrate_saved(cfg: dict) -> dict:
    """A resolved config written by an earlier version, as that version ran it: it had no ``data.flips`` key,
    random crops always flipped and ``random_crop`` was the default mode."""
    cfg = copy.deepcopy(cfg)
    data = cfg.get("data")
    if isinstance(data, dict) and "flips" not in data:
        data.setdefault("mode", "random_crop")
        data["flips"] = data["mode"] == "random_crop"
    return cfg


def _drop_merged_keys(cfg: dict) -> dict:
    """Remove keys of :data:`MERGED_KEYS` from a saved config; they must agree with the key they became."""
    cfg = copy.deepcopy(cfg)
    for (block, key), (target_block, target_key) in MERGED_KEYS.items():
        if isinstance(cfg.get(block), dict) and key in cfg[block]:
            value = cfg[block].pop(key)
            target = cfg.get(target_block, {}).get(target_key, DEFAULTS[target_block][target_key])
            if value != target:
                raise ConfigError(f"config key '{block}.{key}' ({value}) is now '{target_block}.{target_key}' "
                                  f"({target}); they must agree")
    return cfg


def check_values(cfg: dict) -> dict:
    """Reject values that have the right type but cannot work (e.g. ``train.epochs: 0``, a NaN or infinite
    number anywhere); returns ``cfg``."""
    flat = flatten(cfg)
    for key, value in flat.items():
        if not all(math.isfinite(number) for number in _floats(value)):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    for key, low in _LOWER_BOUNDS.items():
        value = flat.get(key)
        if value is not None and value < low:
            raise ConfigError(f"config key '{key}' must be at least {low}, got {value}")
    for key in _POSITIVE:
        value = flat.get(key)
        if value is not None and value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    scale_range = cfg["data"]["scale_range"]
    if scale_range is not None:
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in scale_range)
        if not (len(scale_range) == 2 and numbers and 0 < scale_range[0] <= scale_range[1]):
            raise ConfigError(f"config key 'data.scale_range' must be [lo, hi] with 0 < lo <= hi, got {scale_range}")
        if cfg["data"]["mode"] != "random_crop":
            raise ConfigError(f"config key 'data.scale_range' needs data.mode random_crop, not {cfg['data']['mode']!r}")
    if cfg["data"]["crops_per_scene"] != 1 and cfg["data"]["mode"] != "random_crop":
        raise ConfigError(f"config key 'data.crops_per_scene' needs data.mode random_crop, not {cfg['data']['mode']!r}")
    if 0 <= cfg["data"]["ignore_index"] < (cfg["data"]["num_classes"] or 0):
        raise ConfigError(f"data.ignore_index {cfg['data']['ignore_index']} is a class index "
                          f"(data.num_classes {cfg['data']['num_classes']})")
    return cfg


def _floats(value: Any) -> list[float]:
    """The floats of a value, including those inside (nested) lists."""
    if isinstance(value, float):
        return [value]
    if isinstance(value, list | tuple):
        return [number for item in value for number in _floats(item)]
    return []


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults ← YAML file (with its ``base:`` chain) ← overrides; returns a fully resolved, checked dict."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = merge(cfg, _drop_merged_keys(_read_yaml(Path(path))))
    return check_values(_with_overrides(cfg, overrides))


def _with_overrides(cfg: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        cfg = merge(cfg, nested)
    return cfg


def apply_overrides(cfg: dict, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A resolved config (e.g. a checkpoint's) checked against the defaults, with ``key=value`` overrides applied.

    Keys the defaults do not know are errors, as in :func:`load_config`; keys the config lacks (written by an
    older version) take their defaults.
    """
    out = merge(copy.deepcopy(DEFAULTS), _drop_merged_keys(_migrate_saved(cfg)))
    return check_values(_with_overrides(out, overrides))


def load_saved_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A run folder's ``config.yaml`` (a resolved config, possibly from an earlier version) with overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 — safe, see above
    except _RepeatedKeyError as err:
        raise ConfigError(f"saved config {path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"saved config {path} cannot be read: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"saved config {path} must hold a mapping")
    return apply_overrides(data, overrides)


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


if __name__ == "__main__":
    import sys

    target = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if target.is_file() and target.read_text(encoding="utf-8") == config_markdown() else 1)
    atomic_write_text(target, config_markdown())
    print(f"wrote {target}")
