#!/bin/bash
# Notebooks 04, 07, 08 in the full profile with shortened time caps.
# Usage, from the repository root: scripts/gpu_h200_notebooks.sh OUT_DIR [SITE_DIR]
#   OUT_DIR: output folder (log2.txt, figs/: the notebooks' figures); SITE_DIR: where to install the wheels of ./.whl
#   (default: a new folder from mktemp -d). Needs ./.whl: wheels of segmentation_models_pytorch, pytorch_msssim, and
#   ipywidgets with its dependencies (the GPU machine has no network).
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT_DIR [SITE_DIR]" >&2
  exit 2
fi
OUT=$1
SITE=${2:-$(mktemp -d)}
FIGS=$OUT/figs
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$OUT" "$SITE" "$FIGS"
L=$OUT/log2.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl && export PYTHONPATH=$SITE:$PWD
run() { echo "===== $1 ($(date +%T))" | tee -a "$L"; timeout $2 python3 scripts/run_notebook_as_script.py notebooks/$1 "$FIGS" "$3" 2>&1 | grep -v "^---- cell" | tee -a "$L"; echo "rc ${PIPESTATUS[0]}" | tee -a "$L"; }
run 04_refinement_module.ipynb 50 '"max_minutes": 2.0}=>"max_minutes": 0.25}'
run 07_ablation.ipynb 85 'max_minutes=2.0)=>max_minutes=0.15)'
run 08_lesion_burden.ipynb 70 'max_minutes=5)=>max_minutes=0.5)'
echo "===== done ($(date +%T))" | tee -a "$L"
