"""Joint training of the fusion network and the segmenter (Sec. IV-A), with resumable, atomic checkpoints.

Stage 1 (optional, ``train.segmenter_pretrain_epochs``): the segmenter alone on the source images.
Stage 2: fusion network and segmenter together under L_total (Eq. 16), Adam, lr halved every 10 epochs.

Repeatability: at the start of every epoch all generators are re-seeded from (seed, phase, epoch) and the
dataset's crops are a function of (seed, epoch, index), so an epoch depends only on the state at its start;
resuming from an end-of-epoch checkpoint therefore replays exactly what an uninterrupted run does (CPU).
DDP: started by ``torchrun``; rank 0 alone logs and writes checkpoints; the sampler is distributed.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from data.datasets import build_dataset
from engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    migrate_model_state,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    segmenter_state,
    state_mismatch,
)
from engine.compile import compile_fusion
from engine.config import save_config
from engine.run_folder import RunFolderError, RunFolderLock, clear_run, existing_run_files
from engine.runtime import autocast_context, init_distributed, resolve_device, seed_everything
from engine.validation import evaluate_model
from losses import LossSettings, UAAFusionLoss, segmentation_loss
from losses.class_weights import resolve_seg_class_weights
from models.uaafusion import UAAFusion, UAAFusionOutput, build_model

log = logging.getLogger("uaafusion.train")

PHASES = ("pretrain", "joint")


class NonFiniteError(RuntimeError):
    """Training cannot go on with finite numbers (train.py exit code 3); no checkpoint of NaN/Inf weights is written."""


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN/Inf and ``train.on_nonfinite_loss`` is ``stop``, or every loss of an epoch was."""


