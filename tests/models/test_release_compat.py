"""Release compatibility (docs/RELEASE.md): the release checkpoint converter, the release profile end to end, every
§6 switch flipped from the release value to the paper value, and hand computations in the release profile.

The authors' weights are not needed: a synthetic checkpoint with the release's keys, shapes and dtypes is built
from ``tests/assets/release_state_dict.txt``. Everything runs on tiny inputs with one CPU thread.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from data.datasets import FMB_CLASSES, build_dataset, cut_release_patches
from engine.checkpoint import load_checkpoint
from engine.config import load_config
from engine.fuse_folder import FuseSettings, fuse_folder
from engine.trainer import Trainer
from losses import LossSettings, UAAFusionLoss
from models.blocks import ConvUnit
from models.fusion_net import UAAFusionNet
from models.release.convert import (
    RELEASE_SWITCHES,
    ReleaseCheckpointError,
    config_value,
    convert_release_state,
    read_release_checkpoint,
    release_profile_differences,
    reorder_conv2_inputs,
)
from models.release.segmenter import ReleaseSegmenter
from models.uaafusion import UAAFusion, build_model
from scripts import convert_release_checkpoint as converter
from tests.helpers.release_keys import read_key_listing, synthetic_release_checkpoint
from tests.helpers.scripts import test_cli
from tests.helpers.toy_models import CreatesFileWhenUnpickled

REPO = Path(__file__).resolve().parents[2]
RELEASE_CONFIG = REPO / "configs" / "official_release.yaml"
PAPER_CONFIG = REPO / "configs" / "fmb_paper.yaml"
LISTING = Path(__file__).resolve().parents[1] / "assets" / "release_state_dict.txt"
FAST = ["attribution.ig_steps=2"]  # M is 5 in both profiles; 2 keeps the tests quick and changes no architecture
C = 15
LAST = 4  # index of the release's last stage (K = 5)



@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The machine is shared: one thread avoids oversubscription, which makes these small ops far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def release() -> dict[str, dict[str, torch.Tensor]]:
    """A synthetic release checkpoint {"model_f": ..., "model_s": ...} (shared: do not mutate)."""
    return synthetic_release_checkpoint(read_key_listing(LISTING), seed=0)


@pytest.fixture(scope="module")
def converted(release) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    model = build_model(load_config(RELEASE_CONFIG), C)
    return convert_release_state(release, model)


@pytest.fixture(scope="module")
def converted_file(release, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("release")
    torch.save(release, folder / "UAAFusion.pth")
    converter.convert_file(folder / "UAAFusion.pth", folder / "release.pt")
    return folder / "release.pt"


def _model(converted, *overrides: str, strict: bool = True) -> UAAFusion:
    """The converted synthetic release model, built from the release profile plus ``overrides``, eval mode."""
    model = build_model(load_config(RELEASE_CONFIG, [*FAST, *overrides]), C)
    state = converted[0] if strict else {k: v for k, v in converted[0].items() if not k.endswith(".rho")}
    model.load_state_dict(state, strict=strict)
    return model.eval()


def _images(n: int = 2, h: int = 24, w: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


def _fuse(model: UAAFusion, ir, vi, labels=None):
    with torch.no_grad():
        return model(ir, vi, labels)


@pytest.fixture(scope="module")
def release_out(converted):
    """The converted release model's inference output on :func:`_images` (shared by the switch tests)."""
    return _fuse(_model(converted), *_images())


# ------------------------------------------------------------------------------------ release reference


def _rconv(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    """3×3 conv with bias and reflect padding, from the release's raw tensors."""
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), sd[f"{name}.weight"], sd[f"{name}.bias"])


