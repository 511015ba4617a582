"""Time fusing one pair and one training step of the paper model, phase by phase, against a baseline.

    python -m scripts.bench_model                   # fuse 640×480 + train step 8×1×128², 15 classes, 2 threads
    python -m scripts.bench_model --quick           # fuse 320×240 + train step 4×1×64²
    python -m scripts.bench_model --amp bf16        # the optimised path under bf16 autocast as a third variant
    python -m scripts.bench_model --encoder tu-tf_efficientnet_lite0 --classes 9     # the shipped model's segmenter
    python -m scripts.bench_model --device cuda     # on a GPU (the baseline is then the reference kernels only)
    python -m scripts.bench_model --what fuse --no-baseline --fuse-classes 5   # fusing with 5 classes in the scene

Variants, run in this order in one process (random weights, BatchNorm statistics warmed up):

- ``baseline``: the code path before the speed work: glibc's default allocator, contiguous layout, the literal
  two-convolution ConvLSTM (``UAAFusionNet.use_reference_kernels``) and attribution on a scoring copy with the
  segmenter's own layers (``attribution.fast_scoring: false``).
- ``fast``: what the project runs (allocator tuned by ``engine.runtime``, channels-last fusion network and live
  segmenter, stacked ConvLSTM, the fast scoring copy of ``models.scoring``).
- ``fast+bf16`` (with ``--amp bf16``): the same under autocast; attribution stays in float32.
- ``fast+compile`` (with ``--compile``): the fast path with the fusion network's stages compiled by
  ``torch.compile`` (``engine.compile``, one graph per shape); its compile time (the warm-up run minus the best
  timed run) is printed, its FLOPs are the fast variant's (the counter does not run inside compiled graphs).

Per variant and phase: seconds (best of ``--repeats``), GFLOP counted by ``torch.utils.flop_counter`` (convolutions
and matrix products, forward and backward), the achieved GFLOP/s and the phase's share. The last lines compare
the variants: ``fuse HxW: baseline X s, fast Y s, speedup Z.ZZx, max abs diff D`` (fused images) and the same for
the training step (loss). FLOP floor: counted GFLOP / the best GFLOP/s a single large convolution reaches on this
machine (measured at the start).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.compile import compile_fusion, uncompile_fusion
from engine.config import load_config
from engine.runtime import autocast_context, configure_threads, reset_allocator, tune_allocator
from losses import LossSettings, UAAFusionLoss
from models.segmenter import pad_to_multiple, segmenter_stride
from models.uaafusion import UAAFusion, build_model
from scripts.bench_attribution import blocky_regions

PAPER_CONFIG = "configs/fmb_paper.yaml"


@dataclass
class PhaseTimes:
    """Seconds and FLOPs per phase of one run, and the peak memory of the timed runs."""

    seconds: dict[str, float] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)
    output: torch.Tensor | None = None
    peak_bytes: int = 0
    warmup_seconds: float = 0.0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated since the last reset (CUDA), or the process's peak resident memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class FlopCount(TorchDispatchMode):
    """Counts the FLOPs of the operators torch's flop counter knows (convolutions, matrix products), forward and
    backward. (``FlopCounterMode`` itself installs module hooks that ``autograd.grad`` on leaf inputs rejects.)"""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.total += counter(*args, **kwargs, out_val=out)
        return out


class Clock:
    """Accumulates wall time per phase name, exclusive of nested phases; ``count`` also counts FLOPs (slower;
    not used for timing)."""

    def __init__(self, device: torch.device, count: bool = False) -> None:
        self.device = device
        self.count = count
        self.result = PhaseTimes()
        self._stack: list[list[float]] = []  # per open phase: [seconds, flops] spent in nested phases

    @contextlib.contextmanager
    def phase(self, name: str):
        counter = FlopCount() if self.count else contextlib.nullcontext()
        self._sync()
        self._stack.append([0.0, 0])
        start = time.perf_counter()
        with counter:
            yield
        self._sync()
        elapsed = time.perf_counter() - start
        flops = counter.total if self.count else 0
        nested_s, nested_f = self._stack.pop()
        if self._stack:  # the enclosing phase does not book this one's time again
            self._stack[-1][0] += elapsed
            self._stack[-1][1] += flops
        self.result.seconds[name] = self.result.seconds.get(name, 0.0) + elapsed - nested_s
        self.result.flops[name] = self.result.flops.get(name, 0) + flops - nested_f

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class TimedAttention:
    """Wraps the path attention so its gradient evaluations are booked to their own phase."""

    def __init__(self, inner, clock: Clock) -> None:
        self.inner, self.clock = inner, clock

    def start(self, initial):
        self.inner.start(initial)

    def observe(self, output):
        self.inner.observe(output)

    def map_for_next_stage(self):
        with self.clock.phase("path attention (Eq. 9-12)"):
            return self.inner.map_for_next_stage()


def _fusion_phase(model: UAAFusion, ir, vi, labels, clock: Clock, amp: str):
    """IG weights, then the fusion network with the attention booked separately; as UAAFusion.forward."""
    with clock.phase("IG weights (Eq. 5-8, incl. regions)"):
        with torch.autocast(device_type=ir.device.type, enabled=False):
            weights, attention = model.attribute(ir.float(), vi.float(), labels)
    timed = TimedAttention(attention, clock) if attention is not None else None
    from models.uaafusion import _FullPrecisionAttention  # the same float32 guard the model uses

    with clock.phase("fusion network (Eq. 2-4, 13-15)"), autocast_context(amp, ir.device):
        out = model.fusion(ir, vi, weights["w_ir"], weights["w_vi"], _FullPrecisionAttention(timed) if timed else None)
    return out, weights


def fuse_once(model: UAAFusion, ir, vi, clock: Clock, amp: str, regions: torch.Tensor | None = None) -> torch.Tensor:
    """Fuse one pair; ``regions`` (1, H, W) replaces the segmenter's own (then no forward pass predicts them)."""
    model.eval()
    with torch.no_grad():
        out, _ = _fusion_phase(model, ir, vi, regions, clock, amp)
    return out.fused.float()


