#!/usr/bin/env bash
# Classifier-free guidance sweep (issue 5): conditional accuracy and FID for w = 0, 1, 2, 3, 5 on
# class-balanced samples (0..9 in turn) of a class-conditional LDM, scored by evaluate.py.
#   bash experiments/guidance.sh CKPT OUT_DIR [N] [extra overrides...]     (N default 10000)
set -euo pipefail
ckpt=${1:?usage: guidance.sh CKPT OUT_DIR [N] [overrides...]}
out=${2:?usage: guidance.sh CKPT OUT_DIR [N] [overrides...]}
n=${3:-10000}
shift $(( $# < 3 ? $# : 3 ))
for w in 0 1 2 3 5; do
  cmd="python evaluate.py ckpt=$ckpt num_samples=$n guidance=$w out=$out/w$w $*"
  echo "+ $cmd"
  $cmd >/dev/null
done
python experiments/results_table.py "$out"/w*/metrics.json