def _runit(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    """The release's ConvUnit: conv → PReLU (one slope) → conv."""
    y = _rconv(x, sd, f"{name}.conv_unit.0")
    return _rconv(F.prelu(y, sd[f"{name}.conv_unit.1.weight"]), sd, f"{name}.conv_unit.2")


def _release_lstm(sd: dict, stage: int, z: torch.Tensor, state) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's ConvLSTM step from ``conv_x{i,f,o,j}`` / ``conv_h{i,f,o,j}`` (docs/RELEASE.md, row 13)."""
    def gate(g: str) -> torch.Tensor:
        out = _rconv(z, sd, f"blockflow.{stage}.lstm.conv_x{g}")
        return out if state is None else out + _rconv(state[0], sd, f"blockflow.{stage}.lstm.conv_h{g}")

    i, f, o, j = torch.sigmoid(gate("i")), torch.sigmoid(gate("f")), torch.sigmoid(gate("o")), torch.tanh(gate("j"))
    if state is None:
        c = i * j
        return o * c, c
    c = f * state[1] + i * j
    return o * torch.tanh(c), c


def release_fusion_reference(sd: dict, ir: torch.Tensor, vi: torch.Tensor, attention: list[torch.Tensor]):
    """The release's fusion network written from docs/RELEASE.md on its raw ``model_f`` tensors, given A per stage.

    Returns I^(1..K), each (N, 1, H, W).
    """
    image = (ir + vi) / 2
    m_s = m_l = torch.cat([_runit(ir, sd, "init_conv_ir"), _runit(vi, sd, "init_conv_vi")], dim=1)
    state, outs = None, []
    for k, att in enumerate(attention):
        f1 = _runit(image, sd, f"blockflow.{k}.conv1")  # F0 = I^(k-1): the gradient step is discarded
        f2 = _runit(torch.cat([f1, m_l, m_s], dim=1), sd, f"blockflow.{k}.conv2")  # release order
        f3 = f2 + _runit(f2, sd, f"blockflow.{k}.conv3") * torch.sigmoid(att)
        image = torch.sigmoid(_runit(f3, sd, f"blockflow.{k}.conv4.0"))
        state = _release_lstm(sd, k, _runit(torch.cat([f1, f2, f3], dim=1), sd, f"blockflow.{k}.conv5"), state)
        m_s, m_l = f3, _runit(state[0], sd, f"blockflow.{k}.conv6")
        outs.append(image)
    return outs


class FixedAttention:
    """Hands the fusion network a given A per stage."""

    def __init__(self, maps: list[torch.Tensor]) -> None:
        self.maps, self.k = maps, 0

    def start(self, initial: torch.Tensor) -> None:
        self.k = 0

    def observe(self, stage_output: torch.Tensor) -> None:
        pass

    def map_for_next_stage(self) -> torch.Tensor:
        self.k += 1
        return self.maps[self.k - 1]


class PixelPower(nn.Module):
    """Toy segmenter y^c = a_c · x^power at every pixel (no batch coupling): its gradients are known."""

    def __init__(self, a: list[float], power: int = 1) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor(a).view(1, -1, 1, 1))
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x**self.power


# ------------------------------------------------------------------------------------------- conversion


def test_conversion_loads_strictly_and_accounts_for_every_key(release, converted):
    state, unused = converted
    model = build_model(load_config(RELEASE_CONFIG), C)
    model.load_state_dict(state, strict=True)
    assert list(state) == list(model.state_dict())
    f, s = release["model_f"], release["model_s"]
    expected_unused = {f"model_f.{k}" for k in f
                       if k.startswith("init_conv_f0.") or re.match(rf"blockflow\.{LAST}\.(lstm|conv5|conv6)\.", k)}
    assert set(unused) == expected_unused and len(unused) == 5 + 16 + 10
    assert all("init_conv_f0" in reason or "last stage" in reason for reason in unused.values())
    for key, value in s.items():  # model_s.* -> segmenter.*, unchanged
        assert torch.equal(state[f"segmenter.{key}"], value), key
    for key, value in f.items():  # every model_f key: mapped (checked value by value) or unused
        if f"model_f.{key}" in unused:
            continue
        if key == "alpha":
            assert torch.equal(torch.stack([state[f"fusion.stages.{k}.rho"] for k in range(5)]), value)
        elif m := re.match(r"blockflow\.(\d)\.lstm\.conv_([xh])([ifoj])\.(weight|bias)$", key):
            stacked = state[f"fusion.stages.{m[1]}.lstm.conv_{'z' if m[2] == 'x' else 'h'}.{m[4]}"]
            block = "ifoj".index(m[3])
            assert torch.equal(stacked[32 * block: 32 * (block + 1)], value), key
        elif key.endswith("conv2.conv_unit.0.weight"):
            ours = state[_ours(key)]
            assert torch.equal(ours[:, :32], value[:, :32])  # F1
            assert torch.equal(ours[:, 32:64], value[:, 64:96])  # m_s
            assert torch.equal(ours[:, 64:], value[:, 32:64])  # m_l
        else:
            assert torch.equal(state[_ours(key)], value), key


# the release's fusion-network names (docs/RELEASE.md) and ours (models/fusion_net.py), written out independently
_RELEASE_TO_OURS = {"conv1": "lift", "conv2": "merge", "conv3": "refine", "conv4": "project", "conv5": "memory_in",
                    "conv6": "memory_out", "init_conv_ir": "init_memory_ir", "init_conv_vi": "init_memory_vi"}


def _ours(release_key: str) -> str:
    parts = release_key.split(".")
    if parts[0] == "blockflow":
        parts[0] = "stages"
    return "fusion." + ".".join(_RELEASE_TO_OURS.get(p, p) for p in parts)