def striped_regions(height: int, width: int, classes: int, count: int) -> torch.Tensor:
    """(1, H, W) regions of ``count`` vertical bands of equal width, labelled with the first ``count`` of
    ``classes`` classes: exactly ``count`` classes present."""
    if not 1 <= count <= classes:
        raise ValueError(f"--fuse-classes must be between 1 and the class count {classes}, got {count}")
    band = torch.arange(width) * count // width
    return band.expand(1, height, width).clone()


def train_once(model: UAAFusion, optimizer, criterion, ir, vi, labels, clock: Clock, amp: str) -> torch.Tensor:
    model.train()
    for module in model.modules():  # dropout off in every variant: a seed draws its masks in memory order, so the
        if isinstance(module, torch.nn.Dropout):  # two layouts would drop different units and the losses differ
            module.eval()
    out, weights = _fusion_phase(model, ir, vi, labels, clock, amp)
    with clock.phase("losses (L_seg: segmenter on ir, vi, fused)"), autocast_context(amp, ir.device):
        seg = {name: model.segmenter(x) for name, x in (("ir", ir), ("vi", vi), ("fused", out.fused))}
        terms = criterion(out.fused, ir, vi, weights["w_ir"], weights["w_vi"], seg, labels)
    with clock.phase("backward"):
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
    with clock.phase("optimizer step"):
        optimizer.step()
    return terms["total"].detach().float()


