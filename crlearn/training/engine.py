"""The fit loop: Adam, deep supervision, early stopping on the validation loss, checkpoints to resume.

Huang et al. 2022, §3.1: Adam, batch 8, up to 200 epochs, early stopping; the hybrid loss on the coarse and the
final output (deep supervision, §2.7). :func:`fit` reads top to bottom like nanoGPT's loop; every other function
here is one step of it. Beyond the paper (this project's choices, see the README): a one-cycle learning-rate
schedule and a weight EMA for the short quick profile; bf16 autocast and channels_last on CUDA (and the training
step's bf16 autocast on a CPU with bf16 instructions, ``TrainConfig.cpu_amp``); with
``TrainConfig.fast`` (the full profile) the same steps by a faster route, :mod:`crlearn.training.fastpath`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from crlearn.training import distributed, fastpath

from crlearn.training import perf
from crlearn.training.checkpoint import atomic_write_json, cpu_state, load_checkpoint, save_checkpoint
from crlearn.losses import deep_supervision_loss
from crlearn.metrics import confusion_counts, ratios_from_counts
from crlearn.nn.model import mask_cut, mask_threshold
from crlearn.training.config import TrainConfig
from crlearn.training.device import autocast, autocast_dtype, pick_device, to_device

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")
EPOCH_SEED = 100_003  # epoch e of a run with seed s draws its batch order from s * EPOCH_SEED + e


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Inside the block torch's generators are seeded with ``seed``; on leaving, the caller's generator states are
    restored (``torch.random.fork_rng``), so a library call never reseeds the caller's process."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on CUDA (fixed input size: let cuDNN time and keep its fastest kernels) inside the block,
    the caller's setting restored on leaving."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


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
        """Record an epoch's validation loss; True (and a snapshot of the weights) when it is the best so far.
        NaN means no validation set (training on every patient): every epoch is kept, so the last one is the model."""
        if math.isnan(val_loss) or val_loss < self.best_loss:
            self.best_loss, self.bad_epochs, self.best_state = val_loss, 0, cpu_state(judged)
            return True
        self.bad_epochs += 1
        return False


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, device: torch.device, seed: int = 0,
                sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader; on CUDA with pinned memory and a few persistent workers, on CPU in-process (deterministic).

    ``sampler`` (e.g. a ``DistributedSampler``) chooses and orders the samples instead of ``shuffle``.
    """
    cuda = device.type == "cuda"
    workers = min(4, (os.cpu_count() or 2) // 2) if cuda else 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=torch.Generator().manual_seed(seed), pin_memory=cuda, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=False)


def make_loaders(train_set: Dataset, val_set: Dataset, cfg: TrainConfig,
                 device: torch.device) -> tuple[DataLoader | fastpath.DeviceBatches, DataLoader]:
    """The training batches and the validation loader of :func:`fit`.

    One process: a shuffled DataLoader (or with ``cfg.fast`` the fast path's
    :class:`~crlearn.training.fastpath.DeviceBatches`).
    Under ``torchrun`` (:mod:`crlearn.training.distributed`): this rank's share, ``cfg.batch_size / N`` samples of
    every global batch from a ``DistributedSampler``, and every N-th validation sample.
    """
    if not distributed.active():
        train = (fastpath.DeviceBatches if cfg.fast != "off" else make_loader)(train_set, cfg.batch_size, True, device,
                                                                              cfg.seed)
        return train, make_loader(val_set, cfg.batch_size, False, device)
    sampler = distributed.train_sampler(train_set, seed=cfg.seed * EPOCH_SEED)
    return (make_loader(train_set, distributed.per_rank_batch(cfg.batch_size), True, device, sampler=sampler),
            make_loader(distributed.val_shard(val_set), cfg.batch_size, False, device))


def start_epoch(loader: DataLoader | fastpath.DeviceBatches, seed: int, epoch: int) -> None:
    """The batch order depends on ``(seed, epoch)`` only: reseed the loader's generator, or under ``torchrun`` set the
    ``DistributedSampler``'s epoch (its order is drawn from ``seed * EPOCH_SEED + epoch`` the same way)."""
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)
    else:
        loader.generator.manual_seed(seed * EPOCH_SEED + epoch)


