"""Worker processes end with their parent (crlearn.training.workers)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crlearn.training.workers import worker_pool

PARENT = textwrap.dedent("""
    import os, sys, time
    from crlearn.training.workers import worker_pool

    def sleep_and_tell(path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)

    if __name__ == "__main__":
        with worker_pool(1) as pool:
            pool.submit(sleep_and_tell, sys.argv[1]).result()
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its entry waits to be reaped


def _square(x: int) -> int:
    return x * x


def test_pool_runs_jobs_with_an_initializer():
    with worker_pool(2, os.getpid) as pool:  # any picklable initializer
        assert list(pool.map(_square, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_exits_when_its_parent_is_killed(tmp_path):
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(PARENT)
    parent, worker = subprocess.Popen([sys.executable, str(script), str(pid_file)]), None
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)  # no chance to clean up: only the worker's own watch can end it
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        parent.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)  # the test failed: leave no orphan behind
