"""The joint training step as the paper describes it (docs/DECISIONS.md D3), the release's row-15 details, the
attention-normalisation extension, and one ignore index for labels, regions and L_seg."""
from __future__ import annotations

import pytest
import torch

from engine.config import ConfigError, load_config
from engine.trainer import JointModel, Trainer
from losses import LossSettings, UAAFusionLoss
from models.attribution import PathAttention, normalize_attention, region_mean_score, riemann_right
from models.segmenter import SegmenterWeightsError
from models.uaafusion import build_model
from tests.helpers.factories import tiny_train_config
from tests.helpers.scripts import REPO

TINY = {"fusion": {"stages": 2, "channels": 8}, "segmenter": {"encoder_weights": None},
        "attribution": {"ig_steps": 1}}


def _batch(n=2, size=32, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ir, vi = torch.rand(n, 1, size, size, generator=g), torch.rand(n, 1, size, size, generator=g)
    return ir, vi, torch.randint(0, classes, (n, size, size), generator=g)


def test_lseg_reaches_the_fusion_network_through_the_fused_image():
    """The fused image enters the segmenter undetached: L_seg alone gives the fusion network a gradient."""
    torch.manual_seed(0)
    model = build_model(TINY, num_classes=3).train()
    ir, vi, labels = _batch()
    out, seg = JointModel(model, ["fused"])(ir, vi, labels)
    assert out.fused.requires_grad
    loss = UAAFusionLoss(LossSettings(use_intensity=False, use_gradient=False, seg_sources=["fused"]))
    loss(out.fused, ir, vi, out.w_ir, out.w_vi, seg, labels)["total"].backward()
    fusion_grads = [p.grad for p in model.fusion.parameters() if p.grad is not None]
    assert fusion_grads and any(g.abs().sum() > 0 for g in fusion_grads)


def test_segmenter_trains_in_train_mode_and_in_the_paper_optimiser(synthetic_root, tmp_path):
    cfg = tiny_train_config(synthetic_root, "train.epochs=1", "train.max_steps_per_epoch=1", "data.val_pairs=1")
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    calls = []
    segmenter = trainer.model.segmenter
    hook = segmenter.register_forward_pre_hook(lambda m, args: calls.append((m is segmenter, m.training)))
    trainer.train_step(next(iter(trainer._loader(0))))
    hook.remove()
    own = [training for is_module, training in calls if is_module]
    assert len(own) == 3 and all(own)  # L_seg's three passes, in training mode
    assert all(not training for is_module, training in calls if not is_module)  # IG: the eval-mode scoring copy
    (optimizer,) = trainer.optimizers.values()  # paper: one Adam over both networks
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in trainer.model.segmenter.parameters())
    assert all(id(p) in in_optimizer for p in trainer.model.fusion.parameters())
    trainer.lock.release()


