"""The fit loop: Adam, deep supervision, early stopping on the validation loss, checkpoints to resume.

Huang et al. 2022, §3.1: Adam, batch 8, up to 200 epochs, early stopping; the hybrid loss on the coarse and the
final output (deep supervision, §2.7). :func:`fit` reads top to bottom like nanoGPT's loop; every other function
here is one step of it. Beyond the paper (this project's choices, see the README): a one-cycle learning-rate
schedule and a weight EMA for the short quick profile; bf16 autocast and channels_last on CUDA; with
``TrainConfig.fast`` (the full profile) the same steps by a faster route, :mod:`crlearn.training.fastpath`.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from crlearn.training import fastpath

from crlearn.training import perf
from crlearn.training.checkpoint import atomic_write_json, cpu_state, load_checkpoint, save_checkpoint
from crlearn.losses import deep_supervision_loss
from crlearn.metrics import confusion_counts, ratios_from_counts
from crlearn.training.config import TrainConfig
from crlearn.training.device import autocast, autocast_dtype, pick_device, to_device

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class WeightEMA:
    """An exponential moving average of a model's weights and BatchNorm running statistics.

    ``module`` is a copy of the model whose floating-point parameters and buffers follow
    ``ema = decay * ema + (1 - decay) * current`` after every :meth:`update` (the first update copies). The update
    is ``torch.optim.swa_utils.get_ema_multi_avg_fn``, the function ``AveragedModel`` applies, called on tensor
    lists gathered once instead of ``AveragedModel.update_parameters``, which walks the module tree again on every
    step (README, "Speed"). Integer buffers (BN's ``num_batches_tracked``) are not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.updates = 0
        self._update = get_ema_multi_avg_fn(decay)
        pairs = [(e, m) for e, m in zip(self._tensors(self.module), self._tensors(model)) if e.is_floating_point()]
        self._ema = [e for e, _ in pairs]  # the optimiser and BN update the model's tensors in place,
        self._src = [m for _, m in pairs]  # so these lists stay valid for the whole run

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return list(model.parameters()) + list(model.buffers())

    @torch.no_grad()
    def update(self) -> None:
        if self.updates == 0:
            for e, m in zip(self._ema, self._src):
                e.copy_(m)
        else:
            self._update(self._ema, self._src, self.updates)
        self.updates += 1


@dataclass
class FitState:
    """What the loop carries from epoch to epoch; ``last.pt`` stores it to resume."""

    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    best_loss: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None  # weights of the best epoch, on the CPU
    bad_epochs: int = 0  # epochs since the validation loss last improved
    start_epoch: int = 0

    def observe(self, val_loss: float, judged: nn.Module) -> bool:
        """Record an epoch's validation loss; True (and a snapshot of the weights) when it is the best so far."""
        if val_loss < self.best_loss:
            self.best_loss, self.bad_epochs, self.best_state = val_loss, 0, cpu_state(judged)
            return True
        self.bad_epochs += 1
        return False


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, device: torch.device, seed: int = 0) -> DataLoader:
    """A DataLoader; on CUDA with pinned memory and a few persistent workers, on CPU in-process (deterministic)."""
    cuda = device.type == "cuda"
    workers = min(4, (os.cpu_count() or 2) // 2) if cuda else 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                      pin_memory=cuda, num_workers=workers, persistent_workers=workers > 0, drop_last=False)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """One-cycle (warm-up, then cosine decay) for ``schedule="onecycle"``; ``None`` for the paper's constant lr."""
    if cfg.schedule != "onecycle":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                               pct_start=0.15, div_factor=10.0, final_div_factor=100.0)


def train_one_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, sched: Any, scaler: Any,
                    ema: WeightEMA | None, cfg: TrainConfig, device: torch.device, desc: str, progress: bool) -> float:
    """One pass over the training set (forward, loss, backward, step); returns the mean training loss."""
    model.train()
    dtype = autocast_dtype(device, cfg.amp)
    total, n = 0.0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = to_device(x, device), to_device(y, device)
        with autocast(device, dtype):
            loss = deep_supervision_loss(model(x), y, hybrid=cfg.hybrid)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if sched is not None:
            sched.step()
        if ema is not None:
            ema.update()
        total += float(loss.detach()) * len(x)
        n += len(x)
    return total / max(n, 1)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, cfg: TrainConfig,
             device: str | torch.device | None = None) -> tuple[float, float]:
    """Mean loss over a loader and the pooled Dice of the final output, all classes counted together."""
    device = pick_device(device)
    model.eval()
    dtype = autocast_dtype(device, cfg.amp)
    total, n, counts = 0.0, 0, torch.zeros(3, dtype=torch.int64)
    for x, y in loader:
        x, y = to_device(x, device), to_device(y, device)
        with autocast(device, dtype):
            out = model(x)
        total += float(deep_supervision_loss(out, y, hybrid=cfg.hybrid)) * len(x)
        n += len(x)
        c = confusion_counts(out.final.float() > 0, y > 0.5)
        counts += torch.stack([c["tp"].sum(), c["fp"].sum(), c["fn"].sum()]).cpu()
    return total / max(n, 1), float(ratios_from_counts(*counts)["dice"])


