"""A faster route for the training step, kept apart from the teaching loop (``TrainConfig.fast``).

:func:`crlearn.training.engine.fit` takes this route when ``config.fast`` is not ``"off"`` (the ``full`` profile sets
``"graph"``). It trains the same samples, in the same batches and order, with the same forward, loss, backward and
fused Adam step as :func:`crlearn.training.engine.train_one_epoch`, which stays the reference: on a CPU both give the same
history (``tests/test_fastpath.py``). Only the route differs. What each piece works around:

1. **Host-side batches for a set that fits the device.** A DataLoader builds every batch on the host (collate,
   pinned copy, worker processes) and copies it over, every step. :class:`DeviceBatches` builds each training sample
   once through the dataset's own ``__getitem__`` (the paper's x5 views pre-materialised, so the samples are the
   DataLoader's bit for bit), keeps them on the device and gathers each batch there, in the order an in-process
   DataLoader with the same generator draws. For sets that fit in device memory (this project's: ~300 samples,
   1 MB per channel each at 512 px).
2. **A host sync per step** is avoided by the teaching loop itself: :func:`crlearn.training.engine.train_one_epoch`
   sums the loss in a device tensor and reads it once per epoch, whatever the route.
3. **Kernel-launch overhead.** At batch 8 a step launches hundreds of small kernels and the host takes longer to
   launch them than the GPU to run them (H200: SMP's U-Net 23-25 ms per step at 128 and 512 px alike, README
   "Speed"). ``"graph"`` records the whole step (forward, loss, backward, fused Adam) once as a CUDA graph
   (``torch.cuda.graph``, the "whole-network capture" of PyTorch's CUDA graphs notes) and replays it: one launch
   per step. ``"compile"`` instead hands forward and loss to ``torch.compile(mode="reduce-overhead")`` (Inductor's
   fused kernels and CUDA graphs), at the price of compiling each new model.

The route is a step, :func:`make_step`, handed to the one loop. Modes: ``"eager"`` (1, any device); ``"graph"`` and
``"compile"`` (1 and 3; CUDA only, elsewhere they run
as ``"eager"``). ``"graph"`` also needs a constant learning rate (the captured Adam step keeps the rate it was
recorded with) and no fp16 gradient scaler (its inf check reads the GPU); otherwise it runs as ``"eager"`` with a
warning. Measured: ``crlearn bench model --modes eager graph`` (``results/gpu_h200_session3/``). How to retire: when
an eager step at batch 8 is no longer launch-bound (the bench's eager and graph rows alike), delete ``"graph"`` and
``"compile"``; :class:`DeviceBatches` goes when sets outgrow device memory.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from crlearn.losses import deep_supervision_loss
from crlearn.training.config import TrainConfig
from crlearn.training.device import autocast_dtype, to_device

STEP_MODES = ("eager", "graph", "compile")  # TrainStep's routes
GRAPH_WARMUP = 3  # eager steps before a capture (cuDNN autotuning, Adam's state, the allocator settle first)


class DeviceBatches:
    """Every sample of ``dataset`` on ``device`` once; each batch gathered there, in a DataLoader's order.

    Args:
        dataset: yields ``(image [1,S,S], mask [C,S,S])``, e.g. :class:`crlearn.data.folder.SegmentationDataset` with its
            x5 views; every item is read once, here.
        batch_size: samples per batch; an epoch's last batch holds the rest (as ``drop_last=False``).
        shuffle: a new order every epoch drawn from :attr:`generator` (which :func:`crlearn.training.engine.fit` reseeds each
            epoch, as it does a loader's); ``False``: the dataset's order.
        device: where the samples live and the batches are gathered.
        seed: the generator's first seed.

    Iterating gives what ``DataLoader(dataset, batch_size, shuffle, generator=generator)`` (in-process) followed
    by :func:`crlearn.training.config.to_device` gives: the same samples in the same order, shapes, dtypes and layout. The
    order comes from such a DataLoader over the sample indices (:attr:`index_loader`), so it is the teaching loop's
    order however a loop iterates (``tqdm.auto`` makes one iterator more than it uses, which draws a seed).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, device: str | torch.device, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty: nothing to train on")
        images, masks = zip(*(dataset[i] for i in range(len(dataset))))
        self.device = torch.device(device)
        self.images = torch.stack(images).to(self.device)  # (N, 1, S, S), contiguous as a DataLoader collates it
        self.masks = torch.stack(masks).to(self.device)  # (N, C, S, S)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.index_loader = DataLoader(range(len(images)), batch_size, shuffle=shuffle, generator=self.generator)

    def __len__(self) -> int:
        return len(self.index_loader)

    @property
    def n_samples(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self._batches(iter(self.index_loader))  # the DataLoader iterator draws its workers' seed now

    def _batches(self, indices: Iterator[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.cat(list(indices)).to(self.device)  # the epoch's order, copied over once
        for idx in order.split(self.batch_size):
            yield (to_device(self.images.index_select(0, idx), self.device),
                   to_device(self.masks.index_select(0, idx), self.device))


def graph_safe_autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` without its cache of cast weights, which a CUDA graph capture does not allow (PyTorch's
    CUDA graphs notes); a no-op context for ``dtype=None``. The numbers are the cached autocast's."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


class TrainStep:
    """One training step on a batch: zero the gradients, ``loss_fn(x, y)``, backward, optimiser step.

    Calling it with a batch ``(x, y)`` takes the step and returns the loss, a device tensor it does not read.

    Args:
        loss_fn: forward and loss of a batch, ``(x, y) -> scalar``, with its autocast inside (for ``"graph"``:
            :func:`graph_safe_autocast`).
        opt: the optimiser; for ``"graph"`` a fused one (``fused=True``, its step counts live on the GPU).
        scaler: an enabled ``torch.amp.GradScaler`` (fp16) or ``None``; not with ``"graph"``.
        mode: ``"eager"``: as written. ``"graph"`` (CUDA): ``warmup`` eager steps on a side stream, then the step on
            a batch of the first batch's shape is recorded as one CUDA graph and every later batch of that shape
            replays it (copied into the recorded batch first). ``"compile"``: ``loss_fn`` compiled by
            ``torch.compile(mode="reduce-overhead")`` for the first batch's shape. In both, a batch of another
            shape (an epoch's smaller last batch) takes an eager step.
        warmup: eager steps before the capture (``"graph"``).
    """

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor], opt: torch.optim.Optimizer, scaler: Any = None,
                 mode: str = "eager", warmup: int = GRAPH_WARMUP):
        if mode not in STEP_MODES:
            raise ValueError(f"mode must be one of {list(STEP_MODES)}, got {mode!r}")
        if mode in ("graph", "compile") and not torch.cuda.is_available():
            raise ValueError(f"mode={mode!r} needs a CUDA GPU; use 'eager'")
        if mode == "graph" and scaler is not None:
            raise ValueError("mode='graph' takes no gradient scaler: its inf check reads the GPU every step")
        if mode == "graph" and not all(g.get("fused") for g in opt.param_groups):
            raise ValueError("mode='graph' needs a fused optimiser (e.g. torch.optim.Adam(..., fused=True))")
        self.loss_fn, self.opt, self.scaler, self.mode, self.warmup = loss_fn, opt, scaler, mode, warmup
        self.compiled = torch.compile(loss_fn, mode="reduce-overhead") if mode == "compile" else None
        self.shape: torch.Size | None = None  # the batch shape the fast route serves: the first batch's
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[Tensor] = []  # the recorded step's x and y (copied into) and its loss (read from)
        self.eager_steps = 0
        self.stream = torch.cuda.Stream() if mode == "graph" else None

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if self.shape is None:
            self.shape = x.shape
        usual = x.shape == self.shape
        if self.mode == "graph" and usual and self.graph is None and self.eager_steps >= self.warmup:
            self._record(x, y)
        if self.graph is not None and usual:
            self.static[0].copy_(x)
            self.static[1].copy_(y)
            self.graph.replay()
            return self.static[2]
        self.eager_steps += 1
        fn = self.compiled if self.compiled is not None and usual else self.loss_fn
        if self.mode == "graph" and self.graph is None:
            return self._on_side_stream(fn, x, y)
        return self._eager(fn, x, y)

    def _eager(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = fn(x, y)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        return loss

    def _on_side_stream(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        """An eager step on a side stream: warm-up before a capture runs off the default stream (PyTorch's CUDA
        graphs notes); each stream waits for the other, so the order of the work is unchanged."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            loss = self._eager(fn, x, y)
        torch.cuda.current_stream().wait_stream(self.stream)
        return loss

    def _record(self, x: Tensor, y: Tensor) -> None:
        """Capture one step on copies of ``(x, y)``: recorded, not run (the caller replays it)."""
        self.static = [x.clone(), y.clone()]
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)  # the captured backward then allocates the gradients in the graph's pool
        for group in self.opt.param_groups:
            group["capturable"] = True  # Optimizer.step refuses a capture without it; fused Adam's state is on the GPU
        with torch.cuda.graph(self.graph):
            loss = self.loss_fn(*self.static)
            loss.backward()
            self.opt.step()
        for group in self.opt.param_groups:
            group["capturable"] = False  # the eager steps after it (smaller last batches) run as before
        self.static.append(loss)


def effective_mode(cfg: TrainConfig, device: torch.device, scaler_enabled: bool) -> str:
    """The step mode ``cfg.fast`` takes on ``device``: ``"graph"`` and ``"compile"`` only on CUDA; ``"graph"`` only
    with a constant learning rate and no fp16 gradient scaler (else ``"eager"``, with a warning)."""
    mode = "eager" if cfg.fast == "off" else cfg.fast
    if mode in ("graph", "compile") and device.type != "cuda":
        return "eager"
    if mode == "graph" and (cfg.schedule != "constant" or scaler_enabled):
        warnings.warn(f"fast='graph' runs as 'eager' here: it needs schedule='constant' (got {cfg.schedule!r}) "
                      f"and bf16 or no autocast (fp16 gradient scaler: {scaler_enabled})", stacklevel=2)
        return "eager"
    return mode


def segmentation_loss(model: nn.Module, cfg: TrainConfig, device: torch.device) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of a batch as :func:`crlearn.training.engine.train_one_epoch` computes it (deep supervision, hybrid
    or BCE, under the run's autocast), as a function for :class:`TrainStep`."""
    dtype = autocast_dtype(device, cfg.amp, cpu=cfg.cpu_amp)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        with graph_safe_autocast(device, dtype):
            return deep_supervision_loss(model(x), y, hybrid=cfg.hybrid)

    return loss_fn


def make_step(model: nn.Module, opt: torch.optim.Optimizer, scaler: Any, cfg: TrainConfig,
              device: torch.device) -> TrainStep | None:
    """The step :func:`crlearn.training.engine.train_one_epoch` takes for ``cfg.fast``: ``None`` for ``"off"`` (the
    loop's own eager step), else a :class:`TrainStep` in :func:`effective_mode` (eager, a CUDA graph recorded once
    per run, or ``torch.compile``), made once per run and handed to the same loop."""
    if cfg.fast == "off":
        return None
    mode = effective_mode(cfg, device, scaler.is_enabled())
    return TrainStep(segmentation_loss(model, cfg, device), opt, scaler if scaler.is_enabled() else None, mode)