def test_conv2_permutation_gives_the_release_convolution(release, converted):
    """Our conv2 on Cat(F1, m_s, m_l) equals a release-order ConvUnit on Cat(F1, m_l, m_s)."""
    model = _model(converted)
    prefix = "blockflow.1.conv2."
    raw = {k[len(prefix):]: v for k, v in release["model_f"].items() if k.startswith(prefix)}
    release_conv = ConvUnit(96, 32, 32)
    release_conv.load_state_dict(raw)
    g = torch.Generator().manual_seed(3)
    f1, m_s, m_l = (torch.randn(1, 32, 7, 9, generator=g) for _ in range(3))
    expected = release_conv(torch.cat([f1, m_l, m_s], dim=1))
    ours = model.fusion.stages[1].merge(torch.cat([f1, m_s, m_l], dim=1))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    unpermuted = ConvUnit(96, 32, 32)
    unpermuted.load_state_dict(raw)
    assert not torch.allclose(unpermuted(torch.cat([f1, m_s, m_l], dim=1)), expected, atol=1e-3)
    assert torch.equal(reorder_conv2_inputs(reorder_conv2_inputs(raw["conv_unit.0.weight"])),
                       raw["conv_unit.0.weight"])  # swapping the two memory blocks twice is the identity


def test_converted_fusion_reproduces_the_release_network(release, converted):
    """Whole fusion network (rows 1, 12, 13, conv2 order, ConvLSTM gate stacking) against docs/RELEASE.md."""
    model = _model(converted)
    ir, vi = _images(h=10, w=12)
    g = torch.Generator().manual_seed(1)
    maps = [torch.zeros_like(ir)] + [torch.randn(ir.shape, generator=g) for _ in range(4)]
    w_ir = torch.rand(ir.shape, generator=g)  # unused by the release (no gradient step)
    with torch.no_grad():
        ours = model.fusion(ir, vi, w_ir, 1 - w_ir, FixedAttention(maps))
        reference = release_fusion_reference(release["model_f"], ir, vi, maps)
    assert len(ours.stages) == len(reference) == 5
    for k, (a, b) in enumerate(zip(ours.stages, reference)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"stage {k + 1}")


def _corrupt(release: dict, change) -> dict:
    copy = {top: dict(sd) for top, sd in release.items()}
    change(copy)
    return copy


@pytest.mark.parametrize("change,pattern", [
    (lambda r: r["model_f"].update({"blockflow.1.conv3.conv_unit.0.weight": torch.zeros(32, 31, 3, 3)}),
     r"shape mismatches[\s\S]*model_f\.blockflow\.1\.conv3\.conv_unit\.0\.weight \(32, 31, 3, 3\)"),
    (lambda r: r["model_f"].update({"alpha": torch.zeros(4)}), r"model_f\.alpha \(4,\)"),
    (lambda r: r["model_f"].pop("blockflow.2.conv1.conv_unit.0.bias"),
     r"missing keys[\s\S]*fusion\.stages\.2\.lift\.conv_unit\.0\.bias \(from model_f\.blockflow\.2\.conv1"),
    (lambda r: r["model_f"].pop("blockflow.0.lstm.conv_xo.weight"),
     r"incomplete ConvLSTM[\s\S]*model_f\.blockflow\.0\.lstm\.conv_xo\.weight"),
    (lambda r: r["model_s"].pop("cls_conv.bias"), r"segmenter\.cls_conv\.bias \(from model_s\.cls_conv\.bias\)"),
    (lambda r: r["model_f"].update({"extra.weight": torch.zeros(1)}), r"map to nothing[\s\S]*model_f\.extra\.weight"),
    (lambda r: r["model_f"].update({"blockflow.1.lstm.conv_xq.weight": torch.zeros(1)}),
     r"model_f\.blockflow\.1\.lstm\.conv_xq\.weight"),
])
def test_conversion_errors_name_the_keys(release, change, pattern):
    model = build_model(load_config(RELEASE_CONFIG), C)
    with pytest.raises(ReleaseCheckpointError, match=pattern):
        convert_release_state(_corrupt(release, change), model)


@pytest.mark.parametrize("content,pattern", [
    ("tensor", "not a UAAFusion release checkpoint: it holds a Tensor"),
    ("no_tops", "no 'model_f' entry"),
    ("garbage", "not a PyTorch checkpoint"),
    ("random", "not a PyTorch checkpoint"),
    ("empty", "is empty"),
    ("missing", "not found"),
    ("folder", "is a folder"),
])
def test_not_a_release_checkpoint_names_the_file(tmp_path, capsys, content, pattern):
    path = tmp_path / f"{content}.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "no_tops":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    elif content == "garbage":
        path.write_bytes(b"this is not a checkpoint at all" * 10)
    elif content == "random":  # random bytes: said to be no PyTorch file, not to hold pickled objects
        path.write_bytes(bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8)))
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "folder":
        path.mkdir()
    with pytest.raises(ReleaseCheckpointError, match=pattern) as info:
        read_release_checkpoint(path)
    assert str(path) in str(info.value) and "--unsafe-unpickle" not in str(info.value)
    code = converter.main([str(path), str(tmp_path / "out.pt")])
    assert code == 2 and str(path) in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_pickled_objects_are_refused_unless_explicitly_allowed(release, tmp_path, capsys):
    path = tmp_path / "pickled.pth"
    torch.save({**release, "args": argparse.Namespace(lr=1e-4)}, path)  # not loadable with weights_only=True
    with pytest.raises(ReleaseCheckpointError, match=r"refused[\s\S]*argparse\.Namespace[\s\S]*--unsafe-unpickle"):
        read_release_checkpoint(path)
    loaded = read_release_checkpoint(path, allow_unsafe_unpickle=True)
    assert "weights_only=False" in capsys.readouterr().err
    assert set(loaded) == {"model_f", "model_s"} and len(loaded["model_f"]) == len(release["model_f"])