def test_paper_learning_rate_schedule():
    """Adam at 1e-4, halved every 10 epochs: 5e-5 after 10 epochs and 2.5e-5 after 20 (Sec. IV-A)."""
    cfg = load_config(REPO / "configs" / "fmb_paper.yaml")
    t = cfg["train"]
    assert (t["lr"], t["lr_step_epochs"], t["lr_gamma"], t["epochs"], t["batch_size"]) == (1e-4, 10, 0.5, 50, 8)
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam(params, lr=t["lr"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, t["lr_step_epochs"], t["lr_gamma"])
    rates = []
    for _ in range(25):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[9] == pytest.approx(1e-4) and rates[10] == pytest.approx(5e-5) and rates[20] == pytest.approx(2.5e-5)


def test_inference_regions_are_the_eval_segmenters_argmax_on_the_initial_estimate():
    torch.manual_seed(0)
    cfg = {**TINY, "attribution": {"ig_steps": 1, "fold_batchnorm": False}}  # same arithmetic as the module
    model = build_model(cfg, num_classes=3).train()  # even when the module is in training mode
    ir, vi, labels = _batch()
    weights, _ = model.attribute(ir, vi, None)
    with torch.no_grad():
        expected = model.segmenter.eval()((ir + vi) / 2).argmax(dim=1)
    model.segmenter.train()
    assert torch.equal(weights["regions"], expected)
    trained, _ = model.attribute(ir, vi, labels)
    assert torch.equal(trained["regions"], labels)  # training: the ground-truth labels


def test_one_ignore_index_for_labels_regions_and_lseg():
    cfg = load_config(None, ["data.ignore_index=7", "data.num_classes=4"])
    assert "ignore_index" not in cfg["attribution"] and "ignore_index" not in cfg["loss"]
    model = build_model({**cfg, "fusion": {"stages": 1, "channels": 4}, "segmenter": {"encoder_weights": None}}, 4)
    assert model.attribution.ignore_index == 7
    with pytest.raises(ConfigError, match="is a class index"):
        load_config(None, ["data.ignore_index=2", "data.num_classes=4"])
    # configs of earlier versions carried the key three times: they still load when the copies agree
    from engine.config import apply_overrides

    old = load_config(None)
    old["attribution"]["ignore_index"] = 255
    old["loss"]["ignore_index"] = 255
    assert apply_overrides(old)["data"]["ignore_index"] == 255
    old["loss"]["ignore_index"] = 0
    with pytest.raises(ConfigError, match="must agree"):
        apply_overrides(old)


def test_riemann_rule_and_region_mean_are_named_once():
    torch.testing.assert_close(riemann_right(4), torch.tensor([0.25, 0.5, 0.75, 1.0]))
    scores = torch.arange(2 * 2 * 2 * 2, dtype=torch.float64).view(2, 2, 2, 2)
    onehot = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    onehot[0, 0, 0, :] = 1  # image 0, class 0: pixels 0, 1 (scores 0, 1)
    onehot[1, 0, :, 0] = 1  # image 1, class 0: pixels 0, 2 (scores 8, 10)
    per_image = region_mean_score(scores, onehot)
    torch.testing.assert_close(per_image[:, 0], torch.tensor([0.5, 9.0], dtype=torch.float64))
    assert per_image[:, 1].abs().sum() == 0  # empty regions score 0
    torch.testing.assert_close(region_mean_score(scores, onehot, pooled=True)[0],
                               torch.tensor(19.0 / 4, dtype=torch.float64))


def test_release_evaluates_and_discards_the_gradient_at_the_initial_estimate():
    calls = []

    def score_fn(x):
        calls.append(x.detach().clone())
        return (x ** 2).sum(dim=(1, 2, 3))

    start = torch.full((1, 1, 2, 2), 0.5)
    paper = PathAttention(score_fn)
    paper.start(start)
    assert paper.map_for_next_stage().abs().sum() == 0 and not calls
    release = PathAttention(score_fn, initial_gradient=True)
    release.start(start)
    assert len(calls) == 1 and torch.equal(calls[0], start)
    assert release.map_for_next_stage().abs().sum() == 0  # A^(1) = 0 either way
    assert release.gradient_evaluations == 1


def test_release_initial_gradient_moves_batchnorm_in_training_mode():
    torch.manual_seed(0)
    cfg = {**TINY, "attribution": {"ig_steps": 1, "segmenter_mode": "follow"}}
    runs = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_model({**cfg, "attribution": {**cfg["attribution"], "attention_initial_gradient": flag}}, 3)
        model.train()
        ir, vi, labels = _batch()
        model(ir, vi, labels)
        runs[flag] = {k: v.clone() for k, v in model.segmenter.state_dict().items() if "running_mean" in k}
    assert any(not torch.equal(runs[False][k], runs[True][k]) for k in runs[False])


@pytest.mark.parametrize("mode", ["std", "max"])
def test_attention_normalisation_extension(mode):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1, 5, 4, generator=g, dtype=torch.float64) * torch.tensor([1e-7, 1.0, 30.0]).view(3, 1, 1, 1)
    out = normalize_attention(a, mode)
    for i in range(3):
        if mode == "std":
            assert out[i].std(unbiased=False).item() == pytest.approx(1.0)
        else:
            assert out[i].abs().max().item() == pytest.approx(1.0)
        assert torch.allclose(out[i] / out[i].abs().max(), a[i] / a[i].abs().max())  # shape of the map kept
    assert torch.equal(normalize_attention(torch.zeros(2, 1, 3, 3), mode), torch.zeros(2, 1, 3, 3))
    assert torch.equal(normalize_attention(a, "none"), a)