def conv_peak_gflops(device: torch.device) -> float:
    """GFLOP/s of one large 3×3, 64→64 convolution (channels-last, float32): a practical ceiling."""
    x = torch.rand(1, 64, 256, 256, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.rand(64, 64, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.no_grad():
        for _ in range(4):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            F.conv2d(x, w, padding=1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2 * 9 * 64 * 64 * 256 * 256 / best / 1e9


def best_of(repeats: int, run: Callable[[Clock], torch.Tensor], device: torch.device,
            flops_from: PhaseTimes | None = None) -> PhaseTimes:
    """Time ``run`` ``repeats`` times after one warm-up (best total), then count its FLOPs once (or take them from
    ``flops_from``: the same computation, compiled)."""
    start = time.perf_counter()
    run(Clock(device))
    warmup = time.perf_counter() - start
    best: PhaseTimes | None = None
    reset_peak(device)
    for _ in range(max(repeats, 1)):
        clock = Clock(device)
        out = run(clock)
        clock.result.output = out
        if best is None or sum(clock.result.seconds.values()) < sum(best.seconds.values()):
            best = clock.result
    best.peak_bytes = peak_bytes(device)
    best.warmup_seconds = warmup
    if flops_from is not None:
        best.flops = dict(flops_from.flops)
        return best
    counter = Clock(device, count=True)
    run(counter)
    best.flops = counter.result.flops
    return best


def print_table(title: str, result: PhaseTimes) -> None:
    total = sum(result.seconds.values())
    print(f"\n{title}: {total:.3f} s")
    print(f"  {'phase':46s} {'s':>8s} {'GFLOP':>9s} {'GFLOP/s':>8s} {'share':>6s}")
    for name, sec in result.seconds.items():
        gflop = result.flops.get(name, 0) / 1e9
        print(f"  {name:46s} {sec:8.3f} {gflop:9.2f} {gflop / sec if sec else 0:8.1f} {sec / total:6.1%}")
    gflop = sum(result.flops.values()) / 1e9
    print(f"  {'total':46s} {total:8.3f} {gflop:9.2f} {gflop / total:8.1f}")
    print(f"  peak memory {result.peak_bytes / 2**30:.2f} GiB (GPU allocated; on a CPU the process's peak RSS)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fuse 320×240, train step 4×1×64²")
    p.add_argument("--what", default="fuse,train", help="comma-separated: fuse, train")
    p.add_argument("--size", default=None, help="fused image size HxW (default 480x640)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 8)")
    p.add_argument("--patch", type=int, default=None, help="training patch side (default 128)")
    p.add_argument("--classes", type=int, default=15, help="segmentation classes (FMB: 15)")
    p.add_argument("--encoder", default=None,
                   help="the segmenter's smp encoder (default the paper profile's, mobilenet_v2)")
    p.add_argument("--per-image", type=int, default=5, help="classes present in each training label map")
    p.add_argument("--fuse-classes", type=int, default=0,
                   help="fuse with regions of this many classes (vertical bands) instead of the segmenter's own: "
                        "the IG weights take one backward pass per class")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per variant (best total is kept)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="also time the fast path under bf16")
    p.add_argument("--compile", action="store_true",
                   help="also time the fast path with the fusion network's stages compiled (torch.compile)")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline variant")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    threads = configure_threads(args.threads)
    h, w = (int(v) for v in (args.size or ("240x320" if args.quick else "480x640")).split("x"))
    batch = args.batch or (4 if args.quick else 8)
    patch = args.patch or (64 if args.quick else 128)
    what = [x.strip() for x in args.what.split(",") if x.strip()]

    torch.manual_seed(0)
    overrides = ["segmenter.encoder_weights=null"]  # random weights: nothing to download
    cfg = load_config(PAPER_CONFIG, overrides + ([f"segmenter.encoder={args.encoder}"] if args.encoder else []))
    model = build_model(cfg, args.classes).to(device)
    with torch.no_grad():  # BatchNorm statistics as after some training
        model.segmenter.train()
        for _ in range(3):
            model.segmenter(torch.rand(4, 1, 64, 64, device=device))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = UAAFusionLoss(LossSettings(**cfg["loss"]))
    g = torch.Generator().manual_seed(1)
    fuse_ir, fuse_vi = (torch.rand(1, 1, h, w, generator=g).to(device) for _ in range(2))
    stride = segmenter_stride(model.segmenter)  # fusing pads to the segmenter's stride (engine.inference)
    fuse_ir, fuse_vi = (pad_to_multiple(x, stride)[0] for x in (fuse_ir, fuse_vi))
    train_ir, train_vi = (torch.rand(batch, 1, patch, patch, generator=g).to(device) for _ in range(2))
    labels = blocky_regions(batch, patch, args.classes, args.per_image, torch.Generator().manual_seed(0)).to(device)

    variants = [] if args.no_baseline or device.type == "cuda" else ["baseline"]
    variants.append("fast")
    if args.amp == "bf16":
        variants.append("fast+bf16")
    if args.compile:
        variants.append("fast+compile")
    peak = conv_peak_gflops(device)
    print(f"device {device}, {threads} threads, {args.classes} classes; conv ceiling {peak:.0f} GFLOP/s "
          f"(3×3 64→64 at 256², channels-last)")
    fuse_regions = None
    if "fuse" in what and args.fuse_classes:
        fuse_regions = striped_regions(fuse_ir.shape[-2], fuse_ir.shape[-1], args.classes, args.fuse_classes)
        print(f"fuse: regions given, {args.fuse_classes} classes in the {w}×{h} pair (no forward pass predicts them)")
        fuse_regions = fuse_regions.to(device)
    elif "fuse" in what:  # the IG weights take one backward pass per class present in the fused image's regions
        regions, _ = model.eval().predict_regions(model.fusion.initial_estimate(fuse_ir, fuse_vi))
        print(f"fuse: the segmenter finds {int(regions.unique().numel())} classes in the {w}×{h} pair")
    results: dict[str, dict[str, PhaseTimes]] = {}
    for variant in variants:
        if variant == "baseline":
            reset_allocator()
        else:
            tune_allocator()
        model.load_state_dict(state)
        # the trainer's live segmenter is channels-last (engine.trainer); the baseline keeps the contiguous layout
        model.segmenter.to(memory_format=torch.contiguous_format if variant == "baseline" else torch.channels_last)
        model.fusion.use_reference_kernels(variant == "baseline")
        model.attribution.fast_scoring = variant != "baseline"
        amp = "bf16" if variant.endswith("bf16") else "none"
        compiled = variant.endswith("compile")
        if compiled and not compile_fusion(model.fusion, device, dynamic=False):
            print("[fast+compile] skipped: no usable compiler (see the warning above)")
            continue
        count_from = results.get("fast") if compiled else None  # FLOPs as the fast path's
        results[variant] = {}
        if "fuse" in what:
            res = best_of(args.repeats, lambda clock, amp=amp: fuse_once(model, fuse_ir, fuse_vi, clock, amp,
                                                                       fuse_regions), device,
                          flops_from=count_from["fuse"] if count_from else None)
            results[variant]["fuse"] = res
            print_table(f"[{variant}] fuse one {w}×{h} pair", res)
        if "train" in what:
            def run(clock: Clock, amp: str = amp) -> torch.Tensor:
                model.load_state_dict(state)  # every run takes the same step from the same weights
                torch.manual_seed(0)  # and the same dropout masks (DeepLabV3+'s ASPP has dropout)
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
                return train_once(model, optimizer, criterion, train_ir, train_vi, labels, clock, amp)

            res = best_of(args.repeats, run, device, flops_from=count_from["train"] if count_from else None)
            results[variant]["train"] = res
            print_table(f"[{variant}] training step {batch}×1×{patch}² ({args.per_image} classes per image)", res)
        if compiled:
            uncompile_fusion(model.fusion)
            for task, res in results[variant].items():
                print(f"[fast+compile] {task}: compile time {res.warmup_seconds - sum(res.seconds.values()):.1f} s "
                      f"(warm-up run {res.warmup_seconds:.1f} s)")

    print()
    reference = variants[0]
    for task, label in (("fuse", f"fuse {w}x{h}"), ("train", f"train step {batch}x{patch}^2")):
        if task not in what:
            continue
        ref = results[reference][task]
        ref_s = sum(ref.seconds.values())
        floor = sum(ref.flops.values()) / 1e9 / peak
        for variant in [v for v in variants[1:] if v in results]:
            res = results[variant][task]
            sec = sum(res.seconds.values())
            diff = (res.output - ref.output).abs().max().item()
            print(f"{label}: {reference} {ref_s:.2f} s, {variant} {sec:.2f} s, speedup {ref_s / sec:.2f}x, "
                  f"max abs diff {diff:.2e}, FLOP floor {floor:.2f} s, peak {res.peak_bytes / 2**30:.2f} GiB")
        if len(variants) == 1:
            print(f"{label}: {variants[0]} {ref_s:.2f} s ({1 / ref_s:.2f}/s), FLOP floor {floor:.2f} s, "
                  f"peak {ref.peak_bytes / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