def test_a_release_file_that_runs_code_is_never_executed(release, tmp_path):
    marker = tmp_path / "created_on_load"
    path = tmp_path / "evil.pth"
    torch.save({**release, "payload": CreatesFileWhenUnpickled(str(marker))}, path)
    with pytest.raises(ReleaseCheckpointError, match="refused"):
        read_release_checkpoint(path)
    assert not marker.exists()



def test_paper_segmenter_does_not_take_release_weights(release):
    """Row 8 flipped (segmenter.arch: deeplabv3plus): the converter names the model_s keys that do not fit."""
    model = build_model(load_config(RELEASE_CONFIG, ["segmenter.arch=deeplabv3plus", "segmenter.output=null"]), C)
    assert not isinstance(model.segmenter, ReleaseSegmenter)
    with pytest.raises(ReleaseCheckpointError, match=r"model_s\.feature_extractor\.features\.0\.0\.weight"):
        convert_release_state(release, model)


# ------------------------------------------------------------------------------------------- end to end


def _write_pairs(folder: Path) -> tuple[Path, Path]:
    """Pair "a": 40×36, colour infrared and visible; pair "b": 37×29 (odd), gray."""
    rng = np.random.default_rng(0)
    ir_dir, vi_dir = folder / "ir", folder / "vi"
    ir_dir.mkdir(parents=True)
    vi_dir.mkdir(parents=True)
    cv2.imwrite(str(ir_dir / "a.png"), rng.integers(0, 256, (36, 40, 3), dtype=np.uint8))
    cv2.imwrite(str(vi_dir / "a.png"), rng.integers(0, 256, (36, 40, 3), dtype=np.uint8))
    cv2.imwrite(str(ir_dir / "b.png"), rng.integers(0, 256, (29, 37), dtype=np.uint8))
    cv2.imwrite(str(vi_dir / "b.png"), rng.integers(0, 256, (29, 37), dtype=np.uint8))
    return ir_dir, vi_dir


