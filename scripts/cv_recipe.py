"""Cross-validate one recipe given as JSON, for the fields ``crlearn cv`` has no flag for (e.g. ``model``: CR-Net
config overrides of the profile's). The same library call as ``crlearn cv`` (:func:`crlearn.tasks.cv.cross_validate`),
the same cv.json and cv.md (through ``crlearn.cli.cv.run_cv``).

    PYTHONPATH=. python scripts/cv_recipe.py --recipe '{"merge": true, "model": {"refine_channels": 4}, "val_fraction": 0}' \
        --folds 5 --seed 0 --out results/cv_refine_width/ms_r4

Recipe fields: :class:`crlearn.tasks.cv.Recipe` (``data`` defaults to the bundled MedSeg set). For teaching and
research; not a diagnosis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", required=True, help="JSON object of crlearn.tasks.cv.Recipe fields")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True, help="new folder for cv.json and cv.md")
    args = ap.parse_args()
    from crlearn.cli.cv import run_cv
    from crlearn.data.paths import default_data_dir
    from crlearn.tasks.cv import Recipe
    from crlearn.training.checkpoint import fresh_path

    fields = {"name": args.out.name, "data": [str(default_data_dir())], **json.loads(args.recipe)}
    out = fresh_path(args.out, explicit=True, force=False, is_dir=True)
    run_cv(argparse.Namespace(**vars(args), tta=True, quiet=True), out, Recipe.from_dict(fields))


if __name__ == "__main__":
    main()