class NonFiniteWeightsError(NonFiniteError):
    """The weights became NaN/Inf (after an optimiser step), or a checkpoint of such weights was about to be written."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a resumable ``last.pt`` was written after the step in progress."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted by signal {signum}; state saved to {checkpoint} "
                         f"(continue with: train.py --resume {checkpoint.parent})")
        self.signum = signum


class JointModel(nn.Module):
    """One forward for everything a training step needs, so DDP sees a single call per step."""

    def __init__(self, model: UAAFusion, seg_sources: list[str]) -> None:
        super().__init__()
        self.model = model
        self.seg_sources = seg_sources

    def forward(self, ir, vi, labels) -> tuple[UAAFusionOutput, dict[str, torch.Tensor]]:
        out = self.model(ir, vi, labels)
        images = {"ir": ir, "vi": vi, "fused": out.fused}
        seg = {name: self.model.segmenter(images[name]) for name in self.seg_sources}
        return out, seg


# ---------------------------------------------------------------------------------------------- trainer


def dataset_config(data: dict) -> dict:
    """The ``build_dataset`` keys that a run's ``data`` config block fixes for both splits (layout, folders, labels,
    patch filtering); mode, crops, seed and toning are added by the caller."""
    keys = ("name", "root", "ir_dir", "vi_dir", "label_dir", "ignore_index", "num_classes", "min_spread",
            "contrast_relative_to", "cache", "strict")
    return {k: data[k] for k in keys if data.get(k) is not None}


class Trainer:
    """Runs both training stages from a resolved config; see the module docstring."""

    def __init__(self, cfg: dict, run_dir: str | Path, resume: bool = False, show_progress: bool = True,
                 overwrite: bool = False) -> None:
        """Raises RunFolderError when the folder is busy, holds another run (without ``overwrite``) or holds
        nothing to resume; FileNotFoundError/ValueError for data problems; CheckpointError for a bad last.pt."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.stop_signal: int | None = None
        self.dist = init_distributed(cfg["device"])
        if not self.dist.is_main:  # one copy of every message: the other ranks report problems only
            logging.getLogger("uaafusion").setLevel(logging.WARNING)
        self.lock = RunFolderLock(self.run_dir).acquire() if self.dist.is_main else None
        try:
            self._setup(cfg, resume, show_progress, overwrite)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _setup(self, cfg: dict, resume: bool, show_progress: bool, overwrite: bool) -> None:
        if self.dist.is_main:
            found = existing_run_files(self.run_dir)
            if resume and not any(f in found for f in ("last.pt", "last.prev.pt")):
                raise RunFolderError(f"nothing to resume in {self.run_dir}: no last.pt (start a new run with "
                                     f"--run-dir {self.run_dir})")
            if not resume and found and not overwrite:
                raise RunFolderError(f"run folder {self.run_dir} already holds a run ({', '.join(found)}); continue "
                                     f"it with --resume {self.run_dir}, or start over with --overwrite")
            if not resume and found:
                log.warning("--overwrite: removing the previous run in %s (%s)", self.run_dir,
                            ", ".join(clear_run(self.run_dir)))
        self.device = resolve_device(cfg["device"])
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.show_progress = show_progress and self.dist.is_main
        self.tcfg = cfg["train"]
        seed_everything(cfg["seed"])

        data_cfg = self._dataset_cfg()
        sampling = {k: cfg["data"][k] for k in ("mode", "flips", "vertical_flips", "scale_range", "crops_per_scene",
                                                "patch_size", "ir_tone_reference")}
        self.train_set = build_dataset({**data_cfg, **sampling, "seed": cfg["seed"]}, cfg["data"]["train_split"])
        if not self.train_set.has_labels:
            raise ValueError(f"training needs segmentation labels; {self.train_set!r} has none")
        self.num_classes = cfg["data"]["num_classes"] or self.train_set.num_classes
        self.val_set = self._build_val_set(data_cfg)

        # a segmenter file replaces every segmenter weight, so the encoder's start (a package, a download, a local
        # file) is not read; the random draws are the same either way, so runs repeat as before
        replaced = bool(self.tcfg["segmenter_checkpoint"])
        if replaced and cfg["segmenter"]["encoder_weights"] not in (None, "", "none"):
            log.info("segmenter.encoder_weights (%s) not read: train.segmenter_checkpoint replaces the segmenter",
                     cfg["segmenter"]["encoder_weights"])
        self.model = build_model(cfg, self.num_classes, encoder_weights=not replaced).to(self.device)
        # the live segmenter (L_seg, stage 1) trains in channels-last layout, as the fusion network and the scoring
        # copy run: the same function, and EfficientNet-Lite0 trains 1.7x faster so at 256² on the CPU (D10)
        self.model.segmenter.to(memory_format=torch.channels_last)
        if self.tcfg["init_checkpoint"]:
            self._load_model(self.tcfg["init_checkpoint"])
        if self.tcfg["segmenter_checkpoint"]:
            self._load_segmenter(self.tcfg["segmenter_checkpoint"])
        if self.tcfg["compile"]:  # one graph per stage at the fixed patch size; eager where no compiler works
            compile_fusion(self.model.fusion, self.device, dynamic=False)
        loss_settings = LossSettings(**cfg["loss"], ignore_index=cfg["data"]["ignore_index"])
        self.criterion = UAAFusionLoss(loss_settings, self._seg_class_weights(loss_settings))
        self.joint = JointModel(self.model, loss_settings.seg_sources)
        self.ddp_joint = self.joint
        if self.dist.enabled:
            self.ddp_joint = nn.parallel.DistributedDataParallel(
                self.joint, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.optimizers, self.schedulers = self._build_optimizers()
        self._clip_groups()  # an unknown train.grad_clip_scope fails here, before any work
        if self.tcfg["segmenter_batchnorm"] not in ("train", "frozen"):
            raise ValueError("train.segmenter_batchnorm must be 'train' or 'frozen', "
                             f"not {self.tcfg['segmenter_batchnorm']!r}")
        self.pretrain_optimizer = torch.optim.Adam(self.model.segmenter.parameters(), lr=self.tcfg["segmenter_lr"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] == "fp16" and self.device.type == "cuda")

        given_segmenter = self.tcfg["segmenter_checkpoint"] or self.tcfg["init_checkpoint"]
        pretrain = self.tcfg["segmenter_pretrain_epochs"] > 0 and not given_segmenter
        self.phase = "pretrain" if pretrain else "joint"  # a given segmenter (or whole model) replaces stage 1
        self.epoch = 0  # completed epochs in the current phase
        self.step_in_epoch = 0  # steps done in the current (joint) epoch; > 0 only in mid-epoch checkpoints
        self.epoch_sums: dict[str, float] = {}  # running loss sums of the current epoch (and "_done" count)
        self.global_step = 0
        self.best_metric = -math.inf
        self.nonfinite_steps = 0
        self.history: list[dict[str, Any]] = []
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp"):  # left by a process killed while writing
                stale.unlink()
            save_config(cfg, self.run_dir / "config.yaml")
        if resume:
            self.resume(self.run_dir / "last.pt")
        self.writer = None
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))

    # ----------------------------------------------------------------------------------------- building

    def _dataset_cfg(self) -> dict:
        return dataset_config(self.cfg["data"])

    def _seg_class_weights(self, settings: LossSettings) -> torch.Tensor | None:
        """L_seg's class weights (``loss.seg_class_weights``, an extension); ``median`` uses the class pixel counts
        of the training labels, which the dataset scans when it is built."""
        value = settings.seg_class_weights
        if value is None:
            return None
        scan = self.train_set.label_scan or self.train_set._scan_labels()
        weights = resolve_seg_class_weights(value, self.num_classes, scan.class_pixels)
        log.info("L_seg class weights (%s, not in the paper): %s", value if isinstance(value, str) else "given",
                 [round(float(w), 3) for w in weights])
        return weights

    def _build_val_set(self, data_cfg: dict):
        d = self.cfg["data"]
        split = d["val_split"]
        if not split or d["val_pairs"] <= 0:
            return None
        if d["val_root"] or d["val_name"]:  # another dataset (e.g. train on MFNet, validate on MSRS test scenes)
            data_cfg = {**data_cfg, "name": d["val_name"] or d["name"], "root": d["val_root"] or d["root"]}
        try:
            dataset = build_dataset({**data_cfg, "mode": "full"}, split)
        except (ValueError, FileNotFoundError) as err:
            log.warning("no validation set (%s); validation is skipped", err)
            return None
        count = min(self.cfg["data"]["val_pairs"], len(dataset))
        return Subset(dataset, list(range(count)))

    def _build_optimizers(self):
        t = self.tcfg
        fusion_params = list(self.model.fusion.parameters())
        seg_params = list(self.model.segmenter.parameters())
        if t["separate_segmenter_optimizer"]:
            optimizers = {"fusion": torch.optim.Adam(fusion_params, lr=t["lr"]),
                          "segmenter": torch.optim.Adam(seg_params, lr=t["segmenter_lr"])}
        else:
            optimizers = {"joint": torch.optim.Adam(fusion_params + seg_params, lr=t["lr"])}
        schedulers = {name: torch.optim.lr_scheduler.StepLR(opt, t["lr_step_epochs"], t["lr_gamma"])
                      for name, opt in optimizers.items()}
        return optimizers, schedulers

    def _clip_groups(self) -> list[list[nn.Parameter]]:
        """The parameter sets whose gradient norms ``train.grad_clip`` bounds: all parameters together (``all``),
        or each optimizer's own (``optimizer``), so that a large segmentation gradient does not shrink the
        fusion network's step."""
        scope = self.tcfg["grad_clip_scope"]
        if scope == "all":
            return [list(self.model.parameters())]
        if scope == "optimizer":
            return [[p for group in opt.param_groups for p in group["params"]] for opt in self.optimizers.values()]
        raise ValueError(f"train.grad_clip_scope must be 'all' or 'optimizer', not {scope!r}")

    def _load_segmenter(self, path: str) -> None:
        if not Path(path).is_file():
            raise CheckpointError(
                f"train.segmenter_checkpoint {path} does not exist: write it first with "
                f"python -m scripts.pretrain_segmenter ... --save {path} (the config's header has the command), "
                "or set train.segmenter_checkpoint=null to pre-train inside the run (train.segmenter_pretrain_epochs)")
        state = segmenter_state(load_checkpoint(path, map_location=self.device))
        try:
            self.model.segmenter.load_state_dict(state)
        except RuntimeError:
            raise CheckpointError(f"train.segmenter_checkpoint {path} does not fit the segmenter built from the "
                                  f"config: {state_mismatch(self.model.segmenter, state, self.num_classes)}") from None
        log.info("segmenter initialised from %s", path)

    def _load_model(self, path: str) -> None:
        """Both networks' weights from a model file (``train.init_checkpoint``); nothing else of it is used."""
        payload = load_checkpoint(path, map_location=self.device)
        if "model" not in payload:
            raise CheckpointError(f"train.init_checkpoint {path} holds no model weights (no 'model' entry); give a "
                                  "file written by train.py, scripts.export_model or "
                                  "scripts/convert_release_checkpoint.py")
        what = f"train.init_checkpoint {path}"
        if self.tcfg["segmenter_checkpoint"]:  # replaced next, so the file's segmenter may differ (another encoder)
            state = migrate_model_state(payload["model"])
            fusion_state = {k[len("fusion."):]: v for k, v in state.items() if k.startswith("fusion.")}
            load_model_state(self.model.fusion, fusion_state, f"{what} (its fusion network)")
            log.info("fusion network initialised from %s (its segmenter is replaced by train.segmenter_checkpoint); "
                     "optimisers and schedule start afresh", path)
            return
        load_model_state(self.model, payload["model"], what, self.num_classes)
        log.info("model (fusion network and segmenter) initialised from %s; optimisers and schedule start afresh",
                 path)

    def _loader(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """The epoch's batches in a fixed order given (seed, epoch), starting at batch ``start_batch``."""
        self.train_set.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.cfg["seed"] * 100_003 + epoch)
        if self.dist.enabled:
            sampler = DistributedSampler(self.train_set, self.dist.world_size, self.dist.rank,
                                         shuffle=True, seed=self.cfg["seed"], drop_last=True)
            sampler.set_epoch(epoch)
            if start_batch:
                log.warning("DDP resumes at the start of the interrupted epoch (mid-epoch resume is single-process)")
        else:
            order = torch.randperm(len(self.train_set), generator=generator).tolist()
            sampler = order[start_batch * self.tcfg["batch_size"]:]
        return DataLoader(self.train_set, batch_size=self.tcfg["batch_size"], sampler=sampler, drop_last=True,
                          num_workers=self.cfg["data"]["num_workers"], generator=generator,
                          pin_memory=self.device.type == "cuda")

    # ---------------------------------------------------------------------------------------- checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "pretrain_optimizer": self.pretrain_optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "phase": self.phase,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_sums": self.epoch_sums,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "nonfinite_steps": self.nonfinite_steps,
            "history": self.history,
            "config": self.cfg,
            "seed": self.cfg["seed"],
            "num_classes": self.num_classes,
            "class_names": list(getattr(self.train_set, "class_names", [])),
            "rng": rng_states(),
        }

    def save(self, name: str) -> None:
        """Write a checkpoint atomically (rank 0); the previous ``last.pt`` is kept as ``last.prev.pt``."""
        if not self.dist.is_main:
            return
        target = self.run_dir / name
        bad = self.nonfinite_weight()
        if bad is not None:
            raise NonFiniteWeightsError(f"refusing to write {target}: the weights are NaN/Inf (first: '{bad}')")
        if name == "last.pt" and target.exists():
            os.replace(target, self.run_dir / "last.prev.pt")
        save_checkpoint(target, self.state())

    def _load_resumable(self, path: Path) -> dict[str, Any]:
        """``path``, or ``last.prev.pt`` beside it when ``path`` is missing, truncated or corrupted."""
        try:
            return load_checkpoint(path, map_location=self.device)
        except CheckpointError as err:
            previous = path.with_name("last.prev.pt")
            if not previous.exists():
                raise
            log.warning("%s; resuming from the previous checkpoint %s instead", err, previous)
            return load_checkpoint(previous, map_location=self.device)

    RESUME_KEYS = ("model", "optimizers", "schedulers", "pretrain_optimizer", "scaler", "phase", "epoch",
                   "global_step", "best_metric", "rng")

    def resume(self, path: Path) -> None:
        payload = self._load_resumable(path)
        missing = [k for k in self.RESUME_KEYS if k not in payload]
        if missing:
            raise CheckpointError(f"checkpoint {path} cannot resume a run: it lacks {', '.join(missing)} (a model-only "
                                  "checkpoint, such as a shipped one, can be fused with test.py but not resumed)")
        load_model_state(self.model, payload["model"], f"checkpoint {path}", self.num_classes, "the run's config")
        try:
            for k, o in self.optimizers.items():
                o.load_state_dict(payload["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(payload["schedulers"][k])
            self.pretrain_optimizer.load_state_dict(payload["pretrain_optimizer"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path}: its optimiser state does not fit this run's optimisers "
                                  f"({type(err).__name__}: {err}); was train.separate_segmenter_optimizer "
                                  "changed?") from None
        self.scaler.load_state_dict(payload["scaler"])
        self.phase, self.epoch = payload["phase"], payload["epoch"]
        self.step_in_epoch = payload.get("step_in_epoch", 0)
        self.epoch_sums = payload.get("epoch_sums", {})
        self.global_step, self.best_metric = payload["global_step"], payload["best_metric"]
        self.nonfinite_steps = payload.get("nonfinite_steps", 0)
        self.history = payload.get("history", [])
        restore_rng_states(payload["rng"])
        log.info("resumed from %s: phase %s, %d epoch%s done, step %d", path, self.phase, self.epoch,
                 "" if self.epoch == 1 else "s", self.global_step)

    # ------------------------------------------------------------------------------------------- loops

    def nonfinite_weight(self) -> str | None:
        """The name of the first parameter or buffer of the model holding NaN/Inf, or None (one sync per call)."""
        tensors = [(name, t) for name, t in self.model.state_dict().items() if torch.is_floating_point(t)]
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
        if bool(finite.all()):
            return None
        return tensors[int((~finite).nonzero()[0, 0])][0]

    def _check_weights(self, where: str) -> None:
        """After an optimiser step: stop (exit 3) when it made the weights NaN/Inf, before anything saves them."""
        bad = self.nonfinite_weight()
        if bad is not None:
            saved = self.run_dir / "last.pt"
            kept = f"{saved} holds the last finite state" if saved.exists() else "no checkpoint was written"
            raise NonFiniteWeightsError(f"the weights became NaN/Inf at {where} (first: '{bad}'; check the learning "
                                        f"rate and the data); stopped, {kept}")

    @property
    def finished(self) -> bool:
        """All epochs of both stages are done."""
        return self.phase == "joint" and self.epoch >= self.tcfg["epochs"] and self.step_in_epoch == 0

    def request_stop(self, signum: int) -> None:
        """Ask the loops to save and stop after the step in progress (called from a signal handler)."""
        self.stop_signal = signum

    def _stop_if_requested(self) -> None:
        if self.stop_signal is not None:
            self.save("last.pt")
            raise TrainingInterrupted(self.stop_signal, self.run_dir / "last.pt")

    def fit(self) -> list[dict[str, Any]]:
        """Run what is left of both stages; returns the per-epoch history (unchanged when already finished)."""
        try:
            self._fit()
        finally:
            if self.writer is not None:
                self.writer.close()
            if self.lock is not None:
                self.lock.release()
        return self.history

    def _fit(self) -> None:
        pre_epochs = self.tcfg["segmenter_pretrain_epochs"]
        if self.phase == "pretrain":  # stage 1 (skipped when train.segmenter_checkpoint is given)
            while self.epoch < pre_epochs:
                if self.step_in_epoch == 0:
                    self._start_epoch("pretrain", self.epoch)
                stats = self.pretrain_one_epoch(self.epoch)
                self.epoch += 1
                self.step_in_epoch, self.epoch_sums = 0, {}
                self._end_epoch("pretrain", stats)
                self._stop_if_requested()
            self.phase, self.epoch = "joint", 0
            self.save("last.pt")
        while self.epoch < self.tcfg["epochs"]:
            if self.step_in_epoch == 0:  # a mid-epoch resume continues with the restored generator states
                self._start_epoch("joint", self.epoch)
            stats = self.train_one_epoch(self.epoch)
            for scheduler in self.schedulers.values():
                scheduler.step()
            self.epoch += 1
            self.step_in_epoch, self.epoch_sums = 0, {}
            if self.val_set is not None and (self.epoch % self.tcfg["val_every"] == 0
                                             or self.epoch == self.tcfg["epochs"]):
                stats.update(self.validate())
            self._end_epoch("joint", stats)
            self._stop_if_requested()

    def _start_epoch(self, phase: str, epoch: int) -> None:
        seed_everything(self.cfg["seed"] * 1_000_003 + PHASES.index(phase) * 10_007 + epoch)

    def _end_epoch(self, phase: str, stats: dict[str, float]) -> None:
        record = {"phase": phase, "epoch": self.epoch, "step": self.global_step, **stats}
        self.history.append(record)
        metric = stats.get("val_miou", stats.get("val_fused_miou", -stats.get("loss_total", math.inf)))
        is_best = phase == "joint" and metric > self.best_metric
        if is_best:
            self.best_metric = metric
        self.save("last.pt")
        if is_best or (phase == "joint" and not (self.run_dir / "best.pt").exists()):
            self.save("best.pt")
        if self.dist.is_main:
            log.info("%s epoch %d: %s", phase, self.epoch,
                     ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if isinstance(v, float)))

    def _batch_to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ir = batch["ir"].to(self.device, non_blocking=True)
        vi = batch["vi"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True).long()
        return ir, vi, labels

    def _steps_in(self, loader: DataLoader) -> int:
        limit = self.tcfg["max_steps_per_epoch"]
        return len(loader) if limit is None else min(limit, len(loader))

    def pretrain_one_epoch(self, epoch: int) -> dict[str, float]:
        """Stage 1: the segmenter alone, cross-entropy on both source images (from ``step_in_epoch`` on)."""
        self.model.train()
        steps = self._steps_in(self._loader(epoch))
        start = self.step_in_epoch if not self.dist.enabled else 0
        loader = self._loader(epoch, start)
        sums = self.epoch_sums if start else {}
        loss_cfg = self.criterion.settings
        bar = tqdm(total=steps, initial=start, desc=f"pretrain {epoch + 1}", disable=not self.show_progress,
                   leave=False)
        for step, batch in enumerate(loader, start=start):
            if step >= steps:
                break
            ir, vi, labels = self._batch_to_device(batch)
            with autocast_context(self.cfg["amp"], self.device):
                outs = [self.model.segmenter(ir), self.model.segmenter(vi)]
            loss = segmentation_loss(outs, labels, loss_cfg.ignore_index, loss_cfg.ignore_classes,
                                     self.criterion.class_weights)
            self.pretrain_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.pretrain_optimizer.step()
            self._check_weights(f"pre-training epoch {epoch + 1}, step {step + 1}")
            sums["pretrain_ce"] = sums.get("pretrain_ce", 0.0) + float(loss.detach())
            self.step_in_epoch, self.epoch_sums = step + 1, sums
            bar.update(1)
            bar.set_postfix(ce=f"{float(loss.detach()):.3f}")
            if self.step_in_epoch < steps:
                self._stop_if_requested()
        bar.close()
        return {"pretrain_ce": sums.get("pretrain_ce", 0.0) / max(steps, 1)}

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Stage 2: one epoch of joint training (from ``step_in_epoch`` on); returns mean loss terms.

        With ``train.checkpoint_every_steps`` set, ``last.pt`` is also written every that many steps, so a
        killed run resumes mid-epoch (single process) exactly where it stopped.
        """
        self.model.train()
        if self.tcfg["segmenter_batchnorm"] == "frozen":  # keep the running statistics the segmenter came with
            for layer in self.model.segmenter.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()
        steps = self._steps_in(self._loader(epoch))
        start = self.step_in_epoch if not self.dist.enabled else 0
        loader = self._loader(epoch, start)
        sums = self.epoch_sums if start else {}
        every = self.tcfg["checkpoint_every_steps"]
        bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{self.tcfg['epochs']}",
                   disable=not self.show_progress, leave=False)
        for step, batch in enumerate(loader, start=start):
            if step >= steps:
                break
            terms, out = self.train_step(batch)
            self.global_step += 1
            self.step_in_epoch = step + 1
            bar.update(1)
            if terms is not None:
                sums["_done"] = sums.get("_done", 0.0) + 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{terms['total']:.4f}")
                self._log_step(terms, out, batch)
            self.epoch_sums = sums
            if every and self.step_in_epoch % every == 0 and self.step_in_epoch < steps:
                self.save("last.pt")
            if self.step_in_epoch < steps:
                self._stop_if_requested()
        bar.close()
        done = sums.pop("_done", 0.0)
        if not done:  # nothing was learnt: no end-of-epoch checkpoint, no "done"
            if not steps:
                raise ValueError(f"epoch {epoch + 1} has no batch to train on: the training set gives fewer samples "
                                 f"than train.batch_size ({self.tcfg['batch_size']})")
            raise NonFiniteLossError(f"every loss of epoch {epoch + 1} was NaN/Inf ({steps} step(s) skipped): no "
                                     "optimiser step was taken; stopped without writing the epoch's checkpoint")
        return {f"loss_{k}": v / max(done, 1) for k, v in sums.items()}

    def train_step(self, batch: dict) -> tuple[dict[str, float] | None, UAAFusionOutput | None]:
        """One optimisation step; returns (loss terms as floats, outputs) or (None, None) for a skipped step."""
        ir, vi, labels = self._batch_to_device(batch)
        with autocast_context(self.cfg["amp"], self.device):
            out, seg = self.ddp_joint(ir, vi, labels)
            terms = self.criterion(out.fused, ir, vi, out.w_ir, out.w_vi, seg, labels)
        total = terms["total"]
        if not torch.isfinite(total):
            self.nonfinite_steps += 1
            values = {k: float(v.detach()) for k, v in terms.items()}
            message = f"non-finite loss at step {self.global_step + 1}: {values}"
            if self.tcfg["on_nonfinite_loss"] == "stop":
                self.save("last.pt")
                raise NonFiniteLossError(message + f"; stopped, state saved to {self.run_dir / 'last.pt'}")
            log.warning("%s; step skipped (%d so far)", message, self.nonfinite_steps)
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            return None, None
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.tcfg["grad_clip"]:
            for opt in self.optimizers.values():
                self.scaler.unscale_(opt)
            for params in self._clip_groups():
                nn.utils.clip_grad_norm_(params, self.tcfg["grad_clip"])
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        self._check_weights(f"step {self.global_step + 1}")
        return {k: float(v.detach()) for k, v in terms.items()}, out

    # ------------------------------------------------------------------------------------------ logging

    def _log_step(self, terms: dict[str, float], out: UAAFusionOutput, batch: dict) -> None:
        if self.writer is None:
            return
        step = self.global_step
        if step % self.tcfg["log_every"] == 0 or step == 1:
            for k, v in terms.items():
                self.writer.add_scalar(f"loss/{k}", v, step)
            for name, opt in self.optimizers.items():
                self.writer.add_scalar(f"lr/{name}", opt.param_groups[0]["lr"], step)
            for k, rho in enumerate(self.model.fusion.rho.detach().cpu().tolist()):
                self.writer.add_scalar(f"rho/stage{k + 1}", rho, step)
        if step % self.tcfg["image_log_every"] == 0 or step == 1:
            self.writer.add_images("train/ir", batch["ir"][:4], step)
            self.writer.add_images("train/vi", batch["vi"][:4], step)
            self.writer.add_images("train/fused", out.fused[:4].detach().float().clamp(0, 1).cpu(), step)
            self.writer.add_images("train/w_ir", out.w_ir[:4].cpu(), step)
            self.writer.add_images("train/w_vi", out.w_vi[:4].cpu(), step)
            for k, att in enumerate(out.attention):
                self.writer.add_images(f"train/attention_stage{k + 1}", normalise_map(att[:4]).cpu(), step)

    # ---------------------------------------------------------------------------------------- validation

    def validate(self) -> dict[str, Any]:
        """Fusion metrics and segmenter mIoU on the validation pairs (:func:`engine.validation.evaluate_model`)."""
        with torch.compiler.set_stance("force_eager"):  # whole images of other sizes: no recompiling
            stats = evaluate_model(self.model, self.val_set, self.num_classes, self.device,
                                   self.cfg["data"]["ignore_index"], tile=self.cfg["test"]["tile"],
                                   amp=self.cfg["amp"], show_progress=self.show_progress)
        self.model.train()
        stats = {f"val_{k}": v for k, v in stats.items() if k != "per_image"}
        if self.writer is not None:
            for k, v in stats.items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"val/{k[4:]}", v, self.global_step)
        return stats


def normalise_map(x: torch.Tensor) -> torch.Tensor:
    """Scale each (1, H, W) map of a batch to [0, 1] for display."""
    flat = x.detach().float().flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    return ((flat - lo[:, None]) / (hi - lo).clamp(min=1e-12)[:, None]).view_as(x)
