#!/usr/bin/env bash
# The VAE-vs-LDM comparison (issue 4): score the VAE prior and the LDM under each sampler with
# evaluate.py, then print one table. Each row's command is printed before it runs.
#   bash experiments/compare.sh OUT_DIR [N] [N_DDPM]      (N samples per row, default 10000)
# Uses the latest VAE, LDM and classifier runs (logs/latest/*.json); override with
#   VAE_CKPT=... LDM_CKPT=... EXTRA="paths.log_dir=..."
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script
out=${1:?usage: compare.sh OUT_DIR [N] [N_DDPM]}
n=${2:-10000}
n_ddpm=${3:-$n}
source "$(dirname "$0")/lib.sh"  # latest
registry=${REGISTRY:-logs/latest}
vae=${VAE_CKPT:-$(latest "$registry/vae.json")}
ldm=${LDM_CKPT:-$(latest "$registry/ldm.json")}
extra=${EXTRA:-}

row() {  # name, ckpt, num_samples, sampler overrides...
  local name=$1 ckpt=$2 num=$3; shift 3
  local cmd="python evaluate.py ckpt=$ckpt num_samples=$num out=$out/$name $* $extra"
  echo "+ $cmd"
  $cmd >/dev/null
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