def test_convert_script_then_test_cli(release, tmp_path, capsys):
    torch.save(release, tmp_path / "UAAFusion.pth")
    out_ckpt = tmp_path / "ckpt" / "release.pt"
    assert converter.main([str(tmp_path / "UAAFusion.pth"), str(out_ckpt)]) == 0
    printed = capsys.readouterr().out
    assert "model_f.init_conv_f0.0.conv_unit.0.weight" in printed
    assert "model_f.blockflow.4.lstm.conv_xi.weight" in printed
    payload = load_checkpoint(out_ckpt)
    assert payload["num_classes"] == C and payload["class_names"] == list(FMB_CLASSES)
    assert payload["config"] == load_config(RELEASE_CONFIG)
    assert len(payload["release_unused"]) == 31
    for key, entry in payload["release_unused"].items():
        assert torch.equal(entry["value"], release["model_f"][key[len("model_f."):]]) and entry["reason"]
    assert payload["converted_from"]["release_keys"] == 575 and len(payload["converted_from"]["sha256"]) == 64

    ir_dir, vi_dir = _write_pairs(tmp_path / "pairs")
    out_dir = tmp_path / "fused"
    code = test_cli.main(["--config", str(RELEASE_CONFIG), "--checkpoint", str(out_ckpt), "--ir", str(ir_dir),
                          "--vi", str(vi_dir), "--out", str(out_dir), "--save-npy", "--save-maps", "--quiet",
                          "--device", "cpu", *[a for s in FAST for a in ("--set", s)]])
    assert code == 0, capsys.readouterr().err
    for name, (h, w), colour in (("a", (36, 40), True), ("b", (29, 37), False)):
        raw = np.load(out_dir / "npy" / f"{name}.npy")
        assert raw.dtype == np.float32 and raw.shape == (h, w) and np.isfinite(raw).all()
        image = cv2.imread(str(out_dir / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == ((h, w, 3) if colour else (h, w))
        assert image.min() == 0 and image.max() == 255  # row 14: min-max stretched
        for key in ("w_ir", "w_vi", *(f"att{k}" for k in range(1, 6))):
            assert np.load(out_dir / "maps" / f"{name}_{key}.npy").shape == (h, w)
            assert (out_dir / "maps" / f"{name}_{key}.png").is_file()
        assert not np.load(out_dir / "maps" / f"{name}_att1.npy").any()  # stage 1: A = 0


# ------------------------------------------------------------------------- every switch of docs/RELEASE.md


def test_profiles_select_each_row():
    """official_release.yaml sets every switch to the release's value (line commented with its row), fmb_paper.yaml
    to the paper's."""
    release_cfg, paper_cfg = load_config(RELEASE_CONFIG), load_config(PAPER_CONFIG)
    assert release_profile_differences(release_cfg) == []
    assert all(config_value(paper_cfg, s.key) == s.paper for s in RELEASE_SWITCHES)
    assert {s.row for s in RELEASE_SWITCHES} | {12} == set(range(1, 17))
    text = RELEASE_CONFIG.read_text(encoding="utf-8")
    assert yaml.safe_load(text)["base"] == "fmb_paper.yaml"
    lines, section = {}, ""
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            if not line.startswith(" "):
                section = line.split(":")[0]
            else:
                lines[f"{section}.{line.split(':')[0].strip()}"] = line
    for s in RELEASE_SWITCHES:
        assert f"row {s.row}" in lines[s.key], lines[s.key]
    assert all("# row " in line for line in lines.values())  # every override is commented with its row


@pytest.mark.parametrize("row,override", [
    (1, "fusion.gradient_step=true"),
    (13, "fusion.lstm_first_step=zero_state"),
])
def test_fusion_switch_changes_fused_image(converted, release_out, row, override):
    ir, vi = _images()
    paper_out = _fuse(_model(converted, override), ir, vi)
    assert (release_out.fused - paper_out.fused).abs().max() > 1e-6, f"row {row}"


@pytest.mark.parametrize("row,override", [
    (3, "attribution.attention_reduction=sum"),
    (4, "attribution.attention_score=region"),
    (8, "segmenter.output=logits"),
])
def test_attention_switch_changes_attention_and_fused_image(converted, release_out, row, override):
    ir, vi = _images()
    paper_out = _fuse(_model(converted, override), ir, vi)
    for k in (2, 3, 4):  # stages 3..5 (stage 1 has A = 0 in both; row 3 first differs at stage 3)
        a, b = release_out.attention[k], paper_out.attention[k]
        assert (a - b).abs().max() > 0.01 * a.abs().max(), f"row {row}, stage {k + 1}"
    # The release's A is tiny (a gradient of a mean over N·C·H·W), so σ(A) moves the image only slightly.
    assert not torch.equal(release_out.fused, paper_out.fused), f"row {row}"


@pytest.mark.parametrize("row,override", [
    (5, "attribution.region_pooling=image"),
    (6, "attribution.region_normalization=sum"),
])
def test_weight_switch_changes_w(converted, release_out, row, override):
    """Rows 5 and 6 change w_ir, w_vi (the saved maps, and L_int in training); with the gradient step discarded
    (row 1) w does not enter the release's fused image."""
    ir, vi = _images()
    paper_out = _fuse(_model(converted, override), ir, vi)
    assert (release_out.w_ir - paper_out.w_ir).abs().max() > 1e-4, f"row {row}"
    assert torch.equal(release_out.fused, paper_out.fused)
    if row == 5:  # pooled: one value per class for the whole batch
        regions = release_out.regions
        for c in regions.unique():
            assert release_out.w_ir[:, 0][regions == c].unique().numel() == 1


def test_row2_rho_init(converted, release_out):
    """ρ starts at 0.001 (release) or 0.01 (paper); it changes the fused image once the gradient step is applied."""
    release_cfg = load_config(RELEASE_CONFIG)
    assert build_model(release_cfg, C).fusion.rho.tolist() == pytest.approx([0.001] * 5)
    assert build_model(load_config(RELEASE_CONFIG, ["fusion.rho_init=0.01"]), C).fusion.rho.tolist() == \
        pytest.approx([0.01] * 5)
    ir, vi = _images()
    step = "fusion.gradient_step=true"
    a = _fuse(_model(converted, step, strict=False), ir, vi).fused
    b = _fuse(_model(converted, step, "fusion.rho_init=0.01", strict=False), ir, vi).fused
    assert (a - b).abs().max() > 1e-6
    same = _fuse(_model(converted, "fusion.rho_init=0.01", strict=False), ir, vi).fused
    assert torch.equal(same, release_out.fused)  # ρ = 0.01 instead of alpha: no effect while row 1 discards the step


def _loss_inputs():
    fused = torch.tensor([[[[0.5, 1.0], [0.2, 0.0]]]])
    ir = torch.tensor([[[[0.0, 1.0], [0.4, 0.5]]]])
    vi = torch.tensor([[[[1.0, 0.0], [0.2, 1.0]]]])
    w_ir = torch.tensor([[[[0.25, 0.5], [1.0, 0.0]]]])
    seg = torch.tensor([[0.9, 0.2, 0.6, 0.3], [0.1, 0.7, 0.4, 0.8], [0.5, 0.5, 0.2, 0.1]]).view(1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [2, 0]]])
    return fused, ir, vi, w_ir, 1 - w_ir, {"ir": seg, "vi": seg.flip(1), "fused": seg.roll(1, 1)}, labels


