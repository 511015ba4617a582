"""The reproduction kit (scripts/table*.py, ablations.py, figures.py, prepare_data.py) end to end on the built-in
synthetic dataset with a tiny budget, the published tables, and the ablation / parameter configs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from data.synthetic import generate_dataset
from engine.checkpoint import load_checkpoint
from engine.config import flatten, load_config
from metrics.report import load_published
from scripts import ablations, figures, prepare_data, repro_common, repro_tables, table1_fusion, table2_segmentation

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TINY = ["fusion.stages=2", "fusion.channels=8", "attribution.ig_steps=1", "data.patch_size=32", "train.batch_size=2",
        "data.val_pairs=0", "train.epochs=1", "train.max_steps_per_epoch=1", "data.num_workers=0", "device=cpu"]

# Each ablation / parameter config and the only keys in which it may differ from configs/fmb_paper.yaml.
SWITCHES: dict[str, dict[str, object]] = {
    "ablations/i_no_attention.yaml": {"fusion.attention": False},
    "ablations/ii_grad_attention.yaml": {"attribution.attention": "grad"},
    "ablations/iii_no_intensity.yaml": {"loss.use_intensity": False},
    "ablations/iv_no_gradient.yaml": {"loss.use_gradient": False},
    "ablations/v_no_short_memory.yaml": {"fusion.short_memory": False},
    "ablations/vi_no_long_memory.yaml": {"fusion.long_memory": False},
    "ablations/vii_no_memory.yaml": {"fusion.short_memory": False, "fusion.long_memory": False},
    "ablations/viii_seg_fused_only.yaml": {"loss.seg_sources": ["fused"]},
    **{f"stages/k{k}.yaml": ({} if k == 5 else {"fusion.stages": k}) for k in range(2, 9)},
    **{f"substeps/s{s}.yaml": ({} if s == 1 else {"attribution.attention_substeps": s}) for s in range(1, 6)},
}


@pytest.fixture(scope="session")
def syn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repro_synthetic")
    generate_dataset(root, n_train=4, n_test=2, size=(64, 48), seed=0, overwrite=True)
    return root


@pytest.fixture(scope="session")
def trained(syn_root, tmp_path_factory) -> tuple[Path, dict, Path]:
    """(checkpoint, config, results folder) of one tiny run trained through repro_common.train_config."""
    results = tmp_path_factory.mktemp("repro_results")
    cfg = load_config(CONFIGS / "fmb_paper.yaml", [f"data.root={syn_root}", *TINY])
    checkpoint = repro_common.train_config(cfg, results / "run", results=results, quiet=True)
    return checkpoint, cfg, results


def tiny_overrides(root: Path) -> list[str]:
    return [arg for item in [f"data.root={root}", *TINY] for arg in ("--set", item)]


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_config_differs_from_the_paper_only_in_its_switch(name):
    base = flatten(load_config(CONFIGS / "fmb_paper.yaml"))
    cfg = flatten(load_config(CONFIGS / name))
    assert set(cfg) == set(base)
    assert {k: v for k, v in cfg.items() if base[k] != v} == SWITCHES[name]


def test_every_config_file_is_covered_and_registered():
    files = {str(p.relative_to(CONFIGS)) for d in ("ablations", "stages", "substeps") for p in (CONFIGS / d).glob("*")}
    assert files == set(SWITCHES)
    registered = {str(u.config.relative_to(CONFIGS)) for u in ablations.UNITS}
    assert registered == set(SWITCHES) | {"fmb_paper.yaml"}
    assert len({u.uid.lower() for u in ablations.UNITS}) == len(ablations.UNITS)


def test_published_tables_load_and_print():
    table3 = load_published(CONFIGS / "published" / "table3_ablation.yaml", "FMB")
    stages = load_published(CONFIGS / "published" / "table4_parameters.yaml", "stages")
    steps = load_published(CONFIGS / "published" / "table4_parameters.yaml", "approximation_steps")
    table1 = load_published(CONFIGS / "published" / "table1_fusion.yaml", "FMB")
    assert len(table3) == 9 and len(stages) == 7 and len(steps) == 5
    assert table3["Ours"] == stages["K=5"] == steps["k"] == table1["UAAFusion"]
    assert table3["II IG->Grad"] == {"EN": 6.722, "SF": 13.926, "CC": 0.637, "VIF": 0.427, "Qabf": 0.692,
                                     "SSIM": 0.491}
    assert steps["5k"]["Qabf"] == 0.713 and stages["K=2"]["EN"] == 6.281
    for unit in ablations.UNITS:  # every unit has its published row
        _, path, dataset = ablations.SECTIONS[unit.section]
        assert unit.row in load_published(path, dataset)
    section = repro_tables.Section("Table III", list(repro_common.FUSION_COLUMNS))
    section.add_published(table3)
    text = section.render("markdown")
    assert "| Ours (paper) | **6.746** | **14.243** |" in text
    assert "VIII L_seg=CE(I_f) (paper)" in section.render("plain")


# --------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize("module", [table1_fusion, table2_segmentation, ablations, figures, prepare_data])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_figures_refuses_a_count_below_one(tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path / "none.pt"), "--ir", str(tmp_path), "--vi", str(tmp_path), "--count", "-1",
            "--results", str(tmp_path / "results")]
    assert figures.main(argv) == 2
    assert "--count must be at least 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_script_runs_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "scripts.ablations", "--list"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "VIII" in result.stdout and "configs/substeps/s5.yaml" in result.stdout


def test_training_is_skipped_when_done_and_guarded_against_another_config(trained, syn_root):
    checkpoint, cfg, results = trained
    assert checkpoint.is_file() and repro_common.is_done(results / "run")
    again = repro_common.train_config(cfg, results / "run", results=results, quiet=True)  # no training
    assert again == checkpoint
    other = load_config(CONFIGS / "fmb_paper.yaml", [f"data.root={syn_root}", *TINY, "fusion.stages=3"])
    with pytest.raises(repro_common.ReproError, match="finished run of another config"):
        repro_common.train_config(other, results / "run", results=results, quiet=True)
    (results / "run" / repro_common.DONE_MARKER).unlink()  # as if interrupted after its last checkpoint
    with pytest.raises(repro_common.ReproError, match="unfinished run of another config"):
        repro_common.train_config(other, results / "run", results=results, quiet=True)
    assert repro_common.train_config(cfg, results / "run", results=results, quiet=True) == checkpoint  # resumed
    assert repro_common.is_done(results / "run")
    assert len(repro_common.read_marker(results / "run")["history"]) == 1  # nothing was left to train
    assert load_checkpoint(checkpoint)["global_step"] == 1
    with pytest.raises(repro_common.ReproError, match="not inside the results folder"):
        repro_common.remove_output(syn_root, results)


# ------------------------------------------------------------------------------------------------ scripts


def test_table1_end_to_end(trained, syn_root, tmp_path):
    checkpoint, _, _ = trained
    sets = tmp_path / "sets.yaml"
    test_ir, test_vi = syn_root / "test" / "Infrared", syn_root / "test" / "Visible"
    sets.write_text(yaml.safe_dump({"RoadScene": {"ir": str(test_ir), "vi": str(test_vi), "max_pairs": 1}}))
    results = tmp_path / "results"
    argv = ["--checkpoint", str(checkpoint), "--fmb", str(syn_root), "--sets", str(sets), "--workers", "0",
            "--results", str(results), "--quiet"]
    assert table1_fusion.main(argv) == 0
    out = results / "table1"
    for suffix in (".md", ".json", ".csv"):
        assert (out / f"table1{suffix}").is_file()
    document = json.loads((out / "table1.json").read_text())
    titles = [s["title"] for s in document["sections"]]
    assert titles[0].startswith("Table I, RoadScene: 1 pairs") and titles[1].startswith("Table I, FMB: 2 pairs")
    fmb = document["sections"][1]["rows"]
    assert fmb["UAAFusion (paper)"]["Qabf"] == 0.712 and fmb["UAAFusion (paper)"]["source"] == "paper"
    ours = fmb["UAAFusion (ours)"]
    assert ours["source"] == "ours" and all(0.0 <= ours[k] <= 8.0 for k in ("EN", "CC", "Qabf", "SSIM"))
    assert sorted(p.name for p in (out / "fused" / "FMB").glob("*.png")) == ["00004.png", "00005.png"]
    assert "| UAAFusion (ours) |" in (out / "table1.md").read_text()
    # a re-run skips the finished sets
    marker = out / "fused" / "FMB" / repro_common.DONE_MARKER
    stamp = marker.stat().st_mtime_ns
    assert table1_fusion.main(argv) == 0
    assert marker.stat().st_mtime_ns == stamp


def test_table2_end_to_end(trained, syn_root, tmp_path):
    checkpoint, _, _ = trained
    results = tmp_path / "results"
    argv = ["--data-root", str(syn_root), "--fuse", f"UAAFusion={checkpoint}", "--epochs", "1", "--max-steps", "1",
            "--batch-size", "2", "--crop", "32", "--workers", "0", "--device", "cpu", "--results", str(results),
            "--quiet"]
    assert table2_segmentation.main(argv) == 0
    out = results / "table2"
    document = json.loads((out / "table2.json").read_text())
    rows = document["sections"][0]["rows"]
    for name in ("Infrared", "Visible", "UAAFusion"):
        assert rows[f"{name} (ours)"]["source"] == "ours"
        assert (out / "runs" / name / "scores.json").is_file()
        assert len(list((out / "runs" / name / "pred").glob("*.png"))) == 2
    assert rows["UAAFusion (paper)"]["mIoU"] == 64.55
    assert "Car Acc" in document["sections"][0]["columns"]
    assert document["reported_classes"] == list(table2_segmentation.PAPER_CLASSES)
    scores = json.loads((out / "runs" / "UAAFusion" / "scores.json").read_text())
    confusion = np.array(scores["methods"]["UAAFusion"]["confusion"])
    assert confusion.sum() == 2 * 64 * 48  # every labelled test pixel scored once
    assert len(list((out / "fused" / "UAAFusion" / "train").glob("*.png"))) == 4


def test_ablations_end_to_end(syn_root, tmp_path):
    results = tmp_path / "results"
    argv = ["--only", "I", "VIII", *tiny_overrides(syn_root), "--max-pairs", "1", "--workers", "0",
            "--results", str(results), "--quiet"]
    assert ablations.main(argv) == 0
    out = results / "ablations"
    document = json.loads((out / "ablations.json").read_text())
    assert [s["title"].split(",")[0] for s in document["sections"]] == ["Table III: ablations (FMB test split)"]
    rows = document["sections"][0]["rows"]
    assert {"I w/o att (ours)", "VIII L_seg=CE(I_f) (ours)", "Ours (paper)"} <= set(rows)
    for uid in ("I", "VIII"):
        assert repro_common.is_done(out / "runs" / uid) and (out / "metrics" / f"{uid}.json").is_file()
    run_cfg = yaml.safe_load((out / "runs" / "I" / "config.yaml").read_text())
    assert run_cfg["fusion"]["attention"] is False and run_cfg["loss"]["seg_sources"] == ["ir", "vi", "fused"]


def test_figures_end_to_end(trained, syn_root, tmp_path):
    checkpoint, _, _ = trained
    results = tmp_path / "results"
    label = cv2.imread(str(syn_root / "test" / "Label" / "00004.png"), cv2.IMREAD_UNCHANGED)
    present = [str(c) for c in np.unique(label)]  # every class: then the class maps must add up to the total
    argv = ["--checkpoint", str(checkpoint), "--data-root", str(syn_root), "--names", "00004", "--regions", "labels",
            "--classes", *present, "--results", str(results), "--device", "cpu", "--quiet"]
    assert figures.main(argv) == 0
    out = results / "figures"
    for suffix in ("fig3.png", "fig4.png", "stages.png", "fig3.json", "fig4.npz"):
        assert (out / f"00004_{suffix}").is_file()
    maps = np.load(out / "00004_fig4.npz")
    np.testing.assert_array_equal(maps["regions"], label)  # --regions labels
    assert int(maps["stage"]) == 2 and maps["classes"].tolist() == [int(c) for c in present]
    total = maps["total"]
    scale = np.abs(total).max()
    assert scale > 0
    np.testing.assert_allclose(total, maps["used_attention"][1], atol=1e-5 * scale)  # what stage 2 used
    np.testing.assert_allclose(maps["per_class"].sum(axis=0), total, atol=1e-5 * scale)  # Eq. 9 is a sum of classes
    assert maps["stages"].shape == (3, 48, 64) and not np.any(maps["used_attention"][0])  # A^(1) = 0
    weights = json.loads((out / "00004_fig3.json").read_text())["regions"]
    assert {e["index"] for e in weights.values()} == {int(c) for c in present}
    for entry in weights.values():
        assert abs(entry["w_ir"] + entry["w_vi"] - 1.0) < 1e-5
    stamp = (out / "00004_fig4.png").stat().st_mtime_ns
    assert figures.main(argv) == 0  # already drawn: skipped
    assert (out / "00004_fig4.png").stat().st_mtime_ns == stamp


def test_prepare_data_relabels_repacks_cuts_patches_and_converts_roadscene(syn_root, tmp_path):
    repack = tmp_path / "repack"
    for split in ("train", "test"):
        shutil.copytree(syn_root / split / "Infrared", repack / split / "ir")
        shutil.copytree(syn_root / split / "Visible", repack / split / "vi")
        (repack / split / "labels").mkdir()
        for path in (syn_root / split / "Label").glob("*.png"):
            label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.int64)
            reduced = np.where(label == 0, 255, label - 1).astype(np.uint8)  # a "reduce zero label" re-pack
            cv2.imwrite(str(repack / split / "labels" / path.name), reduced)
    results = tmp_path / "results"
    common = ["--results", str(results), "--quiet"]
    fmb = ["fmb", str(repack), "--out", str(tmp_path / "FMB"), "--relabel", "unreduce"]
    assert prepare_data.main([*fmb, *common]) == 0
    for path in (syn_root / "test" / "Label").glob("*.png"):
        restored = cv2.imread(str(tmp_path / "FMB" / "test" / "Label" / path.name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(restored, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    report = json.loads((results / "prepare_data" / "fmb_FMB.json").read_text())
    assert report["check"]["ok"] and "reduce zero label" in report["label_hint"]

    assert prepare_data.main(["patches", str(tmp_path / "FMB"), "--out", str(tmp_path / "patches"), "--size", "32",
                              *common]) == 0
    patches = sorted(p.name for p in (tmp_path / "patches" / "train" / "Infrared").glob("*.png"))
    assert patches and all("_y0_x" in p for p in patches) and len(patches) <= 2 * 4
    assert (tmp_path / "patches" / "patches.csv").read_text().count("\n") == len(patches) + 1

    roadscene = tmp_path / "roadscene"
    for index in range(3):
        for sub, shape in (("cropinfrared", (37, 41)), ("crop_LR_visible", (37, 41, 3))):
            (roadscene / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(roadscene / sub / f"FLIR_{index:05d}.jpg"), np.full(shape, 40 * index + 20, np.uint8))
    names = tmp_path / "names.txt"
    names.write_text("FLIR_00002.jpg\nFLIR_00000  # two of three\n")
    assert prepare_data.main(["roadscene", str(roadscene), "--out", str(tmp_path / "RS"), "--names", str(names),
                              "--to-png", *common]) == 0
    assert sorted(p.name for p in (tmp_path / "RS" / "crop_LR_visible").iterdir()) == ["FLIR_00000.png",
                                                                                        "FLIR_00002.png"]
    from data.layouts import detect_layout

    assert detect_layout(tmp_path / "RS") == "roadscene"  # one layout, one name: written, detected and loaded alike
    assert prepare_data.main(["roadscene", str(roadscene), "--out", str(roadscene), *common]) == 2
