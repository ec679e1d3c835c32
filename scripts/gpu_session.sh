#!/bin/bash
# One device call on a one-GPU machine with 16 CPU cores (issue 25, and the cross-validation of issues 20 and 22):
#   GPU, in turn, alone on cores 0-1: the CUDA tests (graph route; compile last if time is left), the model-step
#   benchmark (eager vs the CUDA-graph step, 256/512 px, batch 8/32, beside SMP's U-Net), then Table 7 over five
#   group folds with the full profile at 512 px on the route the tests passed, every row capped at $EPOCHS epochs.
#   CPU cores 2-15 meanwhile: the quick profile's cross-validation grid (scripts/cv_grid.py, one thread a job), and
#   on the GPU beside the ablation the classifier's cross-validation (scripts/classifier_cv.py).
#
# Usage, from the repository root, with the bench extra's wheels in ./.whl (the machine has no network):
#   scripts/gpu_session.sh OUT_DIR
# Writes at most 8 files to OUT_DIR: log.txt, bench_model.{md,json}, ablation.tgz, cv_grid.tgz, classifier_cv.tgz.
set -u
OUT=$1
EPOCHS=${EPOCHS:-8}
MAX_MINUTES=${MAX_MINUTES:-0.3}
BUDGET=${BUDGET:-470}
CV_ONLY=${CV_ONLY:-ms_baseline ms_both_sets ms_standardize ms_no_val lung_128 lung_192 lung_standardize lung_no_val}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=1
mkdir -p "$OUT" /tmp/work
L=$OUT/log.txt
SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$SITE:$PWD
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step() { echo "===== $1 ($(date +%T), $(( $(date +%s) - T0 )) s in)" | tee -a "$L"; }
step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu | grep -E "Model name|^CPU\(s\)"
  python3 -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'cpus', os.cpu_count())"
  python3 -c "import segmentation_models_pytorch as s; print('smp', s.__version__)" 2>&1 | tail -1
  git log --oneline -1 2>/dev/null; echo "EPOCHS=$EPOCHS MAX_MINUTES=$MAX_MINUTES BUDGET=$BUDGET"
} 2>&1 | tee -a "$L"

# CPU side, in the background: the quick-profile grid on 14 cores, one thread a job
(taskset -c 2-15 timeout $(( BUDGET - 15 )) python3 scripts/cv_grid.py --workers 14 --device cpu --folds 3 \
   --then-report 5 --time-budget $(( BUDGET - 40 )) --only $CV_ONLY --out /tmp/work/cv_grid --force \
   > /tmp/work/cv_grid.log 2>&1; echo "cv_grid rc $?" >> /tmp/work/cv_grid.log) &
CV_PID=$!

step tests
taskset -c 0-1 timeout 90 python3 -m pytest tests/test_cuda.py -q -x -k "not compile" -o addopts="" \
  -p no:cacheprovider 2>&1 | tail -12 | tee -a "$L"
GRAPH_OK=${PIPESTATUS[0]}
ROUTE=off
[ "$GRAPH_OK" -eq 0 ] && ROUTE=graph

step bench-model
taskset -c 0-1 timeout 130 python3 -m crlearn bench model --sizes 256 512 --batch-sizes 8 32 --modes eager graph \
  --steps 10 --warmup 3 --device cuda --out "$OUT/bench_model.json" 2>&1 | tee "$OUT/bench_model.md" | tee -a "$L"

step "classifier-cv (background, GPU)"
(timeout $(( $(left) - 10 )) python3 scripts/classifier_cv.py --jobs 3 --device cuda --out /tmp/work/classifier_cv \
   --force > /tmp/work/classifier_cv.log 2>&1; echo "classifier_cv rc $?" >> /tmp/work/classifier_cv.log) &

step "ablate (route $ROUTE)"
taskset -c 0-1 timeout $(( $(left) - 25 )) python3 -m crlearn ablate --profile full --folds 5 --epochs "$EPOCHS" \
  --max-minutes "$MAX_MINUTES" --fast "$ROUTE" --device cuda --quiet --out /tmp/work/ablation 2>&1 | tail -20 | tee -a "$L"

if [ "$(left)" -gt 60 ]; then
  step compile-test
  taskset -c 0-1 timeout $(( $(left) - 20 )) python3 -m pytest tests/test_cuda.py -q -k compile -o addopts="" \
    -p no:cacheprovider 2>&1 | tail -6 | tee -a "$L"
fi
step wait-background
wait
tail -30 /tmp/work/cv_grid.log >> "$L"; tail -15 /tmp/work/classifier_cv.log >> "$L"
cd /tmp/work && for d in ablation cv_grid classifier_cv; do
  parts=$(ls -d "$d" "$d.log" 2>/dev/null)
  [ -n "$parts" ] && tar czf "$OUT/$d.tgz" $parts
done
step done
