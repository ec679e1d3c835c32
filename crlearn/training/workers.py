"""Worker processes for runs that train several models at once (``crlearn compare --jobs``, the classifier's CV).

:func:`worker_pool` is a :class:`concurrent.futures.ProcessPoolExecutor` of spawned processes (no fork of a process
that has started torch's threads) whose workers end with the process that made the pool. Without that, a parent
killed with ``kill`` (SIGTERM) or by the out-of-memory killer leaves its workers training on as orphans, holding
the CPU for hours; Ctrl-C reaches the workers anyway (the terminal signals the whole process group).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

POLL_SECONDS = 1.0  # how often a worker checks that its parent is alive


def _exit_when_orphaned(parent: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:  # the parent died: this process was handed to another (init or a subreaper)
            os._exit(1)


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: Sequence[Any]) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent, POLL_SECONDS), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def worker_pool(n_workers: int, initializer: Callable[..., None] | None = None,
                initargs: Sequence[Any] = ()) -> ProcessPoolExecutor:
    """``n_workers`` spawned worker processes; ``initializer(*initargs)`` (picklable) runs first in each. A worker
    exits within about :data:`POLL_SECONDS` once the process that made the pool is gone."""
    return ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, tuple(initargs)))
