#!/bin/bash
# One GPU session: CUDA tests, model and SSIM benchmarks, notebook 06 (full profile, time-capped), ablation (full).
# Usage, from the repository root: scripts/gpu_h200.sh OUT_DIR [SITE_DIR]
#   OUT_DIR: output folder (log.txt, nb06/, ablate/); SITE_DIR: where to install the wheels of ./.whl (default: a
#   new folder from mktemp -d). Needs ./.whl: wheels of segmentation_models_pytorch and pytorch_msssim (the GPU machine has no
#   network).
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT_DIR [SITE_DIR]" >&2
  exit 2
fi
OUT=$1
SITE=${2:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$OUT" "$SITE"
L=$OUT/log.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl && export PYTHONPATH=$SITE:$PWD  # wheels of segmentation_models_pytorch and pytorch_msssim (not on that machine)
step() { echo "===== $1 ($(date +%T))" | tee -a "$L"; }
step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch,torchvision,segmentation_models_pytorch as s;print(torch.__version__,torchvision.__version__,s.__version__,torch.cuda.get_device_name(0), 'cpus', __import__('os').cpu_count())"; } 2>&1 | tee -a "$L"
step tests
timeout 90 python3 -m pytest tests/test_cuda.py -q -o addopts="" -p no:cacheprovider 2>&1 | tail -15 | tee -a "$L"
step bench-model
timeout 100 python3 -m crlearn.cli.main bench model --sizes 128 256 512 --steps 10 --warmup 3 2>&1 | tee -a "$L"
step bench-ssim
timeout 40 python3 -m crlearn.cli.main bench ssim --steps 20 2>&1 | tail -12 | tee -a "$L"
step nb06
mkdir -p "$OUT/nb06"
timeout 140 python3 scripts/run_notebook_as_script.py notebooks/06_train_full_model.ipynb "$OUT/nb06" "max_minutes=8=>max_minutes=1.0" 2>&1 | tee -a "$L"
step ablate
timeout 270 python3 -m crlearn.cli.main ablate --profile full --max-minutes 0.7 --quiet --out "$OUT/ablate" 2>&1 | tee -a "$L"
step done
