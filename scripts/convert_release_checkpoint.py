"""Convert the authors' release checkpoint (UAAFusion.pth) into a UAAFusion checkpoint of this project.

    python -m scripts.convert_release_checkpoint UAAFusion.pth checkpoints/release.pt
    python -m scripts.convert_release_checkpoint UAAFusion.pth OUT.pt --config configs/official_release.yaml
    python test.py --config configs/official_release.yaml --checkpoint checkpoints/release.pt \
        --ir DIR --vi DIR --out DIR

Every key of the release file is mapped onto the model built from the config (default: the release profile,
configs/official_release.yaml), with shape checks; the two groups of keys that nothing uses (``init_conv_f0`` and
the last stage's ConvLSTM/conv5/conv6) are printed and kept under ``release_unused`` in the output. The output
holds ``model`` (the full UAAFusion state dict, which loads strictly), ``config`` (the resolved config),
``num_classes``, ``class_names``, ``converted_from`` and ``release_unused``; it is written atomically.

Exit code 0 on success, 2 on any error (message on stderr naming the file or the keys).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import FMB_CLASSES
from engine.checkpoint import save_checkpoint
from engine.config import ConfigError, load_config
from models.release.convert import (
    ReleaseCheckpointError,
    convert_release_state,
    read_release_checkpoint,
    release_num_classes,
    release_profile_differences,
)
from models.uaafusion import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CONFIG = REPO_ROOT / "configs" / "official_release.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", help="the authors' checkpoint (a dict with 'model_f' and 'model_s')")
    p.add_argument("out", help="where to write the converted checkpoint (e.g. checkpoints/release.pt)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="config the model is built from and that is stored in the output (default: %(default)s)")
    p.add_argument("--unsafe-unpickle", action="store_true",
                   help="accept a file holding pickled objects besides tensors (runs code from it: trusted files only)")
    return p.parse_args(argv)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_file(release_path: str | Path, out_path: str | Path, config: str | Path = DEFAULT_CONFIG,
                 allow_unsafe_unpickle: bool = False) -> dict:
    """Convert ``release_path`` into our checkpoint at ``out_path``; returns the written payload.

    Raises:
        ReleaseCheckpointError: unreadable / not a release checkpoint / keys or shapes that do not fit.
        ConfigError: a bad config.
        OSError: the output cannot be written.
    """
    release_path, out_path = Path(release_path), Path(out_path)
    if out_path.exists() and release_path.exists() and out_path.resolve() == release_path.resolve():
        raise ReleaseCheckpointError(f"refusing to overwrite the release checkpoint itself: {out_path}")
    cfg = load_config(config)
    release = read_release_checkpoint(release_path, allow_unsafe_unpickle)
    num_classes = release_num_classes(release, str(release_path))
    model = build_model(cfg, num_classes)
    state, unused = convert_release_state(release, model)
    model.load_state_dict(state, strict=True)  # the converted state fits the model exactly
    if num_classes == len(FMB_CLASSES):
        class_names = list(FMB_CLASSES)
    else:
        class_names = [f"class_{c}" for c in range(num_classes)]
        print(f"notice: the release segmenter has {num_classes} classes, not FMB's {len(FMB_CLASSES)}; "
              "generic class names are stored", file=sys.stderr)
    fusion_sd = release["model_f"]
    payload = {
        "model": model.state_dict(),
        "config": cfg,
        "num_classes": num_classes,
        "class_names": class_names,
        "converted_from": {
            "path": str(release_path.resolve()),
            "sha256": _sha256(release_path),
            "bytes": release_path.stat().st_size,
            "release_keys": len(fusion_sd) + len(release["model_s"]),
            "config_file": str(Path(config)),
        },
        "release_unused": {key: {"reason": reason, "value": fusion_sd[key[len("model_f."):]].clone()}
                           for key, reason in unused.items()},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_path, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        payload = convert_file(args.release, args.out, args.config, args.unsafe_unpickle)
    except (ReleaseCheckpointError, ConfigError, OSError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    unused = payload["release_unused"]
    mapped = payload["converted_from"]["release_keys"] - len(unused)
    print(f"converted {args.release}: {mapped} release keys mapped onto {len(payload['model'])} model keys, "
          f"{len(unused)} unused (kept under 'release_unused'):")
    reasons: dict[str, list[str]] = {}
    for key, entry in unused.items():
        reasons.setdefault(entry["reason"], []).append(key)
    for reason, keys in reasons.items():
        print(f"  unused because {reason}:")
        for key in keys:
            print(f"    {key}")
    rho = [round(float(v), 6) for k, v in payload["model"].items() if k.endswith(".rho")]
    print(f"  step sizes rho (release 'alpha'): {rho}")
    differences = release_profile_differences(payload["config"])
    if differences:
        print("notice: the config does not select the release's behaviour for:\n  " + "\n  ".join(differences),
              file=sys.stderr)
    print(f"wrote {args.out} ({payload['num_classes']} classes); run it with:\n"
          f"  python test.py --config {args.config} --checkpoint {args.out} --ir DIR --vi DIR --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