def replicas(model: nn.Module, device: torch.device, cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """``(the model that trains, what the training step calls)``: ``model`` twice in one process; under ``torchrun``
    a copy the engine owns with synchronised BatchNorm, and its ``DistributedDataParallel`` wrapper."""
    if not distributed.active():
        return model, model
    if cfg.fast != "off":
        raise ValueError(f"fast={cfg.fast!r} (the full profile's CUDA-graph step, crlearn.training.fastpath) does not "
                         "compose with DistributedDataParallel under torchrun: a captured graph replays one process's "
                         "step without DDP's gradient all-reduce; train with fast='off' (crlearn train --fast off)")
    trained = distributed.sync_batchnorm(copy.deepcopy(model), device)
    return trained, distributed.wrap(trained, device)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """One-cycle (warm-up, then cosine decay) for ``schedule="onecycle"``; ``None`` for the paper's constant lr."""
    if cfg.schedule != "onecycle":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                               pct_start=0.15, div_factor=10.0, final_div_factor=100.0)


def train_one_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, sched: Any, scaler: Any,
                    ema: WeightEMA | None, cfg: TrainConfig, device: torch.device, desc: str, progress: bool,
                    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float:
    """One pass over the training set (forward, loss, backward, step); returns the mean training loss.

    The loss is summed on the device and read once, at the end of the epoch (as nanoGPT reads ``loss.item()`` only
    every ``log_interval``): a read after every step would make the CPU wait for the GPU before queueing the next.
    ``step`` (:func:`crlearn.training.fastpath.make_step`: the same step as one CUDA graph, or ``torch.compile``d)
    replaces the four lines of the eager step below; the batches, scheduler and EMA updates stay the same.
    """
    model.train()
    dtype = autocast_dtype(device, cfg.amp, cpu=cfg.cpu_amp)  # validate() below: float32 on a CPU
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = to_device(x, device), to_device(y, device)
        if step is None:  # the eager step, the one to read
            with autocast(device, dtype):
                loss = deep_supervision_loss(model(x), y, hybrid=cfg.hybrid)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss = step(x, y)
        if sched is not None:
            sched.step()
        if ema is not None:
            ema.update()
        total += loss.detach().double() * len(x)
        n += len(x)
    return float(total) / max(n, 1)  # the epoch's one read of the device


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, cfg: TrainConfig, device: str | torch.device | None = None,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """Mean loss over a loader and the pooled Dice of the final output (at the model's mask threshold,
    ``config.mask_threshold``, as :func:`crlearn.inference.predict`), all classes counted together.

    ``reduce`` (e.g. :func:`crlearn.training.distributed.sum_over_ranks`) is applied to the loss sum and sample count
    and to the TP, FP, FN counts before any division: under ``torchrun`` each rank holds a share of the set.
    """
    device = pick_device(device)
    model.eval()
    dtype = autocast_dtype(device, cfg.amp)
    total, n, counts = 0.0, 0, torch.zeros(3, dtype=torch.int64)
    cut = mask_threshold(model)
    for x, y in loader:
        x, y = to_device(x, device), to_device(y, device)
        with autocast(device, dtype):
            out = model(x)
        total += float(deep_supervision_loss(out, y, hybrid=cfg.hybrid)) * len(x)
        n += len(x)
        c = confusion_counts(mask_cut(torch.sigmoid(out.final.float()), cut), y > 0.5)
        counts += torch.stack([c["tp"].sum(), c["fp"].sum(), c["fn"].sum()]).cpu()
    if reduce is not None:
        total, n = reduce(torch.tensor([total, n], dtype=torch.float64)).tolist()
        counts = reduce(counts)
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


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset | None, config: TrainConfig, class_names: Sequence[str],
        run_dir: str | Path | None = None, resume: str | Path | None = None,
        device: str | torch.device | None = None, progress: bool = True) -> dict[str, list[float]]:
    """Train with Adam and early stopping on the validation loss; returns the history.

    The history (epoch, train_loss, val_loss, val_dice, lr, seconds per epoch; ``stopped`` when it ended early)
    is a plain dict. With a ``run_dir``, ``best.pt`` (lowest validation loss), ``last.pt`` (all needed to resume)
    and ``history.json`` are written atomically after every epoch; ``resume`` continues the run of a ``last.pt``
    (on the CPU with the same numbers as an uninterrupted run). With ``config.ema`` the averaged model
    (:class:`WeightEMA`) is the one validated, checkpointed and returned: with batch 8 on a small set the raw
    model's BN statistics are noisy. At the end ``model`` holds the best weights. Nothing outside the run changes: torch's
    generators are seeded inside the run and restored after it (:func:`seeded`), cuDNN autotuning is on for the run
    and restored after it (:func:`cudnn_benchmark`), the CPU BatchNorm workaround runs inside it and leaves the
    model's modules as they were (:func:`crlearn.training.perf.narrow_batchnorm`), and on CPU the SSIM term blurs with
    banded matrix products for the run (:func:`crlearn.training.perf.cpu_ssim_blur`). ``config.fast`` other than
    ``"off"`` trains the same batches through :mod:`crlearn.training.fastpath` (:class:`~crlearn.training.fastpath.DeviceBatches`
    in place of :func:`make_loader`, and the step of :func:`~crlearn.training.fastpath.make_step` handed to
    :func:`train_one_epoch`: one loop either way). Inside a
    ``torchrun`` process group it trains data-parallel, ``config.batch_size`` being the global batch
    (:mod:`crlearn.training.distributed`; the same history as one process to float tolerance).
    """
    device = pick_device(device)
    val_set = [] if val_set is None else val_set  # None: no validation, the last epoch is kept
    with (seeded(config.seed, device), cudnn_benchmark(device), perf.narrow_batchnorm(model, device),
          perf.cpu_ssim_blur(device)):
        return _fit(model, train_set, val_set, config, class_names, run_dir, resume, device, progress)


