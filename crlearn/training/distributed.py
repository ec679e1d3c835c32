"""Data-parallel training on ``torchrun``: one process per device, each on its share of every global batch.

Beyond the paper (Huang et al. 2022 train on one GPU, §3.1); this is PyTorch's own engine for it, nothing
home-made: ``torchrun`` starts N processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`process_group` joins them (NCCL on CUDA, Gloo on CPU); :func:`crlearn.training.engine.fit` then trains
data-parallel by itself:

- **the data**: a ``DistributedSampler`` (:func:`train_sampler`) shuffles the x5 views by ``(seed, epoch)``
  (``set_epoch``) and deals them out, so the N processes together see every sample once per epoch (when the set does
  not divide by N the sampler repeats up to N - 1 samples to give each the same count);
- **the batch and learning rate are global**: ``TrainConfig.batch_size`` (the paper's 8) is the batch of one step
  over all processes, each takes ``batch_size / N`` of it; the learning rate is the one of that global batch;
- **the model**: every process holds a replica; ``DistributedDataParallel`` averages the gradients after backward,
  so the replicas take identical steps; BatchNorm is synchronised (:func:`sync_batchnorm`): otherwise each replica
  normalises with the statistics of its own small share and the training is not the one-process one;
- **the metrics**: each process validates its share and the confusion counts and loss sums are added over the
  processes (:func:`sum_over_ranks`) before any division: a mean of per-process Dice is not the Dice of the set;
- **decisions and files**: early stopping is decided on rank 0 and broadcast (:func:`agree`); only rank 0
  (:func:`is_main`) writes checkpoints and logs.

:func:`spread` runs independent jobs (Table 7's rows, folds, seeds) on the ranks and gathers their results.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

from crlearn.training import syncbn_cpu
from crlearn.training.device import pick_device

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets in every process it starts
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Launch:
    """Where this process stands: its rank among ``world_size`` processes, its rank on this machine, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env(environ: dict[str, str] | None = None) -> Launch | None:
    """The ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or ``None`` when not launched by it."""
    env = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_VARS if k in env]
    if not present:
        return None
    if len(present) < len(TORCHRUN_VARS):
        raise ValueError(f"a partial torchrun environment: {present} set but not the rest of {list(TORCHRUN_VARS)}")
    try:
        rank, world, local = (int(env[k]) for k in TORCHRUN_VARS)
    except ValueError:
        raise ValueError(f"torchrun environment not integers: {[env[k] for k in TORCHRUN_VARS]}") from None
    if not (0 <= rank < world and 0 <= local <= rank):
        raise ValueError(f"torchrun environment out of range: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return Launch(rank, world, local)


_LOCAL = contextvars.ContextVar("crlearn_local_job", default=False)  # inside spread's job: this process alone


def active() -> bool:
    """True inside an initialised process group (then :func:`crlearn.training.engine.fit` trains data-parallel),
    except inside a job of :func:`spread`, which each rank runs alone."""
    return not _LOCAL.get() and dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def local_job() -> Iterator[None]:
    """Inside the block this process works alone, as without ``torchrun`` (:func:`spread` runs each job so)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the process that writes files and logs (and without a process group)."""
    return rank() == 0


def rank_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """The device of a process: ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    dev = pick_device(device)
    return torch.device("cuda", local_rank) if dev.type == "cuda" and dev.index is None else dev


@contextlib.contextmanager
def process_group(device: str | torch.device | None = None, timeout_s: float = 600.0) -> Iterator[Launch]:
    """Join the ``torchrun`` processes for the duration of the block; always leave the group at its end.

    NCCL on CUDA, Gloo on CPU. Not launched by ``torchrun`` (or a group already joined): the block runs as one
    process and nothing is initialised. ``timeout_s`` bounds how long a collective waits for a missing rank.
    """
    launch = launch_env()
    if launch is None:  # one plain process: the device as asked for
        yield Launch(device=pick_device(device))
        return
    if active():  # a group the caller joined: use it, leave it to them
        yield Launch(launch.rank, launch.world_size, launch.local_rank, rank_device(device, launch.local_rank))
        return
    dev = rank_device(device, launch.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                            **({"device_id": dev} if dev.type == "cuda" else {}))
    try:
        yield Launch(launch.rank, launch.world_size, launch.local_rank, dev)
    finally:
        dist.destroy_process_group()


def rank_label() -> str:
    """`` on rank 1 of 2`` under ``torchrun`` (from the environment, so also before or after the group), else ``""``."""
    try:
        launch = launch_env()
    except ValueError:
        return ""
    return f" on rank {launch.rank} of {launch.world_size}" if launch is not None else ""


def error_line(exc: BaseException) -> str:
    """One line for a failure: ``error on rank 1 of 2: ...``, ``interrupted on rank 0 of 2`` (first line only)."""
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted{rank_label()}"
    text = (str(exc).strip().splitlines() or [""])[0]
    kind = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
    return f"error{rank_label()}: {kind}{text}"


# ----------------------------------------------------------------------------- the model and the data


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm synchronised over the processes: ``nn.SyncBatchNorm`` on CUDA, the CPU workaround elsewhere.

    ``model`` must be one the caller owns (it is changed in place); returns the model to train.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return syncbn_cpu.convert(model)


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``DistributedDataParallel`` over ``model`` (its weights broadcast from rank 0; gradients averaged)."""
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def per_rank_batch(batch_size: int) -> int:
    """This process's share of a global batch; the global batch must divide by the number of processes."""
    n = world_size()
    if batch_size % n:
        raise ValueError(f"the batch size {batch_size} is the global batch and must divide by the {n} processes; "
                         f"choose a multiple of {n} (e.g. --batch-size {batch_size - batch_size % n or n})")
    return batch_size // n


def train_sampler(dataset: Dataset, seed: int) -> DistributedSampler:
    """This rank's share of each epoch: shuffled by ``(seed, epoch)`` (call ``set_epoch``), padded to equal shares."""
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)


