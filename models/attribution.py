"""Attribution analysis of Sec. III-B: class-wise IG weights (Eq. 5–8) and path attention (Eq. 9–12).

Everything here is a plain function of a scoring model (any callable mapping (B, 1, H, W) images to
(B, C, H, W) class scores), the images and a region map; results are detached constants for the fusion
network. Shapes: images (N, 1, H, W) in [0, 1]; regions (N, H, W) long class indices, ``ignore_index``
marking pixels that belong to no region.

Exactness notes. The naive IG form runs one backward pass per class per step per modality. The fast form
computes the same numbers with one forward pass over all steps and both modalities stacked in the batch,
and R backward passes, R = the largest number of classes in any single image: pass r differentiates the
sum over images of each image's r-th class score. Both rely on the scoring model treating batch items
independently (eval mode: no batch statistics, no dropout), which ``models.scoring.prepare_scoring_model``
ensures. The fast form and the attention's scores take their region sums through :class:`ScoreSums`, which uses
the low-resolution logits when the scoring model exposes a linear final upsampling; the naive form always
works on the full-resolution scores, so it stays the reference for both. The release's behaviours that couple
the batch (pooled regions, training-mode segmenter) use the per-step loops instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ScoringModel = Callable[[torch.Tensor], torch.Tensor]
ScoreFn = Callable[[torch.Tensor], torch.Tensor]

SCORE_ACTIVATIONS = ("none", "softmax", "sigmoid")
IG_METHODS = ("fast", "naive")
REGION_POOLINGS = ("image", "batch")
REGION_NORMALIZATIONS = ("sum", "release_mean")
SEGMENTER_MODES = ("eval", "follow")
ATTENTION_METHODS = ("ig", "grad")
ATTENTION_REDUCTIONS = ("sum", "mean")
ATTENTION_SCORES = ("region", "masked_mean")
ATTENTION_NORMALIZATIONS = ("none", "std", "max")
WEIGHT_SOURCES = ("ig", "uniform")


@dataclass
class AttributionSettings:
    """How attribution is computed; the YAML block ``attribution:`` maps onto these fields.

    Attributes:
        ig_steps: M, the Riemann steps of Eq. 7 (paper 5).
        eps: ε of Eq. 8 (release 1e-8).
        score_activation: what turns the segmenter output into the scores y of Eq. 5/9: ``none`` (use it
            as it is: logits for DeepLabV3+, sigmoid outputs for the release's segmenter), ``softmax``
            or ``sigmoid``.
        ig_method: ``fast`` (scheduled backward passes) or ``naive`` (one backward per class per step).
        region_pooling: ``image`` (paper, per image) or ``batch`` (release row 5: region sums pooled over
            the batch, so batch items influence each other).
        region_normalization: ``sum`` (paper: region sum of S^c) or ``release_mean`` (release row 6: region
            mean, 1/M after the ReLU; changes w only through ε).
        segmenter_mode: ``eval`` (paper default: attribution with the segmenter in eval mode) or ``follow``
            (release row 15: whatever mode the segmenter is in, i.e. training mode during training).
        attention: ``ig`` (Eq. 12 path attribution) or ``grad`` (ablation II: plain gradient at I^(k-1)).
        attention_substeps: samples per path segment (Table IV's k, 2k, ..., 5k → 1..5).
        attention_reduction: ``sum`` (Eq. 12) or ``mean`` (release row 3: running mean of the terms).
        attention_score: ``region`` (Eq. 9: mean over pixels of each pixel's region-class score) or
            ``masked_mean`` (release row 4: mean of mask ⊙ scores over batch, classes and pixels; the mask is
            the one-hot label in training and the segmenter's output on I^(0) at inference).
        attention_initial_gradient: also evaluate the score gradient at I^(0) when a path starts, and discard it
            (release row 15: one more segmenter pass, which in training mode moves BatchNorm statistics).
        attention_normalize: **an extension, not in the paper**: rescale each image's A before the sigmoid,
            ``none`` (paper), ``std`` (A / std(A)) or ``max`` (A / max|A|). Eq. 9's score is a pixel mean, so A is
            O(1/HW) and σ(A) ≈ 0.5 everywhere (docs/DECISIONS.md D6); this lets researchers test whether an
            attention that actually varies helps.
        weights: ``ig`` (Eq. 5–8, the paper) or ``uniform``, **an ablation, not in the paper**: w_ir = w_vi = 0.5
            on every pixel, in the gradient step and in L_int, and no IG passes (the regions and the path attention
            are computed as usual). It asks whether the class-wise attribution helps (docs/RESULTS.md).
        region_scales, region_flip: **an extension, not in the paper**: at inference, take the regions (and
            release row 4's soft mask) from several views of I^(0), as DeepLabV3+'s multi-scale evaluation does:
            I^(0) resized by each factor of ``region_scales`` and, with ``region_flip``, mirrored too; the regions
            are the argmax of the mean softmax of the views' scores, the mask the mean of their activated scores.
            The default, ``[1.0]`` without mirroring, is the paper's single pass. Training regions are the labels,
            and the IG and attention passes stay on I^(0) itself (docs/DECISIONS.md D21).
        ig_chunk: images per forward pass in the fast IG (0: all T·M·N at once; default N, one scaled copy of
            the batch per pass, which suits CPUs: 2N was 4–5 % faster at 640×480 but took 40 % more memory per
            pixel and was slower on larger images; raise it on a GPU).
        fold_batchnorm: score with an eval-mode copy whose BatchNorm layers are folded into the convolutions
            (same numbers, fewer operations); only used with ``segmenter_mode: eval``.
        fast_scoring: that copy also runs channels-last (its gradients too), computes large-dilation depthwise
            convolutions tap by tap and takes region sums on the logits before the final linear upsampling
            (``models.scoring``; same numbers to round-off, tested in float64; 1.5–2× faster attribution on
            a CPU); only used with ``segmenter_mode: eval``.
        ignore_index: label value of pixels outside every region.
    """

    ig_steps: int = 5
    eps: float = 1e-8
    score_activation: str = "none"
    ig_method: str = "fast"
    region_pooling: str = "image"
    region_normalization: str = "sum"
    segmenter_mode: str = "eval"
    attention: str = "ig"
    attention_substeps: int = 1
    attention_reduction: str = "sum"
    attention_score: str = "region"
    attention_initial_gradient: bool = False
    attention_normalize: str = "none"
    weights: str = "ig"
    region_scales: list[float] = field(default_factory=lambda: [1.0])
    region_flip: bool = False
    ig_chunk: int | None = None
    fold_batchnorm: bool = True
    fast_scoring: bool = True
    ignore_index: int = 255

    def __post_init__(self) -> None:
        choices = {
            "score_activation": SCORE_ACTIVATIONS,
            "ig_method": IG_METHODS,
            "region_pooling": REGION_POOLINGS,
            "region_normalization": REGION_NORMALIZATIONS,
            "segmenter_mode": SEGMENTER_MODES,
            "attention": ATTENTION_METHODS,
            "attention_reduction": ATTENTION_REDUCTIONS,
            "attention_score": ATTENTION_SCORES,
            "attention_normalize": ATTENTION_NORMALIZATIONS,
            "weights": WEIGHT_SOURCES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"attribution.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.ig_steps < 1 or self.attention_substeps < 1:
            raise ValueError("attribution.ig_steps and attribution.attention_substeps must be >= 1")
        scales = self.region_scales
        if (not isinstance(scales, (list, tuple)) or not scales
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scales)):
            raise ValueError(f"attribution.region_scales must be a non-empty list of positive numbers, got {scales!r}")
        self.region_scales = [float(s) for s in scales]

    @property
    def single_region_view(self) -> bool:
        """Whether the inference regions come from the plain pass on I^(0) alone (the paper)."""
        return self.region_scales == [1.0] and not self.region_flip


# --------------------------------------------------------------------------------------------- helpers


def apply_score_activation(raw: torch.Tensor, activation: str) -> torch.Tensor:
    """Scores y from the segmenter output (B, C, H, W)."""
    if activation == "none":
        return raw
    if activation == "softmax":
        return raw.softmax(dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(raw)
    raise ValueError(f"unknown score activation {activation!r}; choose from {SCORE_ACTIVATIONS}")


def region_one_hot(regions: torch.Tensor, num_classes: int, ignore_index: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, H, W) class indices → (N, C, H, W) one-hot; ignored or out-of-range pixels are all-zero."""
    valid = (regions >= 0) & (regions < num_classes) & (regions != ignore_index)
    onehot = F.one_hot(torch.where(valid, regions, 0), num_classes).permute(0, 3, 1, 2)
    return (onehot * valid.unsqueeze(1)).to(dtype)


def riemann_right(steps: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The integration rule of Eq. 7 and Eq. 12: right Riemann sums, α_j = j/M for j = 1..M. Shape (M,).

    (Captum calls it ``riemann_right``.) Both the class-wise IG (path 0 → I) and the attention's path segments
    (I^(k-1) → I^(k), with Table IV's sub-steps) sample their paths at these fractions.
    """
    return torch.arange(1, steps + 1, dtype=dtype, device=device) / steps


def region_mean_score(scores: torch.Tensor, onehot: torch.Tensor, pooled: bool = False) -> torch.Tensor:
    """Eq. 5: the mean class-c score over region c, for every class at once.

    Args:
        scores: (B, C, H, W) class scores y; onehot: (B, C, H, W) region masks.
        pooled: False (paper): per image, (B, C); True (release row 5): over the whole batch, (C,).
    Returns:
        Region means; 0 for empty regions.
    """
    dims = (0, 2, 3) if pooled else (2, 3)
    return (scores * onehot).sum(dim=dims) / onehot.sum(dim=dims).clamp(min=1)


class ScoreSums:
    """Weighted sums of class scores, Σ_p m[n, c, p] · y[n, c, p] → (B, C), for one fixed weighting m.

    With m the one-hot regions these are the region sums behind Eq. 5 (divided by the region sizes) and Eq. 9
    (summed over classes, divided by HW); the release's row 4 weights by a soft mask instead. When the model
    exposes a linear final upsampling U (``models.scoring.ScoringNetwork.linear_head``) and the scores are used
    as they are (activation ``none``), the sums are taken on the logits L before it: Σ_p m·U(L) = Σ_q (Uᵀm)·L,
    the same number without the full-resolution upsampling and its backward pass. Uᵀm is computed once.

    Args:
        model: the scoring model. weights: m, (N, C, H, W). activation: see :func:`apply_score_activation`.
    """

    def __init__(self, model: ScoringModel, weights: torch.Tensor, activation: str = "none") -> None:
        self.model = model
        self.weights = weights
        self.activation = activation
        linear_head = getattr(model, "linear_head", None)
        self.upsample = linear_head() if callable(linear_head) and activation == "none" else None
        self._adjoint: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Sums for images x (B, 1, H, W) whose weightings are ``weights[index]`` (None: all N, B = N)."""
        if self.upsample is None:
            weights = self.weights if index is None else self.weights[index]
            return (apply_score_activation(self.model(x), self.activation) * weights).sum(dim=(2, 3))
        logits = self.model.logits(x)
        adjoint = self.adjoint(logits.shape[-2:], logits.dtype)
        return (logits * (adjoint if index is None else adjoint[index])).sum(dim=(2, 3))

    def adjoint(self, size: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Uᵀm for logits of spatial ``size``: (N, C, h, w)."""
        if self._adjoint is None or self._adjoint.shape[-2:] != size or self._adjoint.dtype != dtype:
            with torch.enable_grad():
                low = self.weights.new_zeros(*self.weights.shape[:2], *size, dtype=dtype).requires_grad_(True)
                upsampled = self.upsample(low)
                if upsampled.shape != self.weights.shape:
                    raise ValueError(f"the head upsamples {tuple(low.shape)} to {tuple(upsampled.shape)}, "
                                     f"but the weights are {tuple(self.weights.shape)}")
                (self._adjoint,) = torch.autograd.grad(upsampled, low, self.weights.to(dtype))
        return self._adjoint


def class_schedule(onehot: torch.Tensor) -> torch.Tensor:
    """(R, N) long: entry [r, n] is image n's r-th present class (ascending), -1 when it has fewer than r+1.

    R is the largest number of classes present in one image (0 rows when no image has any region).
    """
    present = onehot.sum(dim=(2, 3)) > 0  # (N, C)
    per_image = [torch.nonzero(row).flatten() for row in present]
    rounds = max((len(c) for c in per_image), default=0)
    schedule = torch.full((rounds, len(per_image)), -1, dtype=torch.long, device=onehot.device)
    for n, classes in enumerate(per_image):
        schedule[: len(classes), n] = classes
    return schedule


def input_gradient(score_fn: ScoreFn, x: torch.Tensor) -> torch.Tensor:
    """∂(Σ_n score_fn(x)_n)/∂x, i.e. each image's score gradient when items are independent. Same shape as x."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(score_fn(x).sum(), x)
    return grad


# ------------------------------------------------------------------------- class-wise IG (Eq. 5–8)


def ig_region_attributions_loop(
    model: ScoringModel,
    image: torch.Tensor,
    regions: torch.Tensor,
    num_classes: int,
    steps: int = 5,
    activation: str = "none",
    ignore_index: int = 255,
    pooling: str = "image",
) -> torch.Tensor:
    """Region sums of the IG maps by the literal loop: one forward per step, one backward per class.

    For each class c present: S^c = Σ_{j=1..M} ∂Score^c(α_j I)/∂(α_j I) · I/M (Eq. 7, :func:`riemann_right`),
    Score^c the region mean of y^c (Eq. 5, :func:`region_mean_score`), and r[c] = Σ_{p∈c} S^c(p).

    Args:
        model: maps (B, 1, H, W) to (B, C, H, W); may be in training mode (the release's IG).
        image: (N, 1, H, W). regions: (N, H, W) long.
        pooling: ``image`` (paper: per image; the model must treat batch items independently) or ``batch``
            (release row 5: Score^c and the region sums pooled over the batch).
    Returns:
        (N, C) for ``image``, (C,) for ``batch``; in the image's dtype, 0 where the class is absent.
    """
    if pooling not in REGION_POOLINGS:
        raise ValueError(f"pooling must be one of {REGION_POOLINGS}, got {pooling!r}")
    pooled = pooling == "batch"
    onehot = region_one_hot(regions, num_classes, ignore_index, image.dtype)
    present = torch.nonzero(onehot.sum(dim=(0, 2, 3)) > 0).flatten().tolist()
    sum_dims = (0, 1, 2, 3) if pooled else (1, 2, 3)
    out = image.new_zeros(num_classes) if pooled else image.new_zeros(image.shape[0], num_classes)
    for alpha in riemann_right(steps, image.dtype, image.device).tolist():
        with torch.enable_grad():
            x = (image.detach() * alpha).requires_grad_(True)
            scores = region_mean_score(apply_score_activation(model(x), activation), onehot, pooled)
            for idx, c in enumerate(present):
                score = scores[c] if pooled else scores[:, c].sum()  # per image: items are independent
                (grad,) = torch.autograd.grad(score, x, retain_graph=idx < len(present) - 1)
                out[..., c] += (grad * image * onehot[:, c:c + 1]).sum(dim=sum_dims) / steps
    return out.detach()


def ig_region_attributions_naive(
    model: ScoringModel,
    image: torch.Tensor,
    regions: torch.Tensor,
    num_classes: int,
    steps: int = 5,
    activation: str = "none",
    ignore_index: int = 255,
) -> torch.Tensor:
    """Per-image region sums by the literal loop (the reference for the fast form). Returns (N, C)."""
    return ig_region_attributions_loop(model, image, regions, num_classes, steps, activation, ignore_index, "image")


def ig_region_attributions_fast(
    model: ScoringModel,
    images: Sequence[torch.Tensor],
    regions: torch.Tensor,
    num_classes: int,
    steps: int = 5,
    activation: str = "none",
    ignore_index: int = 255,
    chunk: int | None = None,
) -> torch.Tensor:
    """Same numbers as :func:`ig_region_attributions_naive` for several modalities at once, exactly.

    The T·M·N scaled images (all steps of all modalities) go through the network in chunks of ``chunk``
    images (None: all at once); in each chunk, backward pass r differentiates Σ_n Score^{c_{n,r}}_n, where
    c_{n,r} is image n's r-th class, which gives every image the gradient of its own class score because
    batch items are independent. Backward passes per chunk = max classes in one of its images.

    Args:
        images: T tensors (N, 1, H, W) sharing ``regions`` (e.g. [I_ir, I_vi]).
        chunk: images per forward pass. Large batches help a GPU; on a CPU, chunks of about N avoid the
            memory traffic of one huge batch (see docs/PERFORMANCE.md).
    Returns:
        (T, N, C).
    """
    stacked = torch.stack([im.detach() for im in images])  # (T, N, 1, H, W)
    n_mod, batch = stacked.shape[:2]
    onehot = region_one_hot(regions, num_classes, ignore_index, stacked.dtype)
    schedule = class_schedule(onehot)  # (R, N)
    out = stacked.new_zeros(n_mod, batch, num_classes)
    if schedule.shape[0] == 0:
        return out
    total = n_mod * steps * batch
    chunk = total if not chunk or chunk <= 0 else min(chunk, total)
    # sample s of the flattened (T, M, N) order: modality s // (M N), step (s // N) % M + 1, image s % N
    sample = torch.arange(total, device=stacked.device)
    mod_idx, step_idx, img_idx = sample // (steps * batch), (sample // batch) % steps, sample % batch
    alphas = riemann_right(steps, stacked.dtype, stacked.device)[step_idx]
    region_sums = ScoreSums(model, onehot, activation)
    sizes = onehot.sum(dim=(2, 3)).clamp(min=1)  # (N, C) region sizes N^c
    for begin in range(0, total, chunk):
        sl = slice(begin, min(begin + chunk, total))
        mods, imgs = mod_idx[sl], img_idx[sl]
        base = stacked[mods, imgs]  # (B, 1, H, W) unscaled images
        chunk_schedule = schedule[:, imgs]  # (R, B)
        rounds = int((chunk_schedule >= 0).any(dim=1).sum())
        with torch.enable_grad():
            x = (alphas[sl].view(-1, 1, 1, 1) * base).requires_grad_(True)
            region_means = region_sums(x, imgs) / sizes[imgs]  # (B, C): Score^c of Eq. 5 for every class
            for r in range(rounds):
                classes = chunk_schedule[r]
                active = classes >= 0
                chosen = F.one_hot(classes.clamp(min=0), num_classes).to(stacked.dtype) * active.unsqueeze(1)
                score = (region_means * chosen).sum()  # each image's chosen class only
                (grad,) = torch.autograd.grad(score, x, retain_graph=r < rounds - 1)
                region = (onehot[imgs] * chosen[:, :, None, None]).sum(dim=1)  # (B, H, W)
                values = ((grad * base).sum(dim=1) * region).sum(dim=(1, 2)) / steps  # (B,)
                flat = (mods * batch + imgs) * num_classes + classes.clamp(min=0)
                out.view(-1).index_add_(0, flat[active], values[active])
    return out.detach()


def ig_region_attributions_batch_pooled(
    model: ScoringModel,
    image: torch.Tensor,
    regions: torch.Tensor,
    num_classes: int,
    steps: int = 5,
    activation: str = "none",
    ignore_index: int = 255,
) -> torch.Tensor:
    """Release row 5: Score^c and the region sums pooled over the whole batch. Returns (C,)."""
    return ig_region_attributions_loop(model, image, regions, num_classes, steps, activation, ignore_index, "batch")


def attribution_weights(
    a_ir: torch.Tensor,
    a_vi: torch.Tensor,
    regions: torch.Tensor,
    num_classes: int,
    eps: float = 1e-8,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: w1 = (ReLU(a_ir) + ε) / (ReLU(a_ir) + ReLU(a_vi) + 2ε) on each region, w2 = 1 − w1.

    Args:
        a_ir, a_vi: (N, C) per-image or (C,) batch-level region attributions.
        regions: (N, H, W).
    Returns:
        w_ir, w_vi: (N, 1, H, W) in [0, 1]; 0.5 on pixels outside every region.
    """
    a_ir, a_vi = F.relu(a_ir), F.relu(a_vi)
    per_class = (a_ir + eps) / (a_ir + a_vi + 2 * eps)
    if per_class.dim() == 1:
        per_class = per_class.expand(regions.shape[0], -1)
    valid = (regions >= 0) & (regions < num_classes) & (regions != ignore_index)
    w_ir = per_class.gather(1, torch.where(valid, regions, 0).flatten(1)).view_as(regions)
    w_ir = torch.where(valid, w_ir, torch.full_like(w_ir, 0.5)).unsqueeze(1)
    return w_ir, 1.0 - w_ir


def ig_attribution_weights(
    model: ScoringModel,
    ir: torch.Tensor,
    vi: torch.Tensor,
    regions: torch.Tensor,
    num_classes: int,
    settings: AttributionSettings,
) -> dict[str, torch.Tensor]:
    """Class-wise attribution weights for a batch (Eq. 5–8) under ``settings``.

    Returns:
        dict with ``w_ir``, ``w_vi`` (N, 1, H, W) in [0, 1] and ``a_ir``, ``a_vi`` (the normalised region
        attributions before the ReLU: (N, C) per image or (C,) pooled over the batch).
    """
    args = dict(num_classes=num_classes, steps=settings.ig_steps, activation=settings.score_activation,
                ignore_index=settings.ignore_index)
    onehot = region_one_hot(regions, num_classes, settings.ignore_index, ir.dtype)
    if settings.region_pooling == "batch":
        a_ir = ig_region_attributions_batch_pooled(model, ir, regions, **args)
        a_vi = ig_region_attributions_batch_pooled(model, vi, regions, **args)
        counts = onehot.sum(dim=(0, 2, 3))
    elif settings.ig_method == "fast" and not getattr(model, "training", False):
        # (a training-mode model couples the batch through BatchNorm statistics: only the loop is exact then)
        chunk = ir.shape[0] if settings.ig_chunk is None else settings.ig_chunk
        a_ir, a_vi = ig_region_attributions_fast(model, [ir, vi], regions, chunk=chunk, **args)
        counts = onehot.sum(dim=(2, 3))
    else:
        a_ir = ig_region_attributions_naive(model, ir, regions, **args)
        a_vi = ig_region_attributions_naive(model, vi, regions, **args)
        counts = onehot.sum(dim=(2, 3))
    if settings.region_normalization == "release_mean":
        # Region mean instead of region sum. The release divides by M after its ReLU; M > 0 commutes with
        # the ReLU, so dividing here gives the same values.
        a_ir, a_vi = a_ir / counts.clamp(min=1), a_vi / counts.clamp(min=1)
    w_ir, w_vi = attribution_weights(a_ir, a_vi, regions, num_classes, settings.eps, settings.ignore_index)
    return {"w_ir": w_ir, "w_vi": w_vi, "a_ir": a_ir, "a_vi": a_vi}


# ------------------------------------------------------------------------ path attention (Eq. 9–12)


def _stacked_index(batch: int, images: int, device: torch.device) -> torch.Tensor:
    """Image index of each of ``batch`` samples stacked in blocks of ``images`` (sub-steps of a path segment)."""
    if batch % images:
        raise ValueError(f"{batch} stacked samples are not a whole number of blocks of {images} images")
    return torch.arange(batch, device=device) % images


def region_score_fn(
    model: ScoringModel, regions: torch.Tensor, num_classes: int, activation: str = "none", ignore_index: int = 255
) -> ScoreFn:
    """Eq. 9 per image: Score(I)_n = (1/HW) Σ_c Σ_{p∈c} y^c_p, regions fixed. Returns images → (N,).

    The images may stack several samples of each of the N images along the batch (sub-steps), in blocks of N.
    """
    cached: ScoreSums | None = None

    def score(x: torch.Tensor) -> torch.Tensor:
        nonlocal cached
        if cached is None:  # the one-hot regions take the dtype of the first images scored
            cached = ScoreSums(model, region_one_hot(regions, num_classes, ignore_index, x.dtype), activation)
        index = _stacked_index(x.shape[0], regions.shape[0], x.device)
        return cached(x, index).sum(dim=1) / (x.shape[-1] * x.shape[-2])

    return score


def masked_mean_score_fn(model: ScoringModel, mask: torch.Tensor, activation: str = "none") -> ScoreFn:
    """Release row 4: mean over (N, C, H, W) of mask ⊙ y, returned as each image's share (N,) of that mean."""
    sums = ScoreSums(model, mask, activation)

    def score(x: torch.Tensor) -> torch.Tensor:
        return sums(x, _stacked_index(x.shape[0], mask.shape[0], x.device)).sum(dim=1) / mask.numel()

    return score


class PathAttention:
    """Attribution attention along the unfolding path (Eq. 11–12), one gradient evaluation per stage.

    The path runs through the stage outputs I^(0), I^(1), ...; the map for stage k is
    A^(k) = Σ_{j=1..k-1} Σ_{t=1..s} ∂Score(x_{j,t})/∂x · (I^(j) − I^(j-1))/s, x_{j,t} = I^(j-1) + t/s (I^(j) − I^(j-1)),
    so A^(1) = 0 and the terms telescope to Score(I^(k-1)) − Score(I^(0)) as s grows. With s = 1 this is
    Eq. 12 (gradient sampled at each stage output). Earlier terms are kept, not recomputed; the term of a
    segment is computed only when a later stage needs it (the last output needs no gradient).

    Args:
        score_fn: images (B, 1, H, W) → per-image scores (B,); B may be a multiple of N (stacked samples).
        method: ``ig`` (path attribution) or ``grad`` (ablation II: A^(k) = ∂Score(I^(k-1))/∂I^(k-1)).
        substeps: s, samples per path segment (Table IV).
        reduction: ``sum`` (Eq. 12) or ``mean`` (release row 3: running mean, sum divided by term count).
        initial_gradient: evaluate (and discard) the gradient at I^(0) when the path starts (release row 15).
        normalize: ``none`` (paper), ``std`` or ``max``: divide each image's map by its standard deviation or
            its largest magnitude before handing it out (an extension; see :class:`AttributionSettings`).
    """

    def __init__(self, score_fn: ScoreFn, method: str = "ig", substeps: int = 1, reduction: str = "sum",
                 initial_gradient: bool = False, normalize: str = "none") -> None:
        if (method not in ATTENTION_METHODS or reduction not in ATTENTION_REDUCTIONS or substeps < 1
                or normalize not in ATTENTION_NORMALIZATIONS):
            raise ValueError(f"bad PathAttention settings: method={method!r} substeps={substeps} "
                             f"reduction={reduction!r} normalize={normalize!r}")
        self.score_fn = score_fn
        self.method = method
        self.substeps = substeps
        self.reduction = reduction
        self.initial_gradient = initial_gradient
        self.normalize = normalize
        self.gradient_evaluations = 0
        self.path: list[torch.Tensor] = []
        self._total: torch.Tensor | None = None
        self._terms = 0

    def start(self, initial: torch.Tensor) -> None:
        self.path = [initial.detach()]
        self._total = torch.zeros_like(self.path[0])
        self._terms = 0
        if self.initial_gradient:  # the release evaluates it and throws it away (A^(1) = 0 either way)
            input_gradient(self.score_fn, self.path[0])
            self.gradient_evaluations += 1

    def observe(self, stage_output: torch.Tensor) -> None:
        self.path.append(stage_output.detach())

    def segment_term(self, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """Σ_t ∂Score(start + t/s·Δ)/∂x · Δ/s for Δ = end − start (all samples in one batch)."""
        delta = end - start
        fractions = riemann_right(self.substeps, start.dtype, start.device)
        points = (start.unsqueeze(0) + fractions.view(-1, 1, 1, 1, 1) * delta.unsqueeze(0)).flatten(0, 1)
        grads = input_gradient(self.score_fn, points).view(self.substeps, *start.shape)
        self.gradient_evaluations += self.substeps
        return grads.sum(dim=0) * delta / self.substeps

    def map_for_next_stage(self) -> torch.Tensor:
        """A for the stage that follows the last observed output: (N, 1, H, W), detached."""
        if self.method == "grad":
            self.gradient_evaluations += 1
            return normalize_attention(input_gradient(self.score_fn, self.path[-1]).detach(), self.normalize)
        while self._terms < len(self.path) - 1:
            self._total = self._total + self.segment_term(self.path[self._terms], self.path[self._terms + 1])
            self._terms += 1
        total = self._total / self._terms if self.reduction == "mean" and self._terms > 0 else self._total
        return normalize_attention(total.detach(), self.normalize)


def normalize_attention(attention: torch.Tensor, mode: str = "none", eps: float = 1e-12) -> torch.Tensor:
    """Rescale each image's map (N, 1, H, W): ``none`` as it is, ``std``: A / std(A), ``max``: A / max|A|.

    An all-zero map (stage 1) stays zero. Not in the paper (see :class:`AttributionSettings`).
    """
    if mode == "none":
        return attention
    flat = attention.flatten(1)
    scale = flat.std(dim=1, unbiased=False) if mode == "std" else flat.abs().amax(dim=1)
    if mode not in ATTENTION_NORMALIZATIONS:
        raise ValueError(f"attention_normalize must be one of {ATTENTION_NORMALIZATIONS}, got {mode!r}")
    return attention / scale.clamp(min=eps).view(-1, *([1] * (attention.dim() - 1)))
