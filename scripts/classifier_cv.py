"""Cross-validate the slice classifier recipe (Huang et al. 2022, §2.8, Table 6) by pseudo-patient group, for the
frozen encoder with the logistic head (this project's default), the frozen encoder with the Adam-trained torch head
(the earlier default) and a fresh encoder trained from scratch.

Stage 1 (CR-Net, quick profile, on every bundled segmentation set) is trained once and its encoder reused by every
fold: the segmentation sets share no slice with the classifier's data. Then the K folds of every variant run in
parallel worker processes, one torch thread each. Writes ``OUT/cv.json`` and ``OUT/cv.md`` (pooled out-of-fold
metrics with 95 % pseudo-patient bootstrap intervals, per-fold mean ± std, the machine and the wall seconds) and
``OUT/segmenter/`` (stage 1's run).

    PYTHONPATH=. python scripts/classifier_cv.py --jobs 15                       # 5 folds, the three variants
    PYTHONPATH=. python scripts/classifier_cv.py --folds 2 --seg-epochs 1 --epochs 1 --size 64 \\
        --out /tmp/cv-smoke --force                                            # a smoke test, a minute on a CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folds", type=int, default=5, help="group folds (default 5)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="worker processes, one torch thread each (default: CPUs - 1)")
    p.add_argument("--variants", default="frozen-logistic,frozen-torch,scratch",
                   help="comma-separated: frozen-logistic, frozen-torch, finetune, scratch")
    p.add_argument("--profile", default="quick", choices=["quick", "full"], help="stage 1 and stage 2 profile")
    p.add_argument("--encoder", default=None, help="a segmentation best.pt to use instead of training stage 1")
    p.add_argument("--seg-epochs", type=int, default=None, help="stage 1 epochs (default: the profile's)")
    p.add_argument("--epochs", type=int, default=None, help="stage 2 epoch cap for the torch heads")
    p.add_argument("--size", type=int, default=None, help="classifier input size (default: the profile's)")
    p.add_argument("--views", default=None, choices=["augment", "mean", "identity"], help="logistic head's views")
    p.add_argument("--specificity", type=float, default=None, help="any-slice threshold's target specificity")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/classifier_cv", help="output folder (default results/classifier_cv)")
    p.add_argument("--force", action="store_true", help="overwrite OUT's cv.json and cv.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    if (out / "cv.json").exists() and not args.force:
        print(f"{out}/cv.json exists: pass --force to overwrite", file=sys.stderr)
        return 2
    from crlearn.tasks.classifier_cv import cross_validate_classifier, write_cv

    overrides = {k: getattr(args, k) for k in ("epochs", "size", "views", "specificity") if getattr(args, k) is not None}
    seg = {"epochs": args.seg_epochs} if args.seg_epochs is not None else {}
    t0 = time.perf_counter()
    result = cross_validate_classifier(args.folds, variants=args.variants.split(","), encoder=args.encoder,
                                       profile=args.profile, seed=args.seed, jobs=args.jobs, device=args.device,
                                       workdir=out, seg_overrides=seg,
                                       log=lambda line: print(f"[{time.perf_counter() - t0:6.0f} s] {line}",
                                                              flush=True), **overrides)
    result["command"] = "PYTHONPATH=. python scripts/classifier_cv.py " + " ".join(sys.argv[1:] if argv is None else argv)
    paths = write_cv(result, out)
    print((out / "cv.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
