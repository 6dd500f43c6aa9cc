#!/usr/bin/env bash
# The VAE-vs-LDM comparison (issue 4): score the VAE prior and the LDM under each sampler with
# evaluate.py, then print one table. Each row's command is printed before it runs.
#   bash experiments/compare.sh OUT_DIR [N] [N_DDPM]      (N samples per row, default 10000)
# Uses the latest VAE, LDM and classifier runs (logs/latest/*.json); override with
#   VAE_CKPT=... LDM_CKPT=... CLASSIFIER_CKPT=... REGISTRY=DIR EXTRA="paths.log_dir=..."
# Each row's evaluate.py output goes to OUT_DIR/<row>.log (its last lines are shown if it fails).
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script
out=$(realpath -m "${1:?usage: compare.sh OUT_DIR [N] [N_DDPM]}")
n=${2:-10000}
n_ddpm=${3:-$n}
for count in "$n" "$n_ddpm"; do
  [[ $count =~ ^[1-9][0-9]*$ ]] || { echo "N=$count must be a positive number of samples" >&2; exit 2; }
done
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/experiments/lib.sh"  # latest, absolute_env, stage_checkpoint
absolute_env VAE_CKPT LDM_CKPT CLASSIFIER_CKPT REGISTRY LDM_DATA_DIR
registry=${REGISTRY:-$here/logs/latest}
cd "$here"
vae=$(stage_checkpoint VAE_CKPT vae "$registry/vae.json")
ldm=$(stage_checkpoint LDM_CKPT ldm "$registry/ldm.json")
classifier=$(stage_checkpoint CLASSIFIER_CKPT classifier "$registry/classifier.json")
extra=${EXTRA:-}
mkdir -p "$out"

row() {  # name, ckpt, num_samples, sampler overrides...
  local name=$1 ckpt=$2 num=$3; shift 3
  local cmd=(python evaluate.py "ckpt=$ckpt" "classifier_ckpt=$classifier" "num_samples=$num" "out=$out/$name" "$@" $extra)
  echo "+ ${cmd[*]}"
  "${cmd[@]}" > "$out/$name.log" 2>&1 || { tail -n 3 "$out/$name.log" >&2; exit 1; }
}
row vae_prior "$vae" "$n"
row ddpm_1000 "$ldm" "$n_ddpm" sampler=ddpm
row ddim_50 "$ldm" "$n" sampler=ddim steps=50            # eta = 1 (the default)
row ddim_20 "$ldm" "$n" sampler=ddim steps=20
row ddim_10 "$ldm" "$n" sampler=ddim steps=10
row ddim_50_eta0 "$ldm" "$n" sampler=ddim steps=50 eta=0   # deterministic DDIM
row dpmpp_20 "$ldm" "$n" sampler=dpmpp steps=20
row dpmpp_10 "$ldm" "$n" sampler=dpmpp steps=10
python experiments/results_table.py "$out"/*/metrics.json
