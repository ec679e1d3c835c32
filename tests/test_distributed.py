"""Data-parallel training on torchrun (crlearn.training.distributed), with two Gloo processes of one thread each.

The processes are spawned here (``torch.multiprocessing.spawn``, or ``torchrun`` in a subprocess), each joins the
group through the same torchrun environment variables ``crlearn train`` reads, and writes what it found to a file.

Tolerances of "two ranks with global batch B equal one process with batch B", and why:

- **one step's gradients**: within 1e-3 of each tensor's largest element. The two ranks add the same terms in
  another order (each averages its half batch, DistributedDataParallel averages the halves, the synchronised
  BatchNorm sums per-rank statistics), and BatchNorm's backward subtracts near-equal terms: float32's own noise on
  this tiny CR-Net is 1.4e-4 by that measure (float32 against float64 on one process, measured here), the DDP gap
  4e-4. Without synchronised BatchNorm each rank normalises with its own half batch's statistics: the gap is
  about 20 (a different computation, not rounding), which the test also shows.
- **a 2-epoch run (10 Adam steps)**: losses within rel 2e-3 (measured: up to 6e-4). Adam divides each gradient
  element by its own running magnitude, so elements whose gradient is at rounding level step by up to lr either
  way, and the gaps grow with the steps; the sample order, loss averaging and pooled validation are exact (with a
  learning rate of 1e-9 the histories agree to 6e-8).
"""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT, TINY

from crlearn.data.folder import SegmentationDataset
from crlearn.data.splits import split_by_group
from crlearn.losses import deep_supervision_loss
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training import distributed
from crlearn.training.config import TrainConfig
from crlearn.training.engine import fit, make_loader, replicas, validate

pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT_S = 120  # a hung rank fails the test instead of hanging it


# ----------------------------------------------------------------------------- spawning ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: Path, fn, args) -> None:
    """One spawned rank: torchrun's environment, one thread, the group joined around ``fn``, its result saved."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.process_group("cpu", timeout_s=60):
        result = fn(*args)
    torch.save(result, out / f"rank{rank}.pt")


def start(fn, world: int, out: Path, *args):
    out.mkdir(parents=True, exist_ok=True)
    return mp.start_processes(_rank_main, args=(world, _free_port(), out, fn, args), nprocs=world, join=False,
                              start_method="spawn")


def finish(ctx, out: Path) -> list:
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        assert time.monotonic() < deadline, "ranks still running: a hang"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(len(ctx.processes))]


def on_ranks(fn, world: int, out: Path, *args) -> list:
    """``fn(*args)`` on ``world`` spawned ranks; their results in rank order."""
    return finish(start(fn, world, out, *args), out)


# ----------------------------------------------------------------------------- what the ranks run


def _tiny_sets(data: Path):
    full = SegmentationDataset(data, merge=True)
    split = split_by_group(full.groups, seed=0)
    train = split["train"][:4]  # 4 slices x 5 views = 20 samples: 5 global batches of 4
    return full.subset(train, size=64, augment=True), full.subset(split["val"], size=64)


def _fit_tiny(data: Path, batch_size: int) -> dict:
    train, val = _tiny_sets(data)
    assert len(train) % batch_size == 0  # no sampler padding: the same samples as one process, exactly once
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    cfg = TrainConfig(size=64, epochs=2, batch_size=batch_size, lr=3e-4, seed=0)
    history = fit(model, train, val, cfg, ["infection"], device="cpu", progress=False)
    return {"history": history, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def _batch_and_model():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 1, 64, 64, generator=g), (torch.rand(4, 1, 64, 64, generator=g) > 0.7).float()
    torch.manual_seed(0)
    return x, y, CRNet(CRNetConfig(num_classes=1, **TINY)).train()


def _ddp_grads(sync: bool) -> dict[str, torch.Tensor]:
    """One backward of this rank's half of a global batch of 4 through DistributedDataParallel."""
    x, y, model = _batch_and_model()
    if sync:
        model = distributed.sync_batchnorm(model, torch.device("cpu"))
    half = slice(2 * distributed.rank(), 2 * distributed.rank() + 2)
    ddp = distributed.wrap(model, torch.device("cpu"))  # kept alive: its reducer averages the gradients in backward
    deep_supervision_loss(ddp(x[half]), y[half]).backward()
    return {k: p.grad for k, p in model.named_parameters()}


