#!/bin/bash
# Notebooks 04, 07, 08 in the full profile with shortened time caps. Needs ./.whl: wheels of segmentation_models_pytorch,
# pytorch_msssim, and ipywidgets with its dependencies (the GPU machine has no network); $OUT: output folder.
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
L=$OUT/log2.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/figs
run() { echo "===== $1 ($(date +%T))" | tee -a $L; timeout $2 python3 results/run_notebook_as_script.py notebooks/$1 /tmp/figs "$3" 2>&1 | grep -v "^---- cell" | tee -a $L; echo "rc ${PIPESTATUS[0]}" | tee -a $L; }
run 04_refinement_module.ipynb 50 '"max_minutes": 2.0}=>"max_minutes": 0.25}'
run 07_ablation.ipynb 85 'max_minutes=2.0)=>max_minutes=0.15)'
run 08_lesion_burden.ipynb 70 'max_minutes=5)=>max_minutes=0.5)'
echo "===== done ($(date +%T))" | tee -a $L
