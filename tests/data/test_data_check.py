import shutil

import cv2
import numpy as np
import pytest

from data.check import check_dataset, detect_layout, main
from data.synthetic import generate_dataset

SIZE = (48, 32)


@pytest.fixture
def clean_set(tmp_path):
    root = tmp_path / "syn"
    generate_dataset(root, 8, 4, SIZE, seed=1)
    return root


def test_clean_synthetic_set_passes(clean_set, capsys):
    assert detect_layout(clean_set) == "fmb"
    report = check_dataset(clean_set)
    assert report.ok and not report.problems, report
    assert report.pairs == {"train": 8, "test": 4} and len(report.class_names) == 15
    assert main([str(clean_set)]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_broken_set_reports_each_problem_by_name(clean_set, capsys):
    train = clean_set / "train"
    (train / "Visible" / "00001.png").unlink()  # missing partner
    ir = cv2.imread(str(train / "Infrared" / "00002.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(train / "Infrared" / "00002.png"), ir[:-2])  # size mismatch
    (train / "Visible" / "00003.png").write_bytes(b"")  # unreadable
    label = cv2.imread(str(train / "Label" / "00004.png"), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 200
    cv2.imwrite(str(train / "Label" / "00004.png"), label)  # out-of-range label value
    report = check_dataset(clean_set)
    assert not report.ok
    by_kind = {p.kind: p for p in report.problems}
    assert {"missing-partner", "size-mismatch", "unreadable", "label-range"} <= set(by_kind)
    assert by_kind["missing-partner"].path.endswith("00001.png")
    assert "00002" in str(by_kind["size-mismatch"]) and "48x30" in str(by_kind["size-mismatch"])
    assert by_kind["unreadable"].path.endswith("00003.png") and "empty" in by_kind["unreadable"].detail
    assert by_kind["label-range"].path.endswith("00004.png") and "[200]" in by_kind["label-range"].detail
    assert len(report.problems) == 4
    assert main([str(clean_set)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("ERROR") for line in out) == 4 and out[-1].startswith("FAILED")
    # 200 accepted as the ignore value
    assert not any(p.kind == "label-range" for p in check_dataset(clean_set, ignore_index=200).problems)


def test_absent_classes_are_warnings_and_strict_fails(clean_set):
    report = check_dataset(clean_set, num_classes=20, class_names=None)
    absent = [w for w in report.warnings if w.kind == "absent-class"]
    assert absent and "15 class15" in str(absent[0]) and "19 class19" in str(absent[0])
    assert report.ok
    assert not check_dataset(clean_set, num_classes=20, strict=True).ok


def test_folders_layout_empty_and_missing(tmp_path, capsys):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    report = check_dataset(tmp_path)
    kinds = [p.kind for p in report.problems]
    assert kinds.count("empty-folder") == 2 and not report.ok
    img = np.zeros((4, 4), np.uint8)
    cv2.imwrite(str(tmp_path / "ir" / "a.png"), img)
    cv2.imwrite(str(tmp_path / "vi" / "a.png"), img)
    (tmp_path / "lab").mkdir()
    cv2.imwrite(str(tmp_path / "lab" / "a.png"), img)
    assert main(["--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"), "--label", str(tmp_path / "lab"),
                 "--classes", "3"]) == 0
    assert "1 pairs" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "vi")
    report = check_dataset(tmp_path / "nowhere", layout="fmb")
    assert [p.kind for p in report.problems] == ["missing-folder"]