def _ddp_grads_both() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    try:  # the fast path's captured step cannot hold DDP's all-reduce: refused, not run wrongly
        replicas(CRNet(CRNetConfig(num_classes=1, **TINY)), torch.device("cpu"), TrainConfig(size=64, fast="graph"))
        refusal = ""
    except ValueError as exc:
        refusal = str(exc)
    return _ddp_grads(True), _ddp_grads(False), refusal


def _predicting_model() -> CRNet:
    """An untrained tiny CR-Net whose output bias is raised so that it marks some pixels (a Dice strictly in (0, 1))."""
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).eval()
    with torch.no_grad():
        model.refine.conv_out.bias.add_(float(-torch.quantile(model(torch.zeros(1, 1, 64, 64)).final, 0.7)))
    return model


def _validate_shard(data: Path) -> tuple[float, float, int]:
    val = SegmentationDataset(data, merge=True, size=64)
    model = _predicting_model()
    shard = distributed.val_shard(val)
    loss, dice = validate(model, make_loader(shard, 3, False, torch.device("cpu")), TrainConfig(size=64), "cpu",
                          reduce=distributed.sum_over_ranks)
    return loss, dice, len(shard)


def _job(job: tuple[str, int, int]) -> float:
    """A stand-in for one (row, fold, seed) run: seeded by its own job, a few steps of a small regression."""
    row, fold, seed = job
    g = torch.Generator().manual_seed(1000 * seed + 10 * fold + len(row))
    x, w = torch.randn(32, 4, generator=g), torch.zeros(4, requires_grad=True)
    y = x @ torch.randn(4, generator=g)
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        ((x @ w - y) ** 2).mean().backward()
        opt.step()
    return float(((x @ w - y) ** 2).mean().detach())


def _failing_job(job: tuple[str, int, int]) -> float:
    if job[1] == 1:
        raise ValueError("fold 1 has no validation group")
    return _job(job)


JOBS = [(row, fold, 0) for row in ("unet", "unet_aspp", "crnet") for fold in range(2)][:5]  # 5 jobs over 2 ranks


def _spread_both() -> tuple[list[float], str]:
    results = distributed.spread(_job, JOBS)
    try:
        distributed.spread(_failing_job, JOBS)
    except RuntimeError as exc:
        return results, str(exc)
    return results, ""


# ----------------------------------------------------------------------------- the tests


def test_launch_env_reads_torchrun_variables_and_refuses_a_partial_set():
    assert distributed.launch_env({}) is None
    launch = distributed.launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (launch.rank, launch.world_size, launch.local_rank, launch.is_main) == (1, 2, 1, False)
    with pytest.raises(ValueError, match="partial torchrun environment"):
        distributed.launch_env({"RANK": "0"})
    with pytest.raises(ValueError, match="out of range"):
        distributed.launch_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert distributed.rank_label() == ""  # not under torchrun: errors name no rank
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1


def test_ddp_gradients_of_a_global_batch_equal_one_process_gradients_only_with_synchronised_batchnorm(tmp_path):
    """Also: the full profile's CUDA-graph fast path is refused under DDP with a message saying what to do."""
    x, y, model = _batch_and_model()
    deep_supervision_loss(model(x), y).backward()
    ref = {k: p.grad for k, p in model.named_parameters() if p.grad.abs().max() > 1e-6}  # (not the ~0 ones)

    def gap(grads):
        return max(float((grads[k] - g).abs().max() / g.abs().max()) for k, g in ref.items())

    (a0, b0, refusal), (a1, _, _) = on_ranks(_ddp_grads_both, 2, tmp_path)
    assert "does not compose with DistributedDataParallel" in refusal and "--fast off" in refusal
    assert all(torch.equal(a0[k], a1[k]) for k in a0)  # every replica steps with the same averaged gradient
    assert gap(a0) < 1e-3
    assert gap(b0) > 0.1  # per-rank BatchNorm statistics: not the one-process computation


