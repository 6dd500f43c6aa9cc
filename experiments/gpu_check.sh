#!/usr/bin/env bash
# Issue 17's one prepared device check: everything a GPU session should measure, in one command,
# writing every table, JSON, log and sample grid under OUT.
#
#   bash experiments/gpu_check.sh OUT          # one GPU: bench (eager + compiled, with the diffusers
#                                               # reference row) and the whole pipeline at the GPU
#                                               # defaults, scored with 10k samples (target <= 8 min)
#   bash experiments/gpu_check.sh OUT quick    # the same steps on the CPU with tiny sizes (a test runs it)
#
# On the device machine: `bash ../shared/tools/device-prep.sh` once, then
#   source .device/activate.sh && bash experiments/gpu_check.sh "$OUT/check"
# MNIST from LDM_DATA_DIR. The classifier that scores the samples is trained outside the pipeline's clock.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUT [quick]}
mode=${2:-full}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
mkdir -p "$out"
case $mode in
  full)  bench=(); pipeline=gpu ;;
  quick) bench=(--quick); pipeline=tiny ;;
  *) echo "unknown mode $mode (full | quick)" >&2; exit 2 ;;
esac
start=$SECONDS
{
  echo "# gpu_check $mode, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  python -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', '| torch', torch.__version__)"
} | tee "$out/environment.txt"
echo "+ bench (eager)"
python experiments/bench.py "${bench[@]}" --out "$out/bench_eager.json" | tee "$out/bench_eager.txt"
if [[ ${COMPILE:-1} != 0 ]]; then  # COMPILE=0 skips it (torch.compile on a CPU takes minutes)
  echo "+ bench (compiled)"
  python experiments/bench.py "${bench[@]}" --compile --out "$out/bench_compiled.json" | tee "$out/bench_compiled.txt"
fi
echo "+ pipeline ($pipeline; log: $out/pipeline.log)"
if ! bash experiments/pipeline.sh "$pipeline" "$out/pipeline" > "$out/pipeline.log" 2>&1; then
  tail -20 "$out/pipeline.log"
  echo "the pipeline failed; its log: $out/pipeline.log" >&2
  exit 1
fi
cat "$out/pipeline/pipeline_times.txt"
echo "gpu_check $mode done in $((SECONDS - start)) s; results in $out" | tee -a "$out/environment.txt"