def test_config_reference_is_current_and_complete():
    """docs/CONFIG.md lists every key (regenerate with: python -m engine.config)."""
    from engine.config import DEFAULTS, config_markdown, describe_keys, flatten

    assert (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8") == config_markdown()
    described = {key for key, _, text in describe_keys() if text}
    assert described == set(flatten(DEFAULTS))


@pytest.mark.parametrize("scope", ["all", "optimizer"])
def test_gradient_clipping_scope(synthetic_root, tmp_path, monkeypatch, scope):
    """``train.grad_clip_scope``: one norm over every parameter (``all``), or each optimizer's parameters clipped
    on their own norm (``optimizer``), so that the fusion network's step does not shrink with the segmenter's
    gradient."""
    cfg = tiny_train_config(synthetic_root, "train.epochs=1", "train.max_steps_per_epoch=1", "data.val_pairs=1",
                            "train.separate_segmenter_optimizer=true", "train.grad_clip=1e-3",
                            f"train.grad_clip_scope={scope}")
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    clipped, real_clip = [], torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm):
        params = list(params)
        raw = float(real_clip(params, max_norm))  # returns the norm before clipping
        after = float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])))
        clipped.append(({id(p) for p in params}, raw, after))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    trainer.train_step(next(iter(trainer._loader(0))))
    trainer.lock.release()
    fusion = {id(p) for p in trainer.model.fusion.parameters()}
    segmenter = {id(p) for p in trainer.model.segmenter.parameters()}
    if scope == "all":
        ((ids, raw, after),) = clipped
        assert ids == fusion | segmenter and raw > 1e-3 and after == pytest.approx(1e-3, rel=1e-4)
    else:
        assert [ids for ids, _, _ in clipped] == [fusion, segmenter]  # the optimizers' order: fusion, segmenter
        assert all(raw > 1e-3 and after == pytest.approx(1e-3, rel=1e-4) for _, raw, after in clipped)


def test_unknown_gradient_clipping_scope_fails_before_training(synthetic_root, tmp_path):
    cfg = tiny_train_config(synthetic_root, "train.grad_clip_scope=layer")
    with pytest.raises(ValueError, match="grad_clip_scope must be 'all' or 'optimizer'"):
        Trainer(cfg, tmp_path, show_progress=False)


def test_a_missing_segmenter_checkpoint_says_how_to_make_it(synthetic_root, tmp_path):
    from engine.checkpoint import CheckpointError

    cfg = tiny_train_config(synthetic_root, f"train.segmenter_checkpoint={tmp_path / 'nowhere.pt'}")
    with pytest.raises(CheckpointError, match="does not exist: write it first with python -m scripts.pretrain_segm"):
        Trainer(cfg, tmp_path / "run", show_progress=False)