def val_shard(dataset: Dataset) -> Dataset:
    """Every ``world_size``-th sample from ``rank``: the shares cover the set once, nothing repeated (unlike the
    sampler's padding), so summed counts are the set's counts."""
    return Subset(dataset, range(rank(), len(dataset), world_size()))


# ----------------------------------------------------------------------------- collectives


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over all processes (a copy; ``t`` itself without a process group)."""
    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out


def mean_over_ranks(value: float) -> float:
    """The mean of a float over the processes (for a per-process mean over equal shares: the global mean)."""
    if not active():
        return value
    return float(sum_over_ranks(torch.tensor([value], dtype=torch.float64))[0]) / world_size()


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (e.g. to stop training: decided once, so no rank trains alone)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return bool(t[0])


def spread(fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
    """``[fn(job) for job in jobs]``, the jobs dealt out over the ranks (job i on rank i mod N), gathered in order.

    For independent runs such as Table 7's (row, fold, seed): each must seed itself (as :func:`crlearn.training.run.run`
    does), so that the result does not depend on which rank ran it. Every rank returns the whole list; write it from
    rank 0 only. A job that raises on any rank raises a ``RuntimeError`` naming the job and rank on every rank (no rank
    is left waiting). Without a process group: the serial loop itself.
    """
    if not active():
        return [fn(job) for job in jobs]
    mine: dict[int, tuple[bool, Any]] = {}
    for i in range(rank(), len(jobs), world_size()):
        try:
            with local_job():  # the job trains in this process alone: no gradient all-reduce with the others
                mine[i] = (True, fn(jobs[i]))
        except Exception as exc:  # noqa: BLE001 (reported below, on every rank)
            mine[i] = (False, f"job {i} ({jobs[i]!r}) failed on rank {rank()}: {type(exc).__name__}: {exc}")
            break
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, mine)
    done = {i: r for part in parts for i, r in part.items()}
    failed = [msg for ok, msg in done.values() if not ok]
    if failed:
        raise RuntimeError(failed[0])
    return [done[i][1] for i in range(len(jobs))]