def save_epoch(run_dir: Path, state: FitState, judged: nn.Module, model: nn.Module, ema: WeightEMA | None,
               opt: torch.optim.Optimizer, sched: Any, cfg: TrainConfig, names: Sequence[str], epoch: int,
               improved: bool) -> None:
    """``best.pt`` when the epoch improved, ``last.pt`` (all needed to resume) and ``history.json`` always."""
    if improved:
        save_checkpoint(run_dir / "best.pt", judged, names, cfg, epoch=epoch, best_val_loss=state.best_loss)
    extra = {}
    if ema is not None:  # state_dict: the averaged weights; train_state_dict: the raw ones, to resume
        extra = dict(train_state_dict=cpu_state(model), ema_updates=ema.updates)
    save_checkpoint(run_dir / "last.pt", judged, names, cfg, epoch=epoch, optimizer=opt.state_dict(),
                    scheduler=sched.state_dict() if sched is not None else {}, history=state.history,
                    best_val_loss=state.best_loss, bad_epochs=state.bad_epochs, **extra)
    atomic_write_json(run_dir / "history.json", state.history)


def resume_state(path: str | Path, model: nn.Module, ema: WeightEMA | None, opt: torch.optim.Optimizer,
                 sched: Any) -> FitState:
    """Load a ``last.pt`` into the model, EMA, optimiser and scheduler; returns the loop's state to continue."""
    _, ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]))
    if ema is not None:
        ema.module.load_state_dict(ckpt["state_dict"])
        ema.updates = ckpt["ema_updates"]
    opt.load_state_dict(ckpt["optimizer"])
    if sched is not None and ckpt.get("scheduler"):
        sched.load_state_dict(ckpt["scheduler"])
    best = Path(path).with_name("best.pt")
    return FitState(history=ckpt["history"], best_loss=ckpt["best_val_loss"], bad_epochs=ckpt["bad_epochs"],
                    start_epoch=ckpt["epoch"] + 1,
                    best_state=load_checkpoint(best)[1]["state_dict"] if best.exists() else None)


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset, config: TrainConfig, class_names: Sequence[str],
        run_dir: str | Path | None = None, resume: str | Path | None = None,
        device: str | torch.device | None = None, progress: bool = True) -> dict[str, list[float]]:
    """Train with Adam and early stopping on the validation loss; returns the history.

    The history (epoch, train_loss, val_loss, val_dice, lr, seconds per epoch; ``stopped`` when it ended early)
    is a plain dict. With a ``run_dir``, ``best.pt`` (lowest validation loss), ``last.pt`` (all needed to resume)
    and ``history.json`` are written atomically after every epoch; ``resume`` continues the run of a ``last.pt``
    (on the CPU with the same numbers as an uninterrupted run). With ``config.ema`` the averaged model
    (:class:`WeightEMA`) is the one validated, checkpointed and returned: with batch 8 on a small set the raw
    model's BN statistics are noisy. At the end ``model`` holds the best weights. On CUDA it turns on
    ``torch.backends.cudnn.benchmark`` (process-wide; every batch has the same size). ``config.fast`` other than
    ``"off"`` trains the same batches through :mod:`crlearn.training.fastpath` (:class:`~crlearn.training.fastpath.DeviceBatches` and
    :class:`~crlearn.training.fastpath.FastEpoch` in place of :func:`make_loader` and :func:`train_one_epoch`).
    """
    device, cfg = pick_device(device), config
    seed_everything(cfg.seed)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    model.to(device=device, memory_format=torch.channels_last)
    perf.apply_to_model(model, device)
    perf.keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN time and keep its fastest kernels
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    fast = cfg.fast != "off"  # the same batches and steps by a faster route: data on the device, a CUDA graph
    train_loader = (fastpath.DeviceBatches if fast else make_loader)(train_set, cfg.batch_size, True, device, cfg.seed)
    train_epoch = fastpath.FastEpoch() if fast else train_one_epoch
    val_loader = make_loader(val_set, cfg.batch_size, False, device)
    sched = make_scheduler(opt, cfg, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(device, cfg.amp) == torch.float16)
    ema = WeightEMA(model, cfg.ema) if cfg.ema is not None else None
    judged = ema.module if ema is not None else model  # the model that is validated and kept
    state = resume_state(resume, model, ema, opt, sched) if resume is not None else FitState()

    t0 = time.perf_counter() - sum(state.history["seconds"])
    epochs = tqdm(range(state.start_epoch, cfg.epochs), desc="epochs", disable=not progress,
                  initial=state.start_epoch, total=cfg.epochs)
    for epoch in epochs:
        train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)  # batch order depends on (seed, epoch) only
        t_epoch = time.perf_counter()
        train_loss = train_epoch(model, train_loader, opt, sched, scaler, ema, cfg, device, f"epoch {epoch + 1}",
                                 progress)
        val_loss, val_dice = validate(judged, val_loader, cfg, device)
        for key, value in zip(HISTORY_KEYS, (epoch + 1, train_loss, val_loss, val_dice, opt.param_groups[0]["lr"],
                                             time.perf_counter() - t_epoch)):
            state.history[key].append(value)
        epochs.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}", dice=f"{val_dice:.3f}")
        improved = state.observe(val_loss, judged)
        if run_dir is not None:
            save_epoch(run_dir, state, judged, model, ema, opt, sched, cfg, class_names, epoch, improved)
        out_of_time = cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes
        if state.bad_epochs >= cfg.patience or out_of_time:
            state.history["stopped"] = [epoch + 1]
            break
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return state.history