def test_row7_and_row9_losses_by_hand_and_switches():
    """(d) In the release profile: L_int = mean((w1 d1)²) + mean((w2 d2)²); CE on the sigmoid scores as they are,
    class-0 pixels left out. Flipping either row to the paper changes the loss."""
    fused, ir, vi, w_ir, w_vi, seg, labels = _loss_inputs()
    loss = UAAFusionLoss(LossSettings(**load_config(RELEASE_CONFIG)["loss"]))
    terms = loss(fused, ir, vi, w_ir, w_vi, seg, labels)
    # d1 = [0.5, 0, -0.2, -0.5], w1 = [0.25, 0.5, 1, 0]; d2 = [-0.5, 1, 0, -1], w2 = [0.75, 0.5, 0, 1]
    expected_int = (0.125**2 + 0 + 0.2**2 + 0) / 4 + (0.375**2 + 0.5**2 + 0 + 1.0) / 4
    assert terms["int"].item() == pytest.approx(expected_int, rel=1e-6)
    # only pixels (0, 1) with class 1 and (1, 0) with class 2 count; the scores go into softmax unchanged
    def ce(scores: torch.Tensor) -> float:
        flat = scores.view(3, 4)
        return float(-(flat[1, 1] - flat[:, 1].exp().sum().log() + flat[2, 2] - flat[:, 2].exp().sum().log()) / 2)

    expected_seg = (ce(seg["ir"]) + ce(seg["vi"]) + ce(seg["fused"])) / 3
    assert terms["seg"].item() == pytest.approx(expected_seg, rel=1e-6)
    row7 = UAAFusionLoss(LossSettings(**load_config(RELEASE_CONFIG, ["loss.intensity_form=weighted"])["loss"]))
    assert row7(fused, ir, vi, w_ir, w_vi, seg, labels)["int"].item() != pytest.approx(expected_int)
    row9 = UAAFusionLoss(LossSettings(**load_config(RELEASE_CONFIG, ["loss.ignore_classes=[]"])["loss"]))
    assert row9(fused, ir, vi, w_ir, w_vi, seg, labels)["seg"].item() != pytest.approx(expected_seg)


def test_row8_cross_entropy_takes_the_segmenter_sigmoid_outputs(converted):
    model = _model(converted)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        scores = model.segmenter(x)
    assert scores.min() > 0 and scores.max() < 1  # sigmoid outputs
    torch.testing.assert_close(scores, torch.sigmoid(model.segmenter.forward_logits(x)))
    labels = torch.randint(1, C, (1, 16, 16))
    loss = UAAFusionLoss(LossSettings(**load_config(RELEASE_CONFIG)["loss"]))
    seg = loss(x, x, x, torch.full_like(x, 0.5), torch.full_like(x, 0.5), {k: scores for k in ("ir", "vi", "fused")},
               labels)["seg"]
    assert seg.item() == pytest.approx(F.cross_entropy(scores, labels).item(), rel=1e-6)


def test_row10_release_patches(tmp_path):
    """data.mode release_patches / patch_size 256 go through cut_release_patches: 256×256 non-overlapping patches,
    low-contrast ones skipped; the paper's random_crop gives 128×128 crops."""
    rng = np.random.default_rng(0)
    for split_dir in ("Infrared", "Visible", "Label"):
        (tmp_path / "train" / split_dir).mkdir(parents=True)
    for name, dark_right in (("00001", False), ("00002", True)):
        ir = rng.integers(20, 256, (300, 520), dtype=np.uint8)
        if dark_right:
            ir[:, 256:] = 0  # an all-dark infrared patch: skipped (the release keeps it through a 0/0 NaN)
        cv2.imwrite(str(tmp_path / "train" / "Infrared" / f"{name}.png"), ir)
        cv2.imwrite(str(tmp_path / "train" / "Visible" / f"{name}.png"), rng.integers(20, 256, (300, 520), np.uint8))
        cv2.imwrite(str(tmp_path / "train" / "Label" / f"{name}.png"), rng.integers(0, C, (300, 520), np.uint8))

    def dataset(cfg: dict):
        return build_dataset({"name": "fmb", "root": str(tmp_path), "mode": cfg["data"]["mode"],
                              "patch_size": cfg["data"]["patch_size"], "seed": 0}, "train")

    release_cfg = load_config(RELEASE_CONFIG)
    assert release_cfg["train"]["epochs"] == 40
    patches = dataset(release_cfg)
    assert len(patches) == 3  # 2 + 1 (the dark one skipped)
    expected = [p for i in range(2) for p in cut_release_patches(patches.load_pair(i)["ir"],
                                                                   patches.load_pair(i)["vi_y"],
                                                                   patches.load_pair(i)["label"])]
    assert [(p.top, p.left) for p in expected] == [(0, 0), (0, 256), (0, 0)]
    for sample, patch in zip((patches[i] for i in range(3)), expected):
        assert sample["ir"].shape == (1, 256, 256) and sample["label"].shape == (256, 256)
        assert np.array_equal(sample["ir"][0].numpy(), patch.ir)
        assert np.array_equal(sample["label"].numpy(), patch.label)
    paper_cfg = load_config(RELEASE_CONFIG, ["data.mode=random_crop", "data.patch_size=128"])
    crops = dataset(paper_cfg)
    assert len(crops) == 2 and crops[0]["ir"].shape == (1, 128, 128)


