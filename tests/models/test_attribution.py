"""Attribution (Sec. III-B, Eq. 5-12): golden values on analytic toy segmenters, IG completeness, Captum agreement,
fast = naive, batch independence, Eq. 8's rules and the path attention of Eq. 9–12."""
from __future__ import annotations

import pytest
import torch

from models.attribution import (
    AttributionSettings,
    PathAttention,
    attribution_weights,
    class_schedule,
    ig_attribution_weights,
    ig_region_attributions_batch_pooled,
    ig_region_attributions_fast,
    ig_region_attributions_naive,
    input_gradient,
    region_one_hot,
    region_score_fn,
)
from models.scoring import prepare_scoring_model
from models.segmenter import build_segmenter
from tests.helpers.toy_models import PixelPolynomial, TinyConvSegmenter

IGNORE = 255


def _regions(n: int, h: int, w: int, classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    regions = torch.randint(0, classes, (n, h, w), generator=g)
    regions[:, 0, :] = IGNORE  # a row of ignored pixels
    return regions


def _closed_form(image, regions, a, classes, power, steps):
    """r[n, c] = a_c · factor · mean_{p∈c} I^power, factor = 1 (linear) or (M+1)/M (quadratic)."""
    factor = 1.0 if power == 1 else (steps + 1) / steps
    out = torch.zeros(image.shape[0], classes, dtype=torch.float64)
    for n in range(image.shape[0]):
        for c in range(classes):
            m = regions[n] == c
            if m.any():
                out[n, c] = a[c] * factor * (image[n, 0][m] ** power).mean()
    return out


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("method", ["naive", "fast"])
def test_ig_region_sums_match_closed_form(power, method):
    classes, steps = 4, 5
    a = [0.7, -1.3, 2.0, 0.4]
    model = PixelPolynomial(a, [0.1, 0.2, -0.3, 0.0], power)
    image = torch.rand(3, 1, 6, 7, dtype=torch.float64)
    regions = _regions(3, 6, 7, classes)
    regions[1][regions[1] == 2] = 1  # image 1 lacks class 2
    if method == "naive":
        got = ig_region_attributions_naive(model, image, regions, classes, steps, ignore_index=IGNORE)
    else:
        got = ig_region_attributions_fast(model, [image], regions, classes, steps, ignore_index=IGNORE)[0]
    expected = _closed_form(image, regions, a, classes, power, steps)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert got[1, 2] == 0


def test_ig_completeness_as_steps_grow():
    """Σ_{p∈c} S^c → Score^c(I) − Score^c(0) (Sundararajan et al.), with error shrinking like 1/M."""
    model = TinyConvSegmenter()
    image = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    regions = _regions(2, 8, 8, 4)
    full = torch.zeros_like(regions)  # completeness concerns all pixels: one region covering the image
    full_onehot = region_one_hot(full, 4, IGNORE, torch.float64)
    with torch.no_grad():
        y1, y0 = model(image), model(torch.zeros_like(image))
        target = ((y1 - y0) * full_onehot).sum(dim=(2, 3))[:, 0] / full_onehot[:, 0].sum(dim=(1, 2))
    errors = []
    for steps in (4, 16, 64):
        got = ig_region_attributions_fast(model, [image], full, 4, steps, ignore_index=IGNORE)[0][:, 0]
        errors.append((got - target).abs().max().item())
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.03 * target.abs().max().item()


def test_ig_agrees_with_captum():
    captum = pytest.importorskip("captum.attr")
    model = TinyConvSegmenter()
    image = torch.rand(2, 1, 8, 9, dtype=torch.float64)
    regions = _regions(2, 8, 9, 4, seed=3)
    onehot = region_one_hot(regions, 4, IGNORE, torch.float64)
    steps = 5
    ours = ig_region_attributions_naive(model, image, regions, 4, steps, ignore_index=IGNORE)
    for c in range(4):
        def class_score(x, c=c):
            reps = x.shape[0] // image.shape[0]
            mask = onehot[:, c].repeat(reps, 1, 1)
            return (model(x)[:, c] * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1)

        ig = captum.IntegratedGradients(class_score)
        attr = ig.attribute(image, baselines=torch.zeros_like(image), n_steps=steps, method="riemann_right")
        captum_sums = (attr[:, 0] * onehot[:, c]).sum(dim=(1, 2))
        # Captum keeps its step sizes in float32, hence a looser tolerance than float64 alone would need.
        torch.testing.assert_close(ours[:, c], captum_sums, rtol=1e-6, atol=1e-12)


@pytest.fixture(scope="module")
def deeplab64():
    torch.manual_seed(0)
    seg = build_segmenter(4, encoder="mobilenet_v2").double()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to fold
        seg.train()
        seg(torch.rand(4, 1, 32, 32, dtype=torch.float64))
    return seg.eval()


def test_fast_equals_naive_on_deeplab_float64(deeplab64):
    scoring = prepare_scoring_model(deeplab64, fold_batchnorm=False, fast=False)  # the segmenter's own layers
    ir, vi = torch.rand(2, 3, 1, 32, 32, dtype=torch.float64)
    regions = _regions(3, 32, 32, 4, seed=1)
    regions[2] = 1  # one image with a single class: fewer passes than the others
    fast = ig_region_attributions_fast(scoring, [ir, vi], regions, 4, 3, ignore_index=IGNORE)
    naive = torch.stack([ig_region_attributions_naive(scoring, im, regions, 4, 3, ignore_index=IGNORE)
                         for im in (ir, vi)])
    rel = (fast - naive).abs().max() / naive.abs().max()
    assert rel <= 1e-10
    folded = ig_region_attributions_fast(prepare_scoring_model(deeplab64, True), [ir, vi], regions, 4, 3,
                                         ignore_index=IGNORE)
    assert (folded - naive).abs().max() / naive.abs().max() <= 1e-10
    for chunk in (1, 4, 6):  # chunks that split steps, modalities and images unevenly
        chunked = ig_region_attributions_fast(scoring, [ir, vi], regions, 4, 3, ignore_index=IGNORE, chunk=chunk)
        assert (chunked - naive).abs().max() / naive.abs().max() <= 1e-10


def test_results_do_not_depend_on_batch_companions(deeplab64):
    scoring = prepare_scoring_model(deeplab64)
    images = torch.rand(4, 1, 32, 32, dtype=torch.float64)
    regions = _regions(4, 32, 32, 4, seed=2)
    together = ig_region_attributions_fast(scoring, [images], regions, 4, 2, ignore_index=IGNORE)[0]
    alone = ig_region_attributions_fast(scoring, [images[1:2]], regions[1:2], 4, 2, ignore_index=IGNORE)[0]
    other = ig_region_attributions_fast(scoring, [images[[3, 1]]], regions[[3, 1]], 4, 2, ignore_index=IGNORE)[0]
    torch.testing.assert_close(alone[0], together[1], rtol=1e-10, atol=1e-16)
    torch.testing.assert_close(other[1], together[1], rtol=1e-10, atol=1e-16)


def test_class_schedule_rounds():
    regions = torch.tensor([[[0, 1], [2, 2]], [[3, 3], [3, IGNORE]]])
    schedule = class_schedule(region_one_hot(regions, 4, IGNORE, torch.float32))
    assert schedule.tolist() == [[0, 3], [1, -1], [2, -1]]


def test_weights_sum_to_one_in_unit_range_and_relu_rule():
    regions = torch.tensor([[[0, 1, 2], [2, IGNORE, 1]]])
    a_ir = torch.tensor([[3.0, -2.0, 1.0]])  # class 1: infrared contributes negatively
    a_vi = torch.tensor([[1.0, 5.0, -1.0]])  # class 2: visible contributes negatively
    w_ir, w_vi = attribution_weights(a_ir, a_vi, regions, 3, eps=1e-8, ignore_index=IGNORE)
    torch.testing.assert_close(w_ir + w_vi, torch.ones_like(w_ir))
    assert bool(((w_ir >= 0) & (w_ir <= 1)).all())
    assert w_ir[0, 0, 0, 0] == pytest.approx(0.75)
    assert w_ir[0, 0, 0, 1] == pytest.approx(0.0, abs=1e-8)  # ReLU rule: all weight to visible
    assert w_ir[0, 0, 1, 0] == pytest.approx(1.0, abs=1e-8)  # ReLU rule: all weight to infrared
    assert w_ir[0, 0, 1, 1] == 0.5  # ignored pixel
    one_pixel = torch.zeros(1, 1, 1, dtype=torch.long)
    w_ir, _ = attribution_weights(torch.tensor([[0.0]]), torch.tensor([[-1.0]]), one_pixel, 1)
    assert w_ir.item() == pytest.approx(0.5)  # ε/2ε when neither source contributes


def test_batch_pooled_release_form_by_hand():
    """Row 5: with y^c = a_c x (linear), the pooled region sum is a_c · Σ_{n,p∈c} I / N_c(batch)."""
    a = [0.5, -2.0, 1.5]
    model = PixelPolynomial(a, [0.0, 0.0, 0.0])
    image = torch.rand(2, 1, 4, 5, dtype=torch.float64)
    regions = _regions(2, 4, 5, 3, seed=5)
    got = ig_region_attributions_batch_pooled(model, image, regions, 3, steps=4, ignore_index=IGNORE)
    for c in range(3):
        m = regions == c
        assert got[c].item() == pytest.approx(a[c] * image[:, 0][m].sum().item() / m.sum().item(), rel=1e-12)
    settings = AttributionSettings(region_pooling="batch", region_normalization="release_mean")
    weights = ig_attribution_weights(model, image, image * 0.5, regions, 3, settings)
    assert weights["a_ir"].shape == (3,)
    # pooled weights are the same for every image of the batch on a class
    c0 = regions == 0
    assert torch.unique(weights["w_ir"][:, 0][c0]).numel() == 1


def test_release_mean_normalisation_changes_weights_only_through_eps():
    model = TinyConvSegmenter()
    ir, vi = torch.rand(2, 2, 1, 8, 8, dtype=torch.float64)
    regions = _regions(2, 8, 8, 4)
    paper = ig_attribution_weights(model, ir, vi, regions, 4, AttributionSettings(ig_method="naive"))
    release = ig_attribution_weights(model, ir, vi, regions, 4,
                                     AttributionSettings(ig_method="naive", region_normalization="release_mean"))
    exact = ig_attribution_weights(model, ir, vi, regions, 4,
                                   AttributionSettings(ig_method="naive", region_normalization="release_mean", eps=0.0))
    exact_paper = ig_attribution_weights(model, ir, vi, regions, 4, AttributionSettings(ig_method="naive", eps=0.0))
    valid = torch.isfinite(exact["w_ir"]) & torch.isfinite(exact_paper["w_ir"])
    torch.testing.assert_close(exact["w_ir"][valid], exact_paper["w_ir"][valid], rtol=1e-12, atol=1e-12)
    assert not torch.equal(paper["w_ir"], release["w_ir"]) or torch.equal(paper["a_ir"], release["a_ir"])


# ---------------------------------------------------------------------------------- path attention


def _linear_score(weight: torch.Tensor):
    """Score(I)_n = mean_p(weight ⊙ I_n): its path attribution is exactly weight/N ⊙ (I^(k-1) − I^(0))."""
    return lambda x: (weight * x).flatten(1).sum(dim=1) / weight[0].numel()


def _quadratic_score(weight: torch.Tensor):
    return lambda x: (weight * x**2).flatten(1).sum(dim=1) / weight[0].numel()


def test_path_attention_linear_golden_and_stage_one_zero():
    weight = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    path = [torch.rand(2, 1, 5, 6, dtype=torch.float64) for _ in range(4)]
    att = PathAttention(_linear_score(weight), "ig", substeps=1)
    att.start(path[0])
    maps = []
    for k in range(1, 4):
        maps.append(att.map_for_next_stage())
        att.observe(path[k])
    assert torch.count_nonzero(maps[0]) == 0
    for k in (2, 3):
        torch.testing.assert_close(maps[k - 1], weight / 30 * (path[k - 1] - path[0]))
    assert att.gradient_evaluations == 2  # one per stage after the first; the last output needs none


def test_path_attention_quadratic_golden_and_telescoping():
    weight = torch.rand(1, 1, 4, 4, dtype=torch.float64) + 0.5
    path = [torch.rand(1, 1, 4, 4, dtype=torch.float64) for _ in range(4)]
    score = _quadratic_score(weight)
    att = PathAttention(score, "ig", substeps=1)
    att.start(path[0])
    for p in path[1:]:
        att.observe(p)
    got = att.map_for_next_stage()
    expected = sum(2 * weight / 16 * path[j] * (path[j] - path[j - 1]) for j in range(1, 4))  # Eq. 12
    torch.testing.assert_close(got, expected)
    target = (score(path[3]) - score(path[0])).item()
    errors = []
    for s in (1, 4, 16):
        att = PathAttention(score, "ig", substeps=s)
        att.start(path[0])
        for p in path[1:]:
            att.observe(p)
        errors.append(abs(att.map_for_next_stage().sum().item() - target))
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < errors[0] / 10  # right-Riemann error falls like 1/s


def test_path_attention_mean_reduction_and_grad_variant():
    weight = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    path = [torch.rand(1, 1, 3, 3, dtype=torch.float64) for _ in range(4)]
    score = _quadratic_score(weight)
    summed, mean, grad = (PathAttention(score, "ig"), PathAttention(score, "ig", reduction="mean"),
                          PathAttention(score, "grad"))
    for att in (summed, mean, grad):
        att.start(path[0])
        for p in path[1:]:
            att.observe(p)
    torch.testing.assert_close(mean.map_for_next_stage(), summed.map_for_next_stage() / 3)
    torch.testing.assert_close(grad.map_for_next_stage(), 2 * weight / 9 * path[3])


def test_region_score_is_eq9():
    model = PixelPolynomial([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    regions = torch.tensor([[[0, 1], [2, IGNORE]]])
    x = torch.tensor([[[[0.5, 0.25], [1.0, 0.8]]]], dtype=torch.float64)
    score = region_score_fn(model, regions, 3, ignore_index=IGNORE)(x)
    assert score.item() == pytest.approx((0.5 * 1 + 0.25 * 2 + 1.0 * 3) / 4)
    grad = input_gradient(region_score_fn(model, regions, 3, ignore_index=IGNORE), x)
    torch.testing.assert_close(grad, torch.tensor([[[[0.25, 0.5], [0.75, 0.0]]]], dtype=torch.float64))


def test_uniform_weights_ablation_skips_ig_and_fuses_with_one_half(monkeypatch):
    """``attribution.weights: uniform``: w_ir = w_vi = 0.5 everywhere, no IG pass, and the fused image is what the
    fusion network gives with those weights; regions and attention are computed as with IG weights."""
    from engine.config import load_config
    from models import uaafusion
    from models.uaafusion import build_model
    from tests.helpers.factories import TINY_MODEL

    torch.manual_seed(0)
    model = build_model(load_config(None, [*TINY_MODEL, "attribution.weights=uniform"]), num_classes=3).eval()
    ir, vi = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)

    def no_ig(*args, **kwargs):
        raise AssertionError("IG must not run with attribution.weights: uniform")

    monkeypatch.setattr(uaafusion, "ig_attribution_weights", no_ig)
    out = model(ir, vi)
    assert torch.equal(out.w_ir, torch.full_like(ir, 0.5)) and torch.equal(out.w_vi, torch.full_like(ir, 0.5))
    regions, _ = model.predict_regions(model.fusion.initial_estimate(ir, vi))
    assert torch.equal(out.regions, regions)
    _, attention = model.attribute(ir, vi)
    reference = model.fusion(ir, vi, torch.full_like(ir, 0.5), torch.full_like(ir, 0.5), attention)
    torch.testing.assert_close(out.fused, reference.fused, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="attribution.weights must be one of"):
        AttributionSettings(weights="fixed")


def test_inference_regions_from_several_views_are_the_argmax_of_their_mean_softmax():
    """``attribution.region_scales`` / ``region_flip`` (an extension): the regions are the argmax of the mean softmax
    of the segmenter's views of I^(0), the soft mask their mean score; one view at scale 1 is the paper's pass."""
    from engine.config import load_config
    from models.segmenter import view_scores
    from models.uaafusion import build_model
    from tests.helpers.factories import TINY_MODEL

    torch.manual_seed(0)
    plain = build_model(load_config(None, TINY_MODEL), num_classes=3).double().eval()
    viewed = build_model(load_config(None, [*TINY_MODEL, "attribution.region_scales=[1, 1.5]",
                                            "attribution.region_flip=true", "attribution.weights=uniform"]),
                         num_classes=3).double().eval()  # uniform: no IG passes, the regions as with IG
    viewed.load_state_dict(plain.state_dict())
    ir, vi = torch.rand(1, 1, 32, 32, dtype=torch.float64), torch.rand(1, 1, 32, 32, dtype=torch.float64)
    image = plain.fusion.initial_estimate(ir, vi)
    regions, scores = viewed.predict_regions(image)
    views = view_scores(plain.segmenter, image, (1.0, 1.5), flip=True)
    assert len(views) == 4
    assert torch.equal(regions, torch.stack([v.softmax(dim=1) for v in views]).mean(dim=0).argmax(dim=1))
    torch.testing.assert_close(scores, torch.stack(views).mean(dim=0), rtol=0, atol=1e-9)
    assert torch.equal(viewed.attribute(ir, vi)[0]["regions"], regions)  # what the fusion's weights use

    twice = build_model(load_config(None, [*TINY_MODEL, "attribution.region_scales=[1, 1]"]), num_classes=3)
    twice = twice.double().eval()
    twice.load_state_dict(plain.state_dict())
    assert torch.equal(twice.predict_regions(image)[0], plain.predict_regions(image)[0])  # equal views: one pass
    assert plain.attribution.single_region_view and not twice.attribution.single_region_view
    for bad in ([], [1.0, 0.0], "1.5", [True]):
        with pytest.raises(ValueError, match="region_scales"):
            AttributionSettings(region_scales=bad)