def test_two_ranks_with_global_batch_b_train_as_one_rank_with_batch_b(small_data, tmp_path):
    one = start(_fit_tiny, 1, tmp_path / "one", small_data, 4)  # batch 4 in one process
    two = start(_fit_tiny, 2, tmp_path / "two", small_data, 4)  # global batch 4: 2 per rank
    (ref,), (r0, r1) = finish(one, tmp_path / "one"), finish(two, tmp_path / "two")
    for k in r0["state"]:  # DDP: the replicas take identical steps, bit for bit
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["history"] == {**r1["history"], "seconds": r0["history"]["seconds"]}  # rank 0's numbers on both
    for key in ("train_loss", "val_loss"):
        assert r0["history"][key] == pytest.approx(ref["history"][key], rel=2e-3), key
    assert r0["history"]["lr"] == ref["history"]["lr"] and len(r0["history"]["epoch"]) == 2
    assert ref["history"]["train_loss"][1] < ref["history"]["train_loss"][0]  # it trained


def test_metrics_from_summed_counts_equal_one_process_metrics(small_data, tmp_path):
    (l0, d0, n0), (l1, d1, n1) = on_ranks(_validate_shard, 2, tmp_path, small_data)
    val = SegmentationDataset(small_data, merge=True, size=64)
    assert n0 + n1 == len(val) and n0 != n1  # uneven shares, nothing repeated
    model = _predicting_model()
    loss, dice = validate(model, make_loader(val, 3, False, torch.device("cpu")), TrainConfig(size=64), "cpu")
    assert (l0, d0) == (l1, d1)  # every rank holds the set's numbers
    assert d0 == dice and 0 < dice < 1  # integer counts summed: exact
    assert l0 == pytest.approx(loss, rel=1e-6)


def test_spread_jobs_over_ranks_equals_the_serial_loop(tmp_path):
    serial = [_job(job) for job in JOBS]
    assert distributed.spread(_job, JOBS) == serial  # no process group: the loop itself
    (res0, err0), (res1, err1) = on_ranks(_spread_both, 2, tmp_path)
    assert res0 == res1 == serial
    assert err0 == err1 and "failed on rank 1" in err0 and "fold 1 has no validation group" in err0


def test_a_rank_that_raises_ends_the_job_with_one_line_naming_it(small_data, tmp_path):
    script = tmp_path / "train_failing_rank.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import crlearn.training.run as run
        from crlearn.cli.main import main
        from crlearn.data.errors import DataError

        if os.environ["RANK"] == "1":  # rank 1 fails while loading; rank 0 goes on and waits for it in fit
            def load_parts(*args, **kwargs):
                raise DataError("slice 7: unreadable on purpose")
            run.load_parts = load_parts
        sys.exit(main(["train", "--data", {str(small_data)!r}, "--profile", "quick", "--device", "cpu",
                       "--size", "64", "--batch-size", "4", "--epochs", "1", "--quiet", "--no-tta",
                       "--out", {str(tmp_path / "run")!r}]))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode != 0 and time.monotonic() - t0 < TIMEOUT_S
    ours = [line for line in proc.stderr.splitlines() if line.startswith("crlearn train:")]
    assert ours[0] == "crlearn train: error on rank 1 of 2: slice 7: unreadable on purpose", proc.stderr
    assert all("rank 0 of 2" in line for line in ours[1:]), ours  # rank 0 at most reports that its peer left
    assert "Traceback" not in "\n".join(ours)


def test_train_command_takes_fast_off_for_the_full_profile_under_torchrun():
    from crlearn.cli.main import build_parser
    from crlearn.training.config import FAST_MODES

    parser = build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    assert tuple(train._option_string_actions["--fast"].choices) == FAST_MODES
    assert parser.parse_args(["train", "--fast", "off"]).fast == "off"


def _tiny_ablation(data: Path) -> dict:
    from crlearn.tasks.ablation import TABLE7, run_ablation

    result = run_ablation(data, "quick", folds=2, epochs=1, rows=TABLE7[:2], device="cpu", progress=False, tta=False)
    return [[{k: f[k] for k in ("dice", "epochs")} for f in row["folds"]] for row in result["rows"]]


def test_ablation_spread_over_two_ranks_equals_the_serial_ablation(small_data, tmp_path):
    serial = _tiny_ablation(small_data)
    assert on_ranks(_tiny_ablation, 2, tmp_path, small_data) == [serial, serial]  # every rank: the same table
