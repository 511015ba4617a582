"""torch.compile of the fusion network's stages (engine/compile.py): the compiled path computes what the eager one
does (forward and gradients, float64), and a machine without a usable compiler still fuses and trains."""
from __future__ import annotations

import functools
import logging

import pytest
import torch

import engine.compile as compile_module
from engine.compile import compile_fusion, compiler_problem, is_compiled, uncompile_fusion
from engine.trainer import Trainer
from models.fusion_net import UAAFusionNet
from tests.helpers.factories import tiny_train_config


class _FixedAttention:
    """A StageAttention that hands every stage the same map."""

    def __init__(self, attention: torch.Tensor) -> None:
        self.attention = attention

    def start(self, initial):
        pass

    def map_for_next_stage(self):
        return self.attention

    def observe(self, output):
        pass


def _fuse_and_grads(net: UAAFusionNet, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    ir, vi, w, att = (torch.rand(2, 1, 12, 10, generator=g, dtype=dtype) for _ in range(4))
    out = net(ir, vi, w, 1 - w, _FixedAttention(att - 0.5))
    loss = (out.fused - 0.3).square().mean() + sum(s.mean() for s in out.stages)
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True, materialize_grads=True)
    return out.fused.detach(), grads


def _tiny_net(stages: int = 2) -> UAAFusionNet:
    torch.manual_seed(0)
    return UAAFusionNet(stages=stages, channels=4).double()


@pytest.mark.parametrize("backend,stages", [("inductor", 1), ("aot_eager", 2)])
def test_compiled_stages_equal_the_eager_ones_in_float64(backend, stages):
    """inductor's generated kernels on one stage (its compile takes most of a minute on 2 cores); the trace of
    every kind of stage (first, middle with the ConvLSTM state, last) through aot_eager."""
    if backend == "inductor" and (problem := compiler_problem(torch.device("cpu"))):
        pytest.skip(f"inductor cannot compile here: {problem}")
    torch._dynamo.reset()
    net = _tiny_net(stages)
    eager_fused, eager_grads = _fuse_and_grads(net)
    names = set(net.state_dict())
    assert compile_fusion(net, torch.device("cpu"), backend=backend, dynamic=False)
    assert is_compiled(net) and set(net.state_dict()) == names  # checkpoints are the same with and without
    fused, grads = _fuse_and_grads(net)
    torch.testing.assert_close(fused, eager_fused, rtol=0, atol=1e-12)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not any(stage.forward.failed for stage in net.stages)  # really compiled, no silent fallback
    uncompile_fusion(net)
    assert not is_compiled(net)


def test_without_a_compiler_the_model_runs_eagerly_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    net = _tiny_net()
    with caplog.at_level(logging.WARNING, logger="uaafusion"):
        assert not compile_fusion(net, torch.device("cpu"))
    assert "no C++ compiler" in caplog.text and "running eagerly" in caplog.text
    assert not is_compiled(net)
    _fuse_and_grads(net)


def test_a_compile_error_at_the_first_call_falls_back_to_eager(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("gcc exploded"), None)
        return call

    net = _tiny_net()
    eager_fused, _ = _fuse_and_grads(net)
    monkeypatch.setattr(compile_module, "compiler_problem", lambda device, backend="inductor": None)
    monkeypatch.setattr(compile_module.torch, "compile", broken_compile)
    assert compile_fusion(net, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="uaafusion"):
        fused, _ = _fuse_and_grads(net)
    assert "torch.compile failed for UnfoldingStage" in caplog.text
    torch.testing.assert_close(fused, eager_fused, rtol=0, atol=0)


def test_an_unknown_backend_is_reported():
    assert "unknown compile backend" in compiler_problem(torch.device("cpu"), "turbo")


def _train_losses(cfg, run_dir) -> tuple[list[float], bool]:
    """Two training steps; the losses and whether every stage ran compiled."""
    trainer = Trainer(cfg, run_dir, show_progress=False)
    losses = []
    try:
        trainer.model.train()
        for batch in trainer._loader(0):
            terms, _ = trainer.train_step(batch)
            losses.append(terms["total"])
            if len(losses) == 2:
                break
    finally:
        trainer.lock.release()
    fusion = trainer.model.fusion
    return losses, is_compiled(fusion) and not any(stage.forward.failed for stage in fusion.stages)


def test_train_compile_trains_without_a_compiler_and_takes_the_same_steps_with_one(synthetic_root, tmp_path,
                                                                                   monkeypatch, caplog):
    torch._dynamo.reset()
    cfg = tiny_train_config(synthetic_root, "train.epochs=1", "data.val_pairs=0", "fusion.stages=2",
                            "train.compile=true")
    with monkeypatch.context() as patch:  # no compiler: one warning, then the eager path (the reference below)
        patch.setattr(compile_module.shutil, "which", lambda name: None)
        with caplog.at_level(logging.WARNING, logger="uaafusion"):
            eager, was_compiled = _train_losses(cfg, tmp_path / "no_compiler")
    assert not was_compiled
    assert "no C++ compiler" in caplog.text
    # the trainer's compile path, traced by aot_eager (seconds; inductor's kernels are compared above)
    monkeypatch.setattr("engine.trainer.compile_fusion", functools.partial(compile_fusion, backend="aot_eager"))
    compiled, was_compiled = _train_losses(cfg, tmp_path / "compiled")
    assert was_compiled
    # the first step to float32 round-off; after one Adam step, parameters whose gradient is near 0 move by up to
    # 2·lr on a round-off sign flip (in either path alike), so the second loss agrees less closely
    assert compiled[0] == pytest.approx(eager[0], rel=1e-6)
    assert compiled[1] == pytest.approx(eager[1], rel=1e-2)


def test_compiled_stages_fuse_under_no_grad_as_eager():
    """Fusing (no_grad, eval) traces the padding without its autograd.Function; compiled equals eager."""
    torch._dynamo.reset()
    net = _tiny_net(stages=3).eval()
    g = torch.Generator().manual_seed(5)
    ir, vi, w, att = (torch.rand(1, 1, 14, 12, generator=g, dtype=torch.float64) for _ in range(4))
    with torch.no_grad():
        eager = net(ir, vi, w, 1 - w, _FixedAttention(att)).fused
        assert compile_fusion(net, torch.device("cpu"), backend="aot_eager")
        compiled = net(ir, vi, w, 1 - w, _FixedAttention(att)).fused
    assert not any(stage.forward.failed for stage in net.stages)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-12)


def test_test_py_compile_compiles_the_stages_and_fuses(tmp_path, monkeypatch):
    """The option's wiring (compiled fusing equals eager: the no_grad test above)."""
    from tests.helpers.factories import pair_folders, write_tiny_checkpoint
    from tests.helpers.scripts import test_cli

    torch._dynamo.reset()
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    ir, vi = pair_folders(tmp_path, ["a", "b"])
    compiled = []

    def compile_traced(fusion, device):  # dynamo's trace without code generation: seconds
        compiled.append(compile_fusion(fusion, device, backend="eager"))
        compiled.append(fusion)

    monkeypatch.setattr(test_cli, "compile_fusion", compile_traced)
    out = tmp_path / "out"
    assert test_cli.main(["--checkpoint", str(checkpoint), "--ir", str(ir), "--vi", str(vi), "--quiet",
                          "--out", str(out), "--compile"]) == 0
    assert compiled[0] is True and not any(stage.forward.failed for stage in compiled[1].stages)
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
