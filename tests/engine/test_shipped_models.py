"""The shipped models load as their model cards say, and the two with an ImageNet-initialised segmenter see a person
and a car in a bundled real scene (what makes their attribution weights vary; checkpoints/README.md)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data.io import load_fusion_pair
from engine.checkpoint import load_model_from_checkpoint

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "assets" / "samples"


@pytest.mark.parametrize("name, encoder", [("uaafusion_mfnet.pt", "tu-tf_efficientnet_lite0"),
                                           ("uaafusion_mfnet_imagenet.pt", "tu-tf_efficientnet_lite0"),
                                           ("uaafusion_mfnet_mobilenetv2.pt", "mobilenet_v2")])
def test_shipped_model_loads_with_its_config(name, encoder):
    model, payload = load_model_from_checkpoint(REPO / "checkpoints" / name)
    assert payload["config"]["segmenter"]["encoder"] == encoder
    assert model.num_classes == 9 and model.fusion.num_stages == 5


@pytest.mark.parametrize("name", ["uaafusion_mfnet.pt", "uaafusion_mfnet_imagenet.pt"])
def test_the_imagenet_models_segmenters_find_people_and_cars_in_a_night_scene(name):
    torch.set_num_threads(1)
    model, _ = load_model_from_checkpoint(REPO / "checkpoints" / name)
    pair = load_fusion_pair(SAMPLES / "ir" / "00714N.png", SAMPLES / "vi" / "00714N.png")
    ir, vi = (torch.from_numpy(pair[k])[None, None] for k in ("ir", "vi_y"))
    regions, _ = model.predict_regions(model.fusion.initial_estimate(ir, vi))
    share = {c: float((regions == c).float().mean()) for c in (1, 2)}  # car, person
    assert share[1] > 1e-3 and share[2] > 1e-3, share  # the MobileNetV2 model finds neither (RESULTS)


def test_the_default_models_segmenter_carries_the_logit_adjustment_its_record_names():
    """checkpoints/uaafusion_mfnet.pt (since session 21): the session-14 fusion network under session 18's
    pre-trained segmenter (``scripts.export_model --segmenter``), regions from three scales and their mirror images,
    calibrated for those views by scripts.calibrate_segmenter: its record holds offsets −τ · ln w_c for the τ that
    scored best on the training scenes (docs/DECISIONS.md D17, D21)."""
    import numpy as np

    from scripts.calibrate_segmenter import best_tau

    payload = torch.load(REPO / "checkpoints" / "uaafusion_mfnet.pt", map_location="cpu", weights_only=True)
    record = payload["calibration"]
    assert record["class_weights"] == "log" and record["tau"] == 0.5 == best_tau(record["curve"])
    np.testing.assert_allclose(record["offsets"], -record["tau"] * np.log(record["weights"]), atol=1e-5)
    assert record["eval_curve"]["by_tau"][0.5]["miou_present"] == pytest.approx(0.4028, abs=1e-4)
    views = payload["config"]["attribution"]
    assert record["region_views"] == {"scales": [1, 1.5, 2], "flip": True}
    assert (views["region_scales"], views["region_flip"]) == ([1, 1.5, 2], True)
    assert payload["exported_from"]["segmenter"]["file"] == "segmenter.pt"
    assert "earlier" not in record  # the replaced segmenter's calibration was dropped, not added to
