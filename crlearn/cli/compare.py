"""``crlearn compare``: Table 4 of the paper (§3.3), U-Net, U-Net++ and CR-Net per lesion class on the same patient
folds over several seeds. It parses, calls :func:`crlearn.tasks.compare.run_compare`, writes and prints;
:mod:`crlearn.cli.main` wires it in.

    crlearn compare [--folds K] [--seeds N] [--profile P] [--epochs E] [--jobs J] [--out DIR] [--force] [--quiet]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from crlearn.report import DISCLAIMER

EPILOG = """examples:
  crlearn compare --folds 2 --seeds 1 --epochs 2 --out runs/compare-smoke     # a smoke run, minutes on a laptop
  crlearn compare --profile quick --folds 5 --seeds 3 --jobs 14 --out results/table4_quick
"""


def speed_up_worker() -> None:
    """Run in each worker process: the CPU allocator workaround the crlearn command uses (crlearn.training.perf)."""
    from crlearn.training.perf import keep_freed_memory

    keep_freed_memory()


def cmd_compare(args: argparse.Namespace) -> int:
    from crlearn.tasks.compare import compare_markdown, run_compare
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json, fresh_path
    from crlearn.training.config import resolve_profile

    profile = resolve_profile(args.profile)
    out = fresh_path(args.out or f"runs/compare-{profile}", explicit=args.out is not None, force=args.force,
                     is_dir=True)
    result = run_compare(args.data, profile, folds=args.folds, seeds=args.seeds, epochs=args.epochs,
                         jobs=args.jobs, device=args.device, tta=args.tta, progress=not args.quiet,
                         log=lambda line: print(f"crlearn compare: {line}", flush=True), worker_init=speed_up_worker)
    result["command"] = "crlearn " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    md = compare_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", result)
    atomic_write_bytes(out / "compare.md", (md + f"\nMade by: `{result['command']}`. {DISCLAIMER}\n").encode())
    print(md)
    print(f"wrote {out}/: compare.json compare.md")
    print(DISCLAIMER)
    return 0


def add_parser(sub: Any) -> None:
    """The ``compare`` command."""
    from crlearn.data.paths import default_data_dir

    c = sub.add_parser("compare", help="Table 4: U-Net, U-Net++ and CR-Net per lesion class, same folds, N seeds",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--data", default=str(default_data_dir()),
                   help="data folder with ggo, consolidation and effusion classes (default: data_sample/medseg_covid100)")
    c.add_argument("--profile", choices=["auto", "quick", "full"], default=None,
                   help="auto (default; $CRLEARN_PROFILE, else full with CUDA and quick without), quick or full")
    c.add_argument("--folds", type=int, default=5, help="patient-group folds, the same for every model (default 5)")
    c.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per fold (default 3)")
    c.add_argument("--epochs", type=int, default=None, help="cap every run's epochs (default: the profile's)")
    c.add_argument("--jobs", type=int, default=1,
                   help="worker processes of one torch thread each (default 1: everything in this process)")
    c.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    c.add_argument("--no-tta", dest="tta", action="store_false",
                   help="one forward pass per slice instead of averaging the five training views")
    c.add_argument("--out", help="folder for compare.json and compare.md (default: runs/compare-<profile>); "
                                 "never overwritten without --force")
    c.add_argument("--force", action="store_true", help="overwrite an existing --out")
    c.add_argument("--quiet", action="store_true", help="no progress bars (one line per finished run is printed)")
    c.set_defaults(func=cmd_compare)
