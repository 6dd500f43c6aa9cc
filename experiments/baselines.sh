#!/usr/bin/env bash
# Issue 16 item 5: "VAE alone vs latent diffusion, fairly". One first-stage recipe (the CPU profile's,
# experiment=vae_cpu), three objectives -- the beta = 1e-3 VAE the LDM is built on, a beta = 1 VAE, a
# plain autoencoder (model=ae) -- each sampled from N(0, I) and from a Gaussian fitted to its training
# codes (prior=fitted), next to the LDM on the beta = 1e-3 VAE. Every row: evaluate.py, N samples
# against the floor, grid.png and the samples.npz it scored.
#
#   bash experiments/baselines.sh ROOT [N]
#
# VAE_CKPT: the beta = 1e-3 VAE (default: trained here); LDM_CKPT: an LDM on it (default: no LDM rows);
# CLASSIFIER_CKPT: the judge (default: the latest classifier under ROOT). MNIST from LDM_DATA_DIR.
# VAE_EXTRA / EVAL_EXTRA: more overrides for the trainings / evaluate.py (e.g. a small dataset's data.val_size).
# Rows already scored (metrics.json present) are skipped: rerun to continue.
set -euo pipefail
shopt -s inherit_errexit  # a failed training inside $(fit ...) stops the script
root=$(realpath -m "${1:?usage: baselines.sh ROOT [N]}")
n=${2:-10000}
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "N=$n must be a positive number of samples" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/experiments/lib.sh"  # latest, absolute_env, need_checkpoint, stage_checkpoint
absolute_env VAE_CKPT LDM_CKPT CLASSIFIER_CKPT LDM_DATA_DIR
cd "$here"
classifier=$(stage_checkpoint CLASSIFIER_CKPT classifier "$root/logs/latest/classifier.json")
if [[ -n ${VAE_CKPT:-} ]]; then need_checkpoint "$VAE_CKPT" vae VAE_CKPT; fi
if [[ -n ${LDM_CKPT:-} ]]; then need_checkpoint "$LDM_CKPT" ldm LDM_CKPT; fi
out="$root/baselines"
mkdir -p "$out"

fit() {  # name, overrides...: train one first stage under ROOT/<name> unless done; prints its checkpoint
  local name=$1; shift
  if [[ ! -s $out/$name.ckpt ]]; then
    local start=$SECONDS
    echo "+ python train.py experiment=vae_cpu $* paths.root_dir=$root/$name" >&2
    python train.py experiment=vae_cpu "$@" "paths.root_dir=$root/$name" logger=csv ${VAE_EXTRA:-} >&2
    local stage=vae; [[ " $* " == *" model=ae "* ]] && stage=ae
    latest "$root/$name/logs/latest/$stage.json" > "$out/$name.ckpt.tmp"
    mv "$out/$name.ckpt.tmp" "$out/$name.ckpt"
    echo $((SECONDS - start)) > "$out/$name.train_seconds"
  fi
  cat "$out/$name.ckpt"
}

score() {  # row, checkpoint, overrides...
  local row=$1 ckpt=$2; shift 2
  [[ -s $out/$row/metrics.json ]] && return
  local cmd=(python evaluate.py "ckpt=$ckpt" "classifier_ckpt=$classifier" "num_samples=$n" "out=$out/$row"
             "paths.root_dir=$root" "$@" ${EVAL_EXTRA:-})
  echo "+ ${cmd[*]}"
  "${cmd[@]}" > "$out/$row.log" 2>&1 || { tail -n 3 "$out/$row.log" >&2; exit 1; }
}

vae=${VAE_CKPT:-$(fit vae_beta1e-3)}
beta1=$(fit vae_beta1 model.beta=1)
ae=$(fit ae model=ae)
score vae_beta1e-3.standard "$vae"
score vae_beta1e-3.fitted "$vae" prior=fitted
score vae_beta1.standard "$beta1"
score vae_beta1.fitted "$beta1" prior=fitted
score ae.standard "$ae"
score ae.fitted "$ae" prior=fitted
if [[ -n ${LDM_CKPT:-} ]]; then
  score ldm.unconditional "$LDM_CKPT" guidance=0   # a class-conditional LDM's unconditional branch
  score ldm.conditional "$LDM_CKPT"                 # ... and guided by the class, its default
fi
python experiments/results_table.py "$out"/*/metrics.json