def test_row11_separate_optimizer_and_pretrained_segmenter(converted, converted_file):
    """The release profile gives the segmenter its own Adam (the paper: one joint Adam), and
    train.segmenter_checkpoint starts it from a file (here: the converted release checkpoint)."""
    model = build_model(load_config(RELEASE_CONFIG), C)
    release_opts, _ = Trainer._build_optimizers(SimpleNamespace(tcfg=load_config(RELEASE_CONFIG)["train"], model=model))
    paper_opts, _ = Trainer._build_optimizers(SimpleNamespace(
        tcfg=load_config(RELEASE_CONFIG, ["train.separate_segmenter_optimizer=false"])["train"], model=model))
    assert set(release_opts) == {"fusion", "segmenter"} and set(paper_opts) == {"joint"}
    seg_params = {id(p) for p in model.segmenter.parameters()}
    assert {id(p) for g in release_opts["segmenter"].param_groups for p in g["params"]} == seg_params
    assert release_opts["segmenter"].param_groups[0]["lr"] == 1e-4
    Trainer._load_segmenter(SimpleNamespace(model=model, device="cpu"), str(converted_file))
    for key, value in model.segmenter.state_dict().items():
        assert torch.equal(value, converted[0][f"segmenter.{key}"]), key


def test_row12_initial_estimate_and_memory_in_both_profiles():
    ir, vi = _images(h=9, w=11)
    for path in (PAPER_CONFIG, RELEASE_CONFIG):
        net = UAAFusionNet(**load_config(path)["fusion"])
        torch.testing.assert_close(net.initial_estimate(ir, vi), (ir + vi) / 2)
        memory = net.initial_memory(ir, vi)
        assert memory.short.shape == (2, 32, 9, 11) and memory.long is memory.short
        torch.testing.assert_close(memory.short, torch.cat([net.init_memory_ir(ir), net.init_memory_vi(vi)], dim=1))
        with torch.no_grad():
            w = torch.full_like(ir, 0.5)
            torch.testing.assert_close(net(ir, vi, w, w).initial, (ir + vi) / 2)


def test_row14_saved_image(converted, tmp_path):
    """The written PNG changes with test.output (stretch / clamp) and with test.chroma (release / visible)."""
    rng = np.random.default_rng(1)
    for folder in ("ir", "vi"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "p.png"), rng.integers(0, 256, (20, 22, 3), dtype=np.uint8))
    model = _model(converted)
    saved = {}
    for output, chroma in (("stretch", "release"), ("clamp", "release"), ("stretch", "visible")):
        out = tmp_path / f"{output}_{chroma}"
        assert fuse_folder(model, tmp_path / "ir", tmp_path / "vi", out,
                           FuseSettings(output=output, chroma=chroma, show_progress=False)).ok
        saved[output, chroma] = cv2.imread(str(out / "p.png"))
    assert not np.array_equal(saved["stretch", "release"], saved["clamp", "release"])
    assert not np.array_equal(saved["stretch", "release"], saved["stretch", "visible"])


def test_row15_training_mode_attribution(converted):
    """segmenter_mode follow: in training, IG runs the live segmenter in training mode (dropout on, BN statistics
    updated); eval uses an eval-mode copy. At inference both are the same."""
    ir, vi = _images(h=16, w=16)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 8:] = 3
    outputs, stats_changed = {}, {}
    for mode in ("follow", "eval"):
        model = _model(converted, f"attribution.segmenter_mode={mode}").train()
        before = model.segmenter.cat_conv[1].running_mean.clone()
        torch.manual_seed(5)
        outputs[mode] = _fuse(model, ir, vi, labels)
        stats_changed[mode] = not torch.equal(before, model.segmenter.cat_conv[1].running_mean)
    assert stats_changed == {"follow": True, "eval": False}
    assert not torch.allclose(outputs["follow"].w_ir, outputs["eval"].w_ir, atol=1e-4)
    assert not torch.equal(outputs["follow"].fused, outputs["eval"].fused)


# ----------------------------------------------------------------- hand computations, release profile


def _toy_release_model(a: list[float], power: int = 1) -> UAAFusion:
    model = build_model(load_config(RELEASE_CONFIG), len(a))
    model.segmenter = PixelPower(a, power)  # segmenter_mode follow: attribution uses it as it is
    return model.train()


