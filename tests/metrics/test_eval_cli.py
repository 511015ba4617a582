"""eval_metrics.py: JSON schema, tables, published rows, workers, and every per-image error path."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import eval_metrics
from data.io import read_gray_0_255_metric_convention as read_gray
from metrics import ALL_METRICS, fusion_metrics
from metrics.report import format_table, load_published, rank_marks

REPO = Path(__file__).resolve().parents[2]
TABLE1 = REPO / "configs" / "published" / "table1_fusion.yaml"
METRICS = ["EN", "SF", "CC", "VIF", "Qabf", "SSIM"]
NAMES = ["n0", "n1", "n2", "n3", "n4"]


def _img(seed: int, shape=(40, 48), colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = 120 + 70 * np.sin(x / 4.0 + seed) * np.cos(y / 6.0) + rng.normal(0, 10, shape)
    img = np.clip(base, 0, 255).astype(np.uint8)
    return np.dstack([img, np.roll(img, 3, axis=1), 255 - img]) if colour else img


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """ir/vi pairs n0..n4 and fused folders: 'good' (mixed formats), 'broken' (one problem per image), 'empty'."""
    d = {k: tmp_path / k for k in ("ir", "vi", "good", "broken", "empty")}
    for p in d.values():
        p.mkdir()
    for i, name in enumerate(NAMES):
        ir, vi = _img(i), _img(10 + i, colour=True)
        cv2.imwrite(str(d["ir"] / f"{name}.png"), ir)
        cv2.imwrite(str(d["vi"] / f"{name}.png"), vi)
        fused = np.clip(0.5 * ir + 0.5 * cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY), 0, 255).astype(np.uint8)
        ext = [".png", ".bmp", ".tif", ".png", ".jpg"][i]
        cv2.imwrite(str(d["good"] / f"{name}{ext}"), np.dstack([fused] * 3) if i == 3 else fused)
    cv2.imwrite(str(d["broken"] / "n0.png"), _img(99))
    # n1: missing
    cv2.imwrite(str(d["broken"] / "n2.png"), _img(98, shape=(41, 48)))  # size mismatch
    (d["broken"] / "n3.png").write_bytes(b"")  # zero-byte
    (d["broken"] / "n4.png").write_text("this is not an image\n")  # text named .png
    return d


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = eval_metrics.main([*argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _base(d: dict[str, Path]) -> list[str]:
    return ["--ir", str(d["ir"]), "--vi", str(d["vi"]), "--workers", "0"]


def test_json_schema_and_plain_table(folders, tmp_path, capsys):
    out_json = tmp_path / "out" / "m.json"
    out_json.parent.mkdir()
    code, out, err = _run([*_base(folders), "--fused", str(folders["good"]), "--json", str(out_json)], capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith("convention: paper (CC mean, VIF sum, SSIM mean")
    doc = json.loads(out_json.read_text())
    assert doc["convention"] == "paper"
    assert list(doc["methods"]) == ["good"]  # the folder name
    method = doc["methods"]["good"]
    assert set(method) >= {"per_image", "mean"}
    assert list(method["per_image"]) == NAMES  # stems, whatever the extension
    for values in method["per_image"].values():
        assert list(values) == METRICS and all(isinstance(v, float) for v in values.values())
    for key in METRICS:
        assert method["mean"][key] == pytest.approx(np.mean([v[key] for v in method["per_image"].values()]))
    assert doc["failed"] == {"good": {}} and doc["counts"]["good"] == {"evaluated": 5, "failed": 0}
    assert not list(out_json.parent.glob(".*tmp"))  # atomic write left no temporary behind


def test_error_paths_are_reported_and_others_processed(folders, tmp_path, capsys):
    out_json, out_csv = tmp_path / "m.json", tmp_path / "m.csv"
    argv = [*_base(folders), "--fused", f"ok={folders['good']}", "--fused", f"bad={folders['broken']}",
            "--fused", str(folders["empty"]), "--json", str(out_json), "--csv", str(out_csv)]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 1
    lines = err.splitlines()

    def line_for(method: str, name: str) -> str:
        hits = [ln for ln in lines if ln.startswith(f"error: [{method}] {name}: ")]
        assert len(hits) == 1, (method, name, err)
        return hits[0]

    assert "missing fused image" in line_for("bad", "n1")
    assert "size mismatch" in line_for("bad", "n2") and "48x41" in line_for("bad", "n2")
    assert "empty file (0 bytes)" in line_for("bad", "n3") and "n3.png" in line_for("bad", "n3")
    assert "not a recognised image format" in line_for("bad", "n4") and "n4.png" in line_for("bad", "n4")
    for name in NAMES:
        assert "missing fused image" in line_for("empty", name)
    assert any("fused folder" in ln and "contains no images" in ln for ln in lines)
    assert not any("[ok]" in ln for ln in lines)

    doc = json.loads(out_json.read_text())
    assert list(doc["methods"]["bad"]["per_image"]) == ["n0"]
    assert list(doc["methods"]["ok"]["per_image"]) == NAMES
    assert doc["methods"]["empty"]["per_image"] == {}
    assert all(v is None for v in doc["methods"]["empty"]["mean"].values())
    assert set(doc["failed"]["bad"]) == {"n1", "n2", "n3", "n4"}
    assert doc["counts"] == {"ok": {"evaluated": 5, "failed": 0}, "bad": {"evaluated": 1, "failed": 4},
                             "empty": {"evaluated": 0, "failed": 5}}  # fmt: skip
    assert doc["methods"]["bad"]["mean"]["EN"] == doc["methods"]["bad"]["per_image"]["n0"]["EN"]
    csv_lines = out_csv.read_text().splitlines()
    assert csv_lines[0] == "method,image," + ",".join(METRICS)
    assert sum(ln.startswith("ok,n") for ln in csv_lines) == 5 and any(ln.startswith("bad,mean,") for ln in csv_lines)


def test_truncated_png_and_missing_source(folders, capsys):
    data = (folders["ir"] / "n0.png").read_bytes()
    (folders["good"] / "n0.png").write_bytes(data[: len(data) // 2])
    (folders["vi"] / "n4.png").unlink()
    code, _, err = _run([*_base(folders), "--fused", str(folders["good"])], capsys)
    assert code == 1
    assert "error: [good] n0: " in err and "truncated PNG" in err
    assert "error: [good] n4: no visible source" in err


def test_side_by_side_tables_with_marks(folders, capsys):
    argv = [*_base(folders), "--fused", f"A={folders['good']}", "--fused", f"B={folders['vi']}"]
    code, out, _ = _run([*argv, "--markdown", "--latex"], capsys)
    assert code == 0
    assert "| Method | EN ↑ | SF ↑ | CC ↑ | VIF ↑ | Qabf ↑ | SSIM ↑ |" in out  # better direction marked
    assert out.count("**") >= 12 and "<u>" in out  # one best per column (two rows: the other is second)
    assert r"\textbf{" in out and r"\underline{" in out and r"\begin{tabular}" in out
    code, plain, _ = _run(argv, capsys)
    assert "(* best, + second best)" in plain


def test_rank_marks_ties_and_second_best():
    table = {"a": {"X": 1.0004}, "b": {"X": 1.0001}, "c": {"X": 0.5}, "d": {"X": float("nan")}}
    marks = rank_marks(table, ["X"], decimals=3)
    assert marks == {("a", "X"): 1, ("b", "X"): 1, ("c", "X"): 2}  # equal at 3 decimals: both best
    text = format_table(table, ["X"], style="plain")
    assert "1.000*" in text and "0.500+" in text and " -" in text


def test_published_rows(folders, tmp_path, capsys):
    argv = [*_base(folders), "--fused", f"ours={folders['good']}", "--published", str(TABLE1)]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "FMB, MSRS, RoadScene" in err  # several datasets: must pick one
    argv += ["--published-dataset", "FMB", "--markdown", "--json", str(tmp_path / "p.json")]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    row = next(ln for ln in out.splitlines() if ln.startswith("| UAAFusion (published) |"))
    cells = "<u>6.746</u> | <u>14.243</u> | **0.662** | <u>0.438</u> | **0.712** | **0.499**"  # vs Text-IF and ours
    assert row == f"| UAAFusion (published) | {cells} |"
    assert "| ours |" in out
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["published"]["methods"]["Text-IF (published)"]["SF"] == 14.656
    csv_file = tmp_path / "pub.csv"
    csv_file.write_text("dataset,method,EN,SF,CC,VIF,Qabf,SSIM\nX,Foo,1,2,3,4,5,6\n")
    assert load_published(csv_file) == {"Foo": dict(zip(METRICS, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], strict=True))}


def test_published_table1_transcription():
    for dataset in ("FMB", "MSRS", "RoadScene"):
        rows = load_published(TABLE1, dataset)
        assert list(rows) == ["U2Fusion", "SDNet", "TarDAL", "SegMIF", "DDFM", "MURF", "LRRNet", "Diff-IF",
                              "Text-IF", "UAAFusion"]  # fmt: skip
        assert all(list(v) == METRICS for v in rows.values())
    ours = load_published(TABLE1, "FMB")["UAAFusion"]
    assert ours == {"EN": 6.746, "SF": 14.243, "CC": 0.662, "VIF": 0.438, "Qabf": 0.712, "SSIM": 0.499}
    assert load_published(TABLE1, "RoadScene")["UAAFusion"]["SF"] == 15.645
    assert load_published(TABLE1, "MSRS")["Diff-IF"]["VIF"] == 0.978


def test_workers_and_conventions(folders, tmp_path, capsys):
    results = {}
    for workers, conv in [("0", "tdfusion"), ("2", "tdfusion"), ("0", "paper")]:
        path = tmp_path / f"{workers}_{conv}.json"
        argv = ["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--fused", str(folders["good"]),
                "--workers", workers, "--convention", conv, "--json", str(path)]  # fmt: skip
        code, out, _ = _run(argv, capsys)
        assert code == 0 and out.startswith(f"convention: {conv}")
        results[(workers, conv)] = json.loads(path.read_text())
    assert results[("0", "tdfusion")]["methods"] == results[("2", "tdfusion")]["methods"]
    paper = results[("0", "paper")]["methods"]["good"]["mean"]
    td = results[("0", "tdfusion")]["methods"]["good"]["mean"]
    assert paper["VIF"] == pytest.approx(2 * td["VIF"]) and paper["SSIM"] == pytest.approx(td["SSIM"])


def test_usage_errors(folders, tmp_path, capsys):
    code, _, err = _run(["--ir", str(tmp_path / "nope"), "--vi", str(folders["vi"]), "--fused", str(folders["good"])],
                        capsys)  # fmt: skip
    assert code == 2 and "infrared folder not found" in err
    code, _, err = _run(["--ir", str(folders["empty"]), "--vi", str(folders["empty"]), "--fused",
                         str(folders["good"])], capsys)  # fmt: skip
    assert code == 2 and "no images found" in err
    code, _, err = _run(["--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--fused", str(folders["good"]),
                         "--workers", "-2"], capsys)  # fmt: skip
    assert code == 2 and "--workers must be 0 (evaluate in this process) or more, got -2" in err
    with pytest.raises(SystemExit):
        eval_metrics.main(["--ir", "a", "--vi", "b", "--fused", "c", "--convention", "matlab"])


def test_real_pairs_through_the_cli(shared_data, tmp_path, capsys):
    """Fused = visible on MSRS: VIF(vi, vi) = 1, so paper VIF = 1 + VIF(ir, vi) and CC = (r(ir, vi) + 1) / 2."""
    argv = ["--ir", str(shared_data / "MSRS" / "ir"), "--vi", str(shared_data / "MSRS" / "vi"), "--fused",
            f"vis={shared_data / 'MSRS' / 'vi'}", "--workers", "2", "--json", str(tmp_path / "r.json")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "r.json").read_text())
    per_image = doc["methods"]["vis"]["per_image"]
    assert len(per_image) == 27
    assert all(1.0 < v["VIF"] < 2.0 and 0.0 < v["CC"] <= 1.0 and 0.5 < v["SSIM"] < 1.0 for v in per_image.values())
    ir = read_gray(shared_data / "MSRS" / "ir" / "00004N.png").ravel()
    vi = read_gray(shared_data / "MSRS" / "vi" / "00004N.png").ravel()
    assert per_image["00004N"]["CC"] == pytest.approx((1 + np.corrcoef(ir, vi)[0, 1]) / 2, abs=1e-12)


def test_script_entry_point(folders):
    proc = subprocess.run([sys.executable, str(REPO / "eval_metrics.py"), "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "--convention" in proc.stdout and "seg --help" in proc.stdout
    proc = subprocess.run([sys.executable, str(REPO / "eval_metrics.py"), *_base(folders), "--fused",
                           str(folders["broken"]), "--no-progress"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "error: [broken] n3: " in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# --metrics, --references, undefined values, different image sets, outputs checked first, IO messages
# ---------------------------------------------------------------------------------------------------------------


def test_metrics_option_names_order_and_direction(folders, tmp_path, capsys):
    path = tmp_path / "all.json"
    argv = [*_base(folders), "--fused", f"A={folders['good']}", "--metrics", "all", "--json", str(path),
            "--csv", str(tmp_path / "all.csv")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    doc = json.loads(path.read_text())
    assert doc["metrics"] == list(ALL_METRICS) and list(doc["methods"]["A"]["mean"]) == list(ALL_METRICS)
    for values in doc["methods"]["A"]["per_image"].values():
        assert list(values) == list(ALL_METRICS)
    assert (tmp_path / "all.csv").read_text().splitlines()[0] == "method,image," + ",".join(ALL_METRICS)
    ir = read_gray(folders["ir"] / "n0.png")
    vi = read_gray(folders["vi"] / "n0.png")
    fused = read_gray(folders["good"] / "n0.png")
    want = fusion_metrics(fused, ir, vi, metrics="all")
    for key, value in doc["methods"]["A"]["per_image"]["n0"].items():
        assert value == pytest.approx(want[key], rel=1e-12), key

    # MSE: lower is better, so the row with the smaller MSE gets the bold mark
    argv = [*_base(folders), "--fused", f"A={folders['good']}", "--fused", f"B={folders['vi']}", "--metrics",
            "mse,SD", "--markdown", "--json", str(tmp_path / "two.json")]  # fmt: skip
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "| Method | MSE ↓ | SD ↑ |" in out
    means = json.loads((tmp_path / "two.json").read_text())["methods"]
    best = min(("A", "B"), key=lambda m: means[m]["mean"]["MSE"])
    row = next(ln for ln in out.splitlines() if ln.startswith(f"| {best} |"))
    assert row.split("|")[2].strip().startswith("**")
    code, plain, _ = _run(argv[:-3], capsys)
    assert "(lower is better: MSE; higher for the others)" in plain


def test_unknown_metric_is_a_usage_error(folders, capsys):
    code, _, err = _run([*_base(folders), "--fused", str(folders["good"]), "--metrics", "EN,FMI"], capsys)
    assert code == 2 and "unknown metric 'FMI'" in err and "SCD" in err


def test_reference_rows(folders, tmp_path, capsys):
    path = tmp_path / "ref.json"
    argv = [*_base(folders), "--fused", f"A={folders['good']}", "--fused", f"B={folders['vi']}", "--references",
            "--markdown", "--json", str(path)]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    doc = json.loads(path.read_text())
    assert list(doc["methods"]) == ["infrared", "visible", "average", "A", "B"]
    assert doc["references"] == ["infrared", "visible", "average"]
    ir = read_gray(folders["ir"] / "n2.png")
    vi = read_gray(folders["vi"] / "n2.png")
    for row, stand_in in (("infrared", ir), ("visible", vi), ("average", np.round((ir + vi) / 2))):
        want = fusion_metrics(stand_in, ir, vi)
        got = doc["methods"][row]["per_image"]["n2"]
        assert got == pytest.approx(want, rel=1e-12), row
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| Method")]
    assert [r.split("|")[1].strip() for r in rows] == ["infrared", "visible", "average", "A", "B"]
    assert not any("**" in r or "<u>" in r for r in rows[:3])  # references are shown, not ranked
    assert all("**" in r or "<u>" in r for r in rows[3:])
    # the sources alone, without a fused folder
    code, out, _ = _run([*_base(folders), "--references"], capsys)
    assert code == 0 and "average" in out
    code, _, err = _run([*_base(folders), "--references", "--fused", f"visible={folders['good']}"], capsys)
    assert code == 2 and "reference row" in err
    code, _, err = _run(_base(folders), capsys)
    assert code == 2 and "--fused" in err


def test_constant_and_identical_images_write_null_with_a_note(tmp_path, capsys):
    ir, vi, fused = tmp_path / "ir", tmp_path / "vi", tmp_path / "fused"
    for d in (ir, vi, fused):
        d.mkdir()
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        cv2.imwrite(str(ir / f"{name}.png"), _img(seed))
        cv2.imwrite(str(vi / f"{name}.png"), _img(seed + 10))
        cv2.imwrite(str(fused / f"{name}.png"), _img(seed + 20))
    cv2.imwrite(str(fused / "a.png"), np.full((40, 48), 90, np.uint8))  # constant fused image
    cv2.imwrite(str(vi / "b.png"), _img(2))  # b: ir = vi = fused, so MSE 0 and PSNR infinite
    cv2.imwrite(str(fused / "b.png"), _img(2))
    path = tmp_path / "m.json"
    argv = ["--ir", str(ir), "--vi", str(vi), "--fused", f"X={fused}", "--metrics", "all", "--workers", "0",
            "--json", str(path), "--csv", str(tmp_path / "m.csv")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    doc = json.loads(path.read_text())  # strict JSON: no NaN / Infinity tokens
    per_image = doc["methods"]["X"]["per_image"]
    assert per_image["a"]["CC"] is None and per_image["a"]["SD"] == 0.0 and per_image["a"]["AG"] == 0.0
    assert per_image["b"]["PSNR"] is None and per_image["b"]["MSE"] == 0.0
    assert all(v is not None for v in per_image["c"].values())
    assert doc["methods"]["X"]["mean"]["PSNR"] == pytest.approx(np.mean([per_image[n]["PSNR"] for n in "ac"]))
    notes = "\n".join(doc["notes"])
    assert "[X] a: CC" in notes and "PSNR = +inf" in notes and "null in JSON" in notes
    assert "note: [X] b:" in err and "PSNR = +inf" in err
    csv_row = next(ln for ln in (tmp_path / "m.csv").read_text().splitlines() if ln.startswith("X,b,"))
    assert ",," in csv_row  # the infinite PSNR is an empty cell


def test_methods_on_different_image_sets_compare_on_the_common_set(folders, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in folders["good"].iterdir():
        if p.stem != "n4":
            (partial / p.name).write_bytes(p.read_bytes())
    path = tmp_path / "c.json"
    argv = [*_base(folders), "--fused", f"all5={folders['good']}", "--fused", f"four={partial}", "--markdown",
            "--json", str(path)]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 1 and "[four] n4: missing fused image" in err
    assert "different image sets" in out and "4 images" in out
    doc = json.loads(path.read_text())
    assert doc["common"]["images"]["EN"] == ["n0", "n1", "n2", "n3"]
    own = doc["methods"]["all5"]["per_image"]
    assert doc["common"]["mean"]["all5"]["EN"] == pytest.approx(np.mean([own[n]["EN"] for n in NAMES[:4]]))
    assert doc["methods"]["all5"]["mean"]["EN"] == pytest.approx(np.mean([own[n]["EN"] for n in NAMES]))
    # on the common set both rows hold the same images: equal values, both marked best (no false winner)
    lines = [ln for ln in out.splitlines() if ln.startswith(("| all5", "| four"))]
    rows = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in lines}
    assert rows["all5"] == rows["four"] and all(c.strip().startswith("**") for c in rows["four"])


def test_unwritable_outputs_fail_before_evaluating(folders, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("occupied")
    for option in ("--json", "--csv"):
        code, out, err = _run([*_base(folders), "--fused", str(folders["good"]), option, str(blocker / "m.out")],
                              capsys)  # fmt: skip
        assert code == 2 and f"error: {option} " in err and "cannot create output folder" in err
        assert out == ""  # nothing was evaluated or printed
    code, _, err = _run([*_base(folders), "--fused", str(folders["good"]), "--json", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err
    code, _, err = _run(["seg", "--pred", str(folders["good"]), "--label", str(folders["ir"]), "--classes", "3",
                         "--json", str(blocker / "s.json")], capsys)  # fmt: skip
    assert code == 2 and "cannot create output folder" in err


def test_folder_or_broken_link_named_like_an_image(folders, capsys):
    (folders["broken"] / "n1.png").mkdir()  # n1 was missing: now a folder with an image's name
    (folders["ir"] / "n3.png").unlink()
    (folders["ir"] / "n3.png").symlink_to(folders["ir"] / "elsewhere.png")
    code, _, err = _run([*_base(folders), "--fused", str(folders["broken"])], capsys)
    assert code == 1
    assert "error: [broken] n1: fused image n1.png is a folder, not an image file" in err
    assert "error: [broken] n3: infrared source n3.png is a broken symbolic link" in err
    assert "no image named" not in err and "missing fused image (n1" not in err


def test_exif_rotated_sources_are_scored_as_stored(tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    ir, vi, fused = tmp_path / "ir", tmp_path / "vi", tmp_path / "fused"
    for d in (ir, vi, fused):
        d.mkdir()
    for folder, seed in ((ir, 1), (vi, 2)):
        image = pil.fromarray(_img(seed, shape=(24, 40)))
        exif = image.getexif()
        exif[0x0112] = 6  # displayed rotated by 90 degrees
        image.save(folder / "p.jpg", "JPEG", exif=exif.tobytes())
    cv2.imwrite(str(fused / "p.png"), _img(3, shape=(24, 40)))  # the fusion's output: stored order, no tag
    code, _, err = _run(["--ir", str(ir), "--vi", str(vi), "--fused", str(fused), "--workers", "0"], capsys)
    assert code == 0, err  # no size mismatch: sources read in stored order, like test.py reads them


def test_comparison_and_table_options_by_hand():
    from metrics.conventions import Convention
    from metrics.evaluate import FusionEvaluation

    per_image = {
        "A": {"n0": {"X": 1.0, "Y": 5.0}, "n1": {"X": 3.0, "Y": float("nan")}},
        "B": {"n1": {"X": 2.0, "Y": 1.0}},
        "C": {},
    }
    ev = FusionEvaluation(Convention.PAPER, ["A", "B", "C"], per_image, metrics=("X", "Y"))
    comparison = ev.comparison()
    assert comparison.common == {"X": ["n1"]}  # A's n0 is left out so that A and B compare on n1
    assert comparison.means["A"]["X"] == 3.0 and comparison.means["B"]["X"] == 2.0
    assert comparison.unranked == ["Y"]  # A has Y only on n0, B only on n1: nothing in common
    assert comparison.means["A"]["Y"] == 5.0 and math.isnan(comparison.means["C"]["X"])
    assert ev.means()["A"]["X"] == 2.0  # own-set mean, kept for the JSON

    table = {"ref": {"X": 9.0, "Y": 0.0}, "A": {"X": 3.0, "Y": 5.0}, "B": {"X": 2.0, "Y": 1.0}}
    text = format_table(table, ["X", "Y"], style="latex", directions={"X": "higher", "Y": "lower"},
                        rank_rows=["A", "B"], rank_columns=["Y"])  # fmt: skip
    assert r"X $\uparrow$ & Y $\downarrow$" in text
    assert r"B & 2.000 & \textbf{1.000}" in text and r"ref & 9.000 & 0.000" in text  # ref not ranked, X unranked
