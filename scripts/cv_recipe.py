"""Cross-validate one recipe given as JSON, for the fields ``crlearn cv`` has no flag for (e.g. ``model``: CR-Net
config overrides of the profile's). The same library call as ``crlearn cv`` (:func:`crlearn.tasks.cv.cross_validate`),
the same cv.json and cv.md.

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
    from crlearn.tasks.cv import Recipe, cross_validate, cv_markdown
    from crlearn.training.checkpoint import atomic_write_bytes, fresh_path

    fields = json.loads(args.recipe)
    if "data" not in fields:
        from crlearn.data.folder import default_data_dir

        fields["data"] = [str(default_data_dir())]
    recipe = Recipe.from_dict({"name": args.out.name, **fields})
    out = fresh_path(args.out, explicit=True, force=False, is_dir=True)
    result = cross_validate(recipe, n_folds=args.folds, seed=args.seed, device=args.device, progress=False, out=out,
                            log=lambda line: print(f"cv_recipe: {line}", flush=True))
    md = cv_markdown(result.summary)
    atomic_write_bytes(out / "cv.md", md.encode())
    print(md)


if __name__ == "__main__":
    main()
