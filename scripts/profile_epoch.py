"""Where one quick-profile epoch spends its time: data, forward, loss, backward, optimizer, EMA, validation, and the
evaluation with and without test-time augmentation (issue 20, item 5). Simple wall-clock timers around the same
calls :func:`crlearn.training.engine.fit` and :func:`crlearn.training.run.run` make, on the bundled MedSeg set's
70/10/20 split (the README's main command), the second epoch timed (the first warms the allocator).

    OMP_NUM_THREADS=2 PYTHONPATH=. python scripts/profile_epoch.py --threads 2 [--out results/profile_quick_epoch.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch


def timed_epoch(model, loader, opt, sched, ema, cfg, t):
    """One epoch of :func:`crlearn.training.engine.train_one_epoch`'s steps, each timed into ``t``."""
    from crlearn.losses import deep_supervision_loss

    model.train()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        out = model(x)
        t2 = time.perf_counter()
        loss = deep_supervision_loss(out, y, hybrid=cfg.hybrid)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        sched.step()
        t5 = time.perf_counter()
        ema.update()
        t6 = time.perf_counter()
        for key, a, b in (("data", t0, t1), ("forward", t1, t2), ("loss", t2, t3), ("backward", t3, t4),
                          ("optimizer", t4, t5), ("ema", t5, t6)):
            t[key] += b - a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the timings")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from crlearn.data.folder import SegmentationDataset, default_data_dir
    from crlearn.data.splits import split_by_group
    from crlearn.inference import evaluate
    from crlearn.nn.model import CRNet
    from crlearn.training import perf
    from crlearn.training.config import PROFILES
    from crlearn.training.engine import WeightEMA, make_loader, make_scheduler, validate

    t0 = time.perf_counter()
    full = SegmentationDataset(default_data_dir(), merge=True)
    split = split_by_group(full.groups, seed=0)
    prof = PROFILES["quick"]
    cfg = prof.train_config()
    train = full.subset(split["train"], size=cfg.size, augment=True)
    val = full.subset(split["val"], size=cfg.size)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = CRNet(prof.model_config(num_classes=1)).to(memory_format=torch.channels_last)
    loader = make_loader(train, cfg.batch_size, True, torch.device("cpu"), 0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    sched = make_scheduler(opt, cfg, len(loader))
    ema = WeightEMA(model, cfg.ema)
    epochs = []
    with perf.narrow_batchnorm(model, torch.device("cpu")):
        for _ in range(2):
            t = defaultdict(float)
            t_ep = time.perf_counter()
            timed_epoch(model, loader, opt, sched, ema, cfg, t)
            t["train_epoch_total"] = time.perf_counter() - t_ep
            t1 = time.perf_counter()
            validate(ema.module, make_loader(val, cfg.batch_size, False, torch.device("cpu")), cfg, "cpu")
            t["validation"] = time.perf_counter() - t1
            epochs.append(dict(t))
    test = full.subset(split["test"])
    evals = {}
    for tta in (True, False):
        t1 = time.perf_counter()
        evaluate(ema.module, test, cfg.size, "cpu", tta=tta)
        evals[f"evaluate_test_tta_{tta}"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    evaluate(ema.module, full.subset(split["val"]), cfg.size, "cpu", tta=True)
    evals["evaluate_val_tta_True"] = time.perf_counter() - t1
    result = {"threads": args.threads, "load_and_split_s": load_s, "train_samples": len(train),
              "batches": len(loader), "epoch_1": epochs[0], "epoch_2": epochs[1], **evals,
              "epochs_of_profile": cfg.epochs, "uptime_load": Path("/proc/loadavg").read_text().split()[:3]}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