def test_init_checkpoint_starts_both_networks_from_a_model_file(synthetic_root, tmp_path):
    """train.init_checkpoint: every weight comes from the file (stage 1 skipped), the optimisers and the step count
    start afresh; train.segmenter_checkpoint, when also given, then replaces the segmenter."""
    from engine.checkpoint import CheckpointError, save_checkpoint

    cfg = tiny_train_config(synthetic_root, "train.segmenter_pretrain_epochs=1")
    classes = Trainer(cfg, tmp_path / "probe", show_progress=False)
    classes.lock.release()
    torch.manual_seed(123)  # weights no fresh trainer draws
    source = build_model(cfg, classes.num_classes)
    model_file = tmp_path / "model.pt"
    save_checkpoint(model_file, {"model": source.state_dict(), "config": cfg, "num_classes": classes.num_classes})
    torch.manual_seed(7)
    other_segmenter = build_model(cfg, classes.num_classes).segmenter
    segmenter_file = tmp_path / "segmenter.pt"
    save_checkpoint(segmenter_file, {"segmenter": other_segmenter.state_dict()})

    trainer = Trainer({**cfg, "train": {**cfg["train"], "init_checkpoint": str(model_file)}}, tmp_path / "a",
                      show_progress=False)
    trainer.lock.release()
    assert trainer.phase == "joint" and trainer.global_step == 0
    assert all(not opt.state for opt in trainer.optimizers.values())
    for key, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], value), key

    both = Trainer({**cfg, "train": {**cfg["train"], "init_checkpoint": str(model_file),
                                     "segmenter_checkpoint": str(segmenter_file)}}, tmp_path / "b", show_progress=False)
    both.lock.release()
    for key, value in source.fusion.state_dict().items():
        assert torch.equal(both.model.fusion.state_dict()[key], value), key
    for key, value in other_segmenter.state_dict().items():
        assert torch.equal(both.model.segmenter.state_dict()[key], value), key

    # the segmenter file replaces the encoder's start, so segmenter.encoder_weights is not read (here: no such file)
    unread = Trainer({**cfg, "segmenter": {**cfg["segmenter"], "encoder_weights": str(tmp_path / "absent.pth")},
                      "train": {**cfg["train"], "segmenter_checkpoint": str(segmenter_file)}}, tmp_path / "g",
                     show_progress=False)
    unread.lock.release()
    for key, value in other_segmenter.state_dict().items():
        assert torch.equal(unread.model.segmenter.state_dict()[key], value), key
    with pytest.raises(SegmenterWeightsError, match="file not found"):
        build_model({**cfg, "segmenter": {**cfg["segmenter"], "encoder_weights": str(tmp_path / "absent.pth")}},
                    classes.num_classes)

    wider = tiny_train_config(synthetic_root, "fusion.channels=16")
    save_checkpoint(tmp_path / "wider.pt", {"model": build_model(wider, classes.num_classes).state_dict()})
    with pytest.raises(CheckpointError, match=r"init_checkpoint .*wider\.pt does not fit .*shape mismatch"):
        Trainer({**cfg, "train": {**cfg["train"], "init_checkpoint": str(tmp_path / "wider.pt")}}, tmp_path / "c",
                show_progress=False)
    with pytest.raises(CheckpointError, match=r"wider\.pt \(its fusion network\) does not fit"):
        Trainer({**cfg, "train": {**cfg["train"], "init_checkpoint": str(tmp_path / "wider.pt"),
                                  "segmenter_checkpoint": str(segmenter_file)}}, tmp_path / "c2", show_progress=False)

    # a model file whose segmenter has another encoder: usable only when train.segmenter_checkpoint replaces it
    torch.manual_seed(5)
    other_encoder = build_model(tiny_train_config(synthetic_root, "segmenter.encoder=resnet18"), classes.num_classes)
    save_checkpoint(tmp_path / "resnet.pt", {"model": other_encoder.state_dict()})
    with pytest.raises(CheckpointError, match=r"resnet\.pt does not fit"):
        Trainer({**cfg, "train": {**cfg["train"], "init_checkpoint": str(tmp_path / "resnet.pt")}}, tmp_path / "e",
                show_progress=False)
    mixed = Trainer({**cfg, "train": {**cfg["train"], "init_checkpoint": str(tmp_path / "resnet.pt"),
                                      "segmenter_checkpoint": str(segmenter_file)}}, tmp_path / "f",
                    show_progress=False)
    mixed.lock.release()
    for key, value in other_encoder.fusion.state_dict().items():
        assert torch.equal(mixed.model.fusion.state_dict()[key], value), key
    for key, value in other_segmenter.state_dict().items():
        assert torch.equal(mixed.model.segmenter.state_dict()[key], value), key

    save_checkpoint(tmp_path / "segmenter_only.pt", {"segmenter": other_segmenter.state_dict()})
    with pytest.raises(CheckpointError, match="holds no model weights"):
        Trainer({**cfg, "train": {**cfg["train"], "init_checkpoint": str(tmp_path / "segmenter_only.pt")}},
                tmp_path / "d", show_progress=False)


@pytest.mark.parametrize("mode", ["train", "frozen"])
def test_segmenter_batchnorm_statistics_move_only_when_not_frozen(synthetic_root, tmp_path, mode):
    """``train.segmenter_batchnorm: frozen`` (D15): the joint stage keeps the segmenter's running statistics, and its
    weights still learn; ``train`` (default) lets the statistics follow the training batches."""
    cfg = tiny_train_config(synthetic_root, "train.epochs=1", "train.max_steps_per_epoch=2", "data.val_pairs=1",
                            f"train.segmenter_batchnorm={mode}")
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    segmenter = trainer.model.segmenter
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    trainer.train_one_epoch(0)
    trainer.lock.release()
    after = segmenter.state_dict()
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k, _ in segmenter.named_parameters()]
    assert statistics and weights
    moved = [k for k in statistics if not torch.equal(before[k], after[k])]
    assert (moved == []) if mode == "frozen" else (len(moved) == len(statistics))
    assert any(not torch.equal(before[k], after[k]) for k in weights)  # the weights learn in both modes
    layers = [m for m in segmenter.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(m.training == (mode == "train") for m in layers) and segmenter.training


def test_unknown_segmenter_batchnorm_mode_fails_before_training(synthetic_root, tmp_path):
    cfg = tiny_train_config(synthetic_root, "train.segmenter_batchnorm=fixed")
    with pytest.raises(ValueError, match="segmenter_batchnorm must be 'train' or 'frozen'"):
        Trainer(cfg, tmp_path, show_progress=False)
