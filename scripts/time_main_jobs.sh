#!/usr/bin/env bash
# Wall-clock time of the three main jobs of issue 20, each measured alone (nothing else running), from the
# repository root, in the current environment: the README's main command, the lung two-class run, and the
# classifier's two stages. Writes OUT/timing.json and each run's folder under OUT/.
#   bash scripts/time_main_jobs.sh OUT
# A CPU without AVX-512 (float32 step, AVX2 kernels) on this machine's cores:
#   ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 bash scripts/time_main_jobs.sh OUT
set -euo pipefail
out=${1:?usage: time_main_jobs.sh OUT}
mkdir -p "$out"
jobs=(
  "train|crlearn train --quiet --out $out/train"
  "lung|crlearn train --quiet --data data_sample/covid19_ct_lung_infection --classes lung infection --out $out/lung"
  "classify|crlearn classify train --quiet --out $out/classify"
)
echo "{" > "$out/timing.json.tmp"
first=1
for job in "${jobs[@]}"; do
  name=${job%%|*}; cmd=${job#*|}
  start=$(date +%s.%N)
  $cmd > "$out/$name.log" 2>&1
  end=$(date +%s.%N)
  seconds=$(python3 -c "print(round($end - $start, 1))")
  echo "$name: $seconds s ($cmd)"
  [ $first = 1 ] || echo "," >> "$out/timing.json.tmp"
  first=0
  printf '  "%s": {"seconds": %s, "command": "%s"}' "$name" "$seconds" "$cmd" >> "$out/timing.json.tmp"
done
printf '\n}\n' >> "$out/timing.json.tmp"
mv "$out/timing.json.tmp" "$out/timing.json"
