#!/bin/bash
# Issue #15 on one GPU, in one device run of at most 10 minutes: the CUDA tests (crlearn.training.fastpath included), the
# model-step benchmark (eager vs the CUDA-graph step, SMP's U-Net and the Table 7 variants, 256/512 px, batch 8/32,
# TFLOP/s beside the GPU's dense bf16 peak), then Table 7 over five group folds with the full profile (512 px, the
# graph step, early stopping), each row capped at $EPOCHS epochs.
#
# Usage, from the repository root:  scripts/gpu_fastpath.sh OUT_DIR
#   Everything goes to OUT_DIR (at most 8 files, as the device tool brings back): log.txt, bench_model.md,
#   bench_model.json, ablation_full_5fold_<gpu>/ablation.{json,md,png}. Copy them into results/ afterwards.
# Settings (environment variables):
#   EPOCHS=10        every row's epoch cap (early stopping, patience 20, can stop a row sooner)
#   MAX_MINUTES=0.2  every row's training-time cap, a safety net for the budget (recorded in ablation.json)
#   BUDGET=570       seconds for the whole script; each stage gets at most what is left (device runs end at 600 s)
#   STAGES="env tests bench ablate compile"  the stages to run, in this order
# The SMP U-Net baseline needs ./.whl: wheels of segmentation_models_pytorch (and pytorch_msssim for the tests), as
# scripts/gpu_h200.sh; the GPU machine has no network. Without them the bench skips SMP and says so. Best run on the
# nvidia-h200 kind: batch 32 at 512 px keeps an eager step's and a captured graph's activations at once.
set -u
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
OUT=$1
EPOCHS=${EPOCHS:-10}
MAX_MINUTES=${MAX_MINUTES:-0.2}
BUDGET=${BUDGET:-570}
STAGES=${STAGES:-env tests bench ablate compile}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH=$PWD
mkdir -p "$OUT"
L=$OUT/log.txt
if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl && export PYTHONPATH=$SITE:$PWD
fi
GPU=$(python3 -c "import torch; n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'; print(n.replace('NVIDIA', '').split()[0].lower())" 2>/dev/null || echo gpu)
step() { echo "===== $1 ($(date +%T), $(( $(date +%s) - T0 )) s in)" | tee -a "$L"; }
# run CAP CMD...: CMD under a timeout of CAP seconds or what is left of BUDGET, whichever is less
run() {
  local cap=$1 left=$(( BUDGET - ($(date +%s) - T0) ))
  shift
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 20 ]; then echo "skipped: ${cap} s left of the budget"; return 1; fi
  timeout "$cap" "$@"
}
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has env; then
  step env
  { echo "EPOCHS=$EPOCHS MAX_MINUTES=$MAX_MINUTES BUDGET=$BUDGET STAGES='$STAGES' gpu=$GPU"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'cpus', os.cpu_count())"
    python3 -c "import segmentation_models_pytorch as s; print('smp', s.__version__)" 2>&1 | tail -1
  } 2>&1 | tee -a "$L"
fi
if has tests; then
  step tests
  run 100 python3 -m pytest tests/test_cuda.py -q -x -k "not compile" -o addopts="" -p no:cacheprovider 2>&1 \
    | tail -15 | tee -a "$L"
fi
if has bench; then
  step bench-model
  run 150 python3 -m crlearn.cli.main bench model --sizes 256 512 --batch-sizes 8 32 --modes eager graph --steps 10 \
    --warmup 3 --device cuda --json "$OUT/bench_model.json" 2>&1 | tee "$OUT/bench_model.md" | tee -a "$L"
fi
if has ablate; then
  step ablate
  run 100000 python3 -m crlearn.cli.main ablate --profile full --folds 5 --epochs "$EPOCHS" --max-minutes "$MAX_MINUTES" \
    --device cuda --quiet --out "$OUT/ablation_full_5fold_$GPU" 2>&1 | tee -a "$L"
fi
if has compile; then
  step compile-test
  run 200 python3 -m pytest tests/test_cuda.py -q -k compile -o addopts="" -p no:cacheprovider 2>&1 \
    | tail -8 | tee -a "$L"
fi
step done