def _fit(model: nn.Module, train_set: Dataset, val_set: Dataset, config: TrainConfig, class_names: Sequence[str],
         run_dir: str | Path | None, resume: str | Path | None, device: torch.device,
         progress: bool) -> dict[str, list[float]]:
    """The loop of :func:`fit`, inside its seeded, restored context."""
    cfg, main = config, distributed.is_main()  # under torchrun only rank 0 (main) writes and shows progress
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)
    model.to(device=device, memory_format=torch.channels_last)
    trained, stepped = replicas(model, device, cfg)  # one process: model, model; torchrun: a copy, its DDP wrapper
    opt = torch.optim.Adam(trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    train_loader, val_loader = make_loaders(train_set, val_set, cfg, device)
    sched = make_scheduler(opt, cfg, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(device, cfg.amp) == torch.float16)
    step = fastpath.make_step(stepped, opt, scaler, cfg, device)  # None: the eager step; else the same, faster
    ema = WeightEMA(trained, cfg.ema) if cfg.ema is not None else None
    judged = ema.module if ema is not None else trained  # the model that is validated and kept
    state = resume_state(resume, trained, ema, opt, sched) if resume is not None else FitState()

    t0 = time.perf_counter() - sum(state.history["seconds"])
    epochs = tqdm(range(state.start_epoch, cfg.epochs), desc="epochs", disable=not (progress and main),
                  initial=state.start_epoch, total=cfg.epochs)
    for epoch in epochs:
        start_epoch(train_loader, cfg.seed, epoch)
        t_epoch = time.perf_counter()
        train_loss = distributed.mean_over_ranks(train_one_epoch(stepped, train_loader, opt, sched, scaler, ema, cfg,
                                                                 device, f"epoch {epoch + 1}", progress and main, step))
        val_loss, val_dice = (validate(judged, val_loader, cfg, device, reduce=distributed.sum_over_ranks)
                              if len(val_set) else (math.nan, math.nan))  # no validation set: nothing to judge
        for key, value in zip(HISTORY_KEYS, (epoch + 1, train_loss, val_loss, val_dice, opt.param_groups[0]["lr"],
                                             time.perf_counter() - t_epoch)):
            state.history[key].append(value)
        epochs.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}", dice=f"{val_dice:.3f}")
        improved = state.observe(val_loss, judged)
        if run_dir is not None and main:
            save_epoch(run_dir, state, judged, trained, ema, opt, sched, cfg, class_names, epoch, improved)
        out_of_time = cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes
        if distributed.agree(state.bad_epochs >= cfg.patience or out_of_time):  # rank 0 decides for all
            state.history["stopped"] = [epoch + 1]
            break
    if state.best_state is not None or trained is not model:
        model.load_state_dict(state.best_state if state.best_state is not None else trained.state_dict())
    return state.history
