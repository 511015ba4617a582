"""Segmentation scores: a hand-made confusion case, ignore index, background, folders, CLI, published Table II."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import eval_metrics
from metrics.report import load_published
from metrics.segmentation import class_scores, confusion_matrix, evaluate_seg_folders, summarise

REPO = Path(__file__).resolve().parents[2]
TABLE2 = REPO / "configs" / "published" / "table2_segmentation.yaml"

LABEL = np.array([[0, 1, 1], [2, 2, 255]])
PRED = np.array([[0, 1, 2], [2, 1, 0]])


def test_confusion_matrix_and_scores_by_hand():
    cm = confusion_matrix(PRED, LABEL, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])  # the 255 pixel is not counted
    acc, iou = class_scores(cm)
    np.testing.assert_allclose(acc, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(iou, [1.0, 1 / 3, 1 / 3])  # class 1: TP 1, FN 1, FP 1
    s = summarise(cm, ["bg", "a", "b"], background=0, reported=[2])
    assert s["mean"]["all"]["mAcc"] == pytest.approx(2 / 3)
    assert s["mean"]["all"]["mIoU"] == pytest.approx(5 / 9)
    assert s["mean"]["no_background"]["mAcc"] == pytest.approx(0.5)
    assert s["mean"]["no_background"]["mIoU"] == pytest.approx(1 / 3)
    assert s["mean"]["reported"] == {"mAcc": 0.5, "mIoU": pytest.approx(1 / 3)}
    assert s["per_class"]["a"] == {"Acc": 0.5, "IoU": pytest.approx(1 / 3), "pixels": 2}


def test_ignore_index_and_accumulation():
    cm = confusion_matrix(PRED, LABEL, 3, ignore_index=255)
    both = cm + confusion_matrix(PRED, LABEL, 3)
    np.testing.assert_array_equal(both, 2 * cm)
    with pytest.raises(ValueError, match="label values outside 0..2: \\[255\\]"):
        confusion_matrix(PRED, LABEL, 3, ignore_index=None)
    with pytest.raises(ValueError, match="prediction values outside"):
        confusion_matrix(np.full((2, 3), 7), LABEL, 3)
    with pytest.raises(ValueError, match="size mismatch"):
        confusion_matrix(PRED[:, :2], LABEL, 3)


def test_absent_classes_are_left_out_of_the_means():
    label = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])  # class 2 never labelled but predicted once; class 3 never seen at all
    acc, iou = class_scores(confusion_matrix(pred, label, 4))
    assert math.isnan(acc[2]) and iou[2] == 0.0
    assert math.isnan(acc[3]) and math.isnan(iou[3])
    s = summarise(confusion_matrix(pred, label, 4), list("wxyz"))
    assert s["mean"]["all"]["mAcc"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["mean"]["all"]["mIoU"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def _write(folder: Path, name: str, img: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), img.astype(np.uint8))


def _seg_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    labels, good, bad = tmp_path / "label", tmp_path / "good", tmp_path / "bad"
    for i in range(3):
        _write(labels, f"{i:05d}.png", LABEL)
        _write(good, f"{i:05d}.png", PRED)
    _write(bad, "00000.png", PRED)
    _write(bad, "00001.png", np.zeros((4, 4)))  # wrong size
    (bad / "00002.png").write_bytes(b"")  # empty file
    return labels, good, bad


def test_folders_and_failures(tmp_path):
    labels, good, bad = _seg_folders(tmp_path)
    res = evaluate_seg_folders({"good": good, "bad": bad}, labels, 3, ["bg", "a", "b"])
    np.testing.assert_array_equal(res.confusion["good"], 3 * confusion_matrix(PRED, LABEL, 3))
    assert res.images == {"good": 3, "bad": 1}
    assert set(res.failed["bad"]) == {"00001", "00002"}
    assert "size mismatch" in res.failed["bad"]["00001"] and "empty file" in res.failed["bad"]["00002"]
    assert res.any_failed and not res.failed["good"]


def test_seg_cli(tmp_path, capsys):
    labels, good, bad = _seg_folders(tmp_path)
    out = tmp_path / "seg.json"
    argv = ["seg", "--pred", f"ours={good}", "--pred", str(bad), "--label", str(labels), "--classes", "3",
            "--class-names", "bg", "a", "b", "--exclude-background", "--json", str(out), "--csv",
            str(tmp_path / "seg.csv"), "--markdown", "--no-progress"]  # fmt: skip
    assert eval_metrics.main(argv) == 1
    captured = capsys.readouterr()
    assert "[bad] 00001: " in captured.err and "[bad] 00002: " in captured.err
    assert "| ours |" in captured.out and "bg Acc" not in captured.out  # background column left out
    doc = json.loads(out.read_text())
    assert doc["methods"]["ours"]["mean"]["no_background"]["mIoU"] == pytest.approx(1 / 3)
    assert doc["methods"]["bad"]["images"] == 1 and set(doc["failed"]["bad"]) == {"00001", "00002"}
    assert "ours,a,1," in (tmp_path / "seg.csv").read_text()

    assert eval_metrics.main(["seg", "--pred", str(good), "--label", str(labels), "--classes", "3",
                              "--report-classes", "2", "--latex", "--no-progress"]) == 0  # fmt: skip
    assert "class2 Acc" in capsys.readouterr().out


def test_published_table2_loads_and_is_consistent():
    rows = load_published(TABLE2)  # one dataset: FMB
    assert len(rows) == 12 and list(rows)[0] == "Infrared" and list(rows)[-1] == "UAAFusion"
    ours = rows["UAAFusion"]
    assert (ours["Car Acc"], ours["Car IoU"], ours["mAcc"], ours["mIoU"]) == (94.24, 80.89, 72.79, 64.55)
    for method, row in rows.items():
        accs = [v for k, v in row.items() if k.endswith(" Acc")]
        ious = [v for k, v in row.items() if k.endswith(" IoU")]
        assert len(accs) == len(ious) == 8
        # the published means are over the 8 shown classes; the 8 values and the mean are each rounded to 0.01
        assert abs(np.mean(accs) - row["mAcc"]) <= 0.01, method
        assert abs(np.mean(ious) - row["mIoU"]) <= 0.01, method


def test_published_table2_in_seg_table(tmp_path, capsys):
    labels, good, _ = _seg_folders(tmp_path)
    fmb_label = np.array([[9, 9, 8], [3, 3, 255]])  # car, person, building
    fmb_pred = np.array([[9, 8, 8], [3, 3, 0]])
    for i in range(2):
        _write(tmp_path / "fl", f"{i}.png", fmb_label)
        _write(tmp_path / "fp", f"{i}.png", fmb_pred)
    argv = ["seg", "--pred", f"mine={tmp_path / 'fp'}", "--label", str(tmp_path / "fl"), "--classes", "15",
            "--class-names", "fmb", "--report-classes", "car", "person", "truck", "lamp", "sign", "building",
            "vegetation", "pole", "--published", str(TABLE2), "--no-progress"]  # fmt: skip
    assert eval_metrics.main(argv) == 0
    out = capsys.readouterr().out
    assert "UAAFusion (published)" in out and "94.24" in out and "mine" in out
    assert "50.00" in out  # car Acc of "mine": 1 of 2 car pixels


def test_palette_predictions_and_folder_entries_are_read_through_data_io(tmp_path):
    """Predictions go through data.io.read_label: a palette PNG gives its indices, not its colours."""
    pil = pytest.importorskip("PIL.Image")
    labels, preds = tmp_path / "label", tmp_path / "pred"
    _write(labels, "a.png", LABEL)
    _write(labels, "b.png", LABEL)
    preds.mkdir()
    image = pil.fromarray(PRED.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)  # colours that differ per index
    image.save(preds / "a.png")
    (preds / "b.png").mkdir()  # a folder named like the prediction
    res = evaluate_seg_folders({"p": preds}, labels, 3)
    np.testing.assert_array_equal(res.confusion["p"], confusion_matrix(PRED, LABEL, 3))
    assert res.failed["p"] == {"b": "prediction b.png is a folder, not an image file"}
