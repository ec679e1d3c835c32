#!/usr/bin/env bash
# crlearn train for a few epochs inside a CPU quota, as in a container started with `docker run --cpus N` (workaround 4
# of crlearn.training.perf): once with crlearn's own thread count (the quota's) and once with torch's default (the
# machine's cores, forced with OMP_NUM_THREADS). Needs root and a cgroup-v1 cpu controller at /sys/fs/cgroup/cpu (the
# development VM's); the cgroup namespace makes the quota appear at /sys/fs/cgroup/cpu, where containers show it.
#   sudo bash scripts/cpu_quota_train.sh CPUS EPOCHS OUT     e.g. 1 2 /tmp/quota
set -euo pipefail
cpus=${1:?CPUS}; epochs=${2:?EPOCHS}; out=${3:?OUT}
group=/sys/fs/cgroup/cpu/crlearn_quota
mkdir -p "$group" "$out"
echo $((cpus * 100000)) > "$group/cpu.cfs_quota_us"
echo 100000 > "$group/cpu.cfs_period_us"
echo $$ > "$group/cgroup.procs"
cores=$(nproc)
unshare --cgroup --mount bash -c '
  umount /sys/fs/cgroup/cpu && mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu
  for mode in crlearn default; do
    if [ $mode = default ]; then export OMP_NUM_THREADS='"$cores"'; fi
    start=$(date +%s.%N)
    crlearn train --epochs '"$epochs"' --quiet --force --out '"$out"'/$mode > '"$out"'/$mode.log 2>&1
    end=$(date +%s.%N)
    python3 -c "import json; h = json.load(open(\"'"$out"'/$mode/history.json\")); print(\"$mode threads: wall %.1f s, epochs %s s\" % ($end - $start, [round(s, 1) for s in h[\"seconds\"]]))"
  done'