def test_hand_batch_pooled_region_means_rows_5_6():
    """(a) y^c = a_c·x: per step t = mean of y^c over the batch's region-c pixels, so G = a_c/N_c there and the
    pooled region sum Σ_{n,p∈c} G·I = a_c·Σ I / N_c; the release then takes the region mean (÷ N_c), sums the M
    steps, ReLU, ÷ M: a^c = a_c·Σ_{n,p∈c} I / N_c². w_ir = (a_ir + ε)/(a_ir + a_vi + 2ε) after the ReLU."""
    a = [0.5, -2.0, 1.5]
    model = _toy_release_model(a)
    ir, vi = _images(h=5, w=6, seed=2)
    labels = torch.randint(0, 3, (2, 5, 6), generator=torch.Generator().manual_seed(4))
    weights, _ = model.attribute(ir, vi, labels)
    for c in range(3):
        region = labels == c
        count = region.sum().item()
        a_ir = a[c] * ir[:, 0][region].sum().item() / count**2
        a_vi = a[c] * vi[:, 0][region].sum().item() / count**2
        assert weights["a_ir"][c].item() == pytest.approx(a_ir, rel=1e-5)
        assert weights["a_vi"][c].item() == pytest.approx(a_vi, rel=1e-5)
        relu_ir, relu_vi = max(a_ir, 0.0), max(a_vi, 0.0)
        w = (relu_ir + 1e-8) / (relu_ir + relu_vi + 2e-8)
        torch.testing.assert_close(weights["w_ir"][:, 0][region], torch.full((count,), w), rtol=1e-5, atol=1e-6)
    assert torch.all(weights["w_ir"][:, 0][labels == 1] == 0.5)  # a_1 < 0: both ReLU to 0, ε/2ε


def test_hand_running_mean_attention_row_3_4():
    """(b) Quadratic toy y^c = a_c·x², one-hot mask m from the labels: Score = mean(m ⊙ y) over (N, C, H, W), so
    g(I) = 2·a_label·I / (N·C·H·W). Stage k uses A = (1/(k−1)) Σ_{j<k} g(I^(j)) ⊙ (I^(j) − I^(j−1))."""
    a = [0.7, -1.3, 2.0]
    model = _toy_release_model(a, power=2)
    ir, vi = _images(n=2, h=6, w=5, seed=6)
    labels = torch.randint(0, 3, (2, 6, 5), generator=torch.Generator().manual_seed(7))
    out = _fuse(model, ir, vi, labels)
    a_label = torch.tensor(a)[labels].unsqueeze(1)
    path = [out.initial, *out.stages]

    def term(j: int) -> torch.Tensor:
        return 2 * a_label * path[j] / (2 * 3 * 6 * 5) * (path[j] - path[j - 1])

    assert torch.count_nonzero(out.attention[0]) == 0
    for k in range(1, 5):  # 0-based stage k uses the mean of the terms j = 1..k
        expected = sum(term(j) for j in range(1, k + 1)) / k
        torch.testing.assert_close(out.attention[k], expected, rtol=1e-5, atol=1e-9)


def test_hand_inference_mask_is_the_segmenter_output_on_initial_estimate_row_4():
    """At inference the mask is S(I^(0)) itself: linear toy, g = Σ_c S^c(I^(0))·a_c / (N·C·H·W)."""
    a = [0.4, 1.1, -0.6]
    model = _toy_release_model(a).eval()
    ir, vi = _images(n=1, h=4, w=6, seed=8)
    out = _fuse(model, ir, vi)
    coeff = torch.tensor(a).view(1, 3, 1, 1)
    mask = coeff * out.initial  # S(I^(0))
    g = (mask * coeff).sum(dim=1, keepdim=True) / (1 * 3 * 4 * 6)
    torch.testing.assert_close(out.attention[1], g * (out.stages[0] - out.initial), rtol=1e-5, atol=1e-9)
    assert torch.equal(out.regions, mask.argmax(dim=1))


def test_hand_first_convlstm_step_row_13(release, converted):
    """(c) First step of the converted release ConvLSTM: c = i ⊙ g, h = o ⊙ c from the conv_x gates only."""
    model = _model(converted)
    z = torch.randn(1, 32, 6, 7, generator=torch.Generator().manual_seed(9))
    sd = release["model_f"]
    i = torch.sigmoid(_rconv(z, sd, "blockflow.0.lstm.conv_xi"))
    o = torch.sigmoid(_rconv(z, sd, "blockflow.0.lstm.conv_xo"))
    g = torch.tanh(_rconv(z, sd, "blockflow.0.lstm.conv_xj"))
    with torch.no_grad():
        h, c = model.fusion.stages[0].lstm(z, None)
    torch.testing.assert_close(c, i * g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, o * i * g, rtol=1e-5, atol=1e-6)
