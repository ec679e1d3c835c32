#!/usr/bin/env bash
# Re-execute every notebook in reading order, in place, to refresh its stored outputs and figures.
# Run from anywhere: bash notebooks/execute_all.sh  [NOTEBOOK ...]
set -euo pipefail
# one thread, as each pytest worker runs its notebooks (conftest.py): stored outputs then match what the tests compute
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")"
notebooks=("$@")
[ ${#notebooks[@]} -gt 0 ] || notebooks=([0-9][0-9]_*.ipynb)
for nb in "${notebooks[@]}"; do
  start=$(date +%s)
  jupyter nbconvert --to notebook --execute --inplace \
    --ExecutePreprocessor.store_widget_state=False --ExecutePreprocessor.timeout=1800 "$nb"
  # keep per-cell execution timestamps out of the stored notebook (they change on every run),
  # and join a print that reached the kernel's stdout in pieces into one stream output, as a reader sees it
  python3 tidy_outputs.py "$nb"  # (we are in notebooks/)
  echo "$nb: $(( $(date +%s) - start )) s"
done
