#!/usr/bin/env bash
# Issue 14's question: {DDPM objective (sigmoid, v, Min-SNR), flow matching} x {latent, pixel} at
# equal training compute (same optimizer steps, same batch), each scored at 10, 20 and 50 network
# evaluations per sampler with evaluate.py. Every command is printed before it runs.
#
#   bash experiments/objectives.sh cpu  ROOT [N]   # the 1.0M UNet of experiments/compare, EPOCHS (20) epochs
#   bash experiments/objectives.sh gpu  ROOT [N]   # the default UNet and epochs on one GPU
#   bash experiments/objectives.sh tiny ROOT [N]   # a smoke run of the script itself (minutes, meaningless numbers)
#
# N samples per row (default 10000). ROOT receives logs/, the latent cache and ROOT/objectives/: per
# model <row>/ckpt and train_seconds, per scored row <row>.<sampler>_<steps>/ (metrics.json, samples.npz, grid.png). Needs a VAE and a classifier: VAE_CKPT / CLASSIFIER_CKPT, else
# the latest runs under ROOT (python train.py model=vae / model=classifier paths.root_dir=ROOT).
# MNIST from LDM_DATA_DIR. Rows already scored (metrics.json present) are skipped: rerun to continue.
# ROWS="latent_ddpm latent_flow" (any of latent_ddpm latent_flow pixel_ddpm pixel_flow) runs a subset, in that order.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script
profile=${1:?usage: objectives.sh cpu|gpu|tiny ROOT [N]}
root=$(realpath -m "${2:?usage: objectives.sh cpu|gpu|tiny ROOT [N]}")
n=${3:-10000}
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "N=$n must be a positive number of samples" >&2; exit 2; }
[[ $profile =~ ^(cpu|gpu|tiny)$ ]] || { echo "unknown profile $profile (cpu | gpu | tiny)" >&2; exit 2; }
for row in ${ROWS:-}; do
  [[ $row =~ ^(latent_ddpm|latent_flow|pixel_ddpm|pixel_flow)$ ]] || {
    echo "ROWS: unknown row $row (latent_ddpm latent_flow pixel_ddpm pixel_flow)" >&2; exit 2; }
done
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/experiments/lib.sh"  # latest, absolute_env, stage_checkpoint
absolute_env VAE_CKPT CLASSIFIER_CKPT LDM_DATA_DIR
cd "$here"
vae=$(stage_checkpoint VAE_CKPT vae "$root/logs/latest/vae.json")
classifier=$(stage_checkpoint CLASSIFIER_CKPT classifier "$root/logs/latest/classifier.json")

case $profile in
  cpu)  train=(trainer=cpu trainer.max_epochs="${EPOCHS:-20}" model.unet.base_channels=32 data.batch_size=256
               model.scheduler.warmup_steps=200) ;;
  gpu)  train=(trainer=gpu) ;;
  tiny) train=(trainer=cpu trainer.max_epochs=1 +trainer.limit_train_batches=20 model.unet.base_channels=8
               model.unet.num_res_blocks=1 data.batch_size=64 model.scheduler.warmup_steps=5) ;;
  *) echo "unknown profile $profile (cpu | gpu | tiny)" >&2; exit 2 ;;
esac
common=("paths.root_dir=$root" callbacks.sample_quality=null callbacks.images.every_n_epochs=5 test=false)
out="$root/objectives"
mkdir -p "$out"

fit() {  # row name, overrides...: train one model unless done; its checkpoint path -> $out/<row>/ckpt
  local name=$1; shift
  [[ -s $out/$name/ckpt ]] && return
  local start=$SECONDS
  echo "+ python train.py model=ldm $* ${train[*]} ${common[*]}"
  python train.py model=ldm "$@" "${train[@]}" "${common[@]}"
  mkdir -p "$out/$name"
  python -c "import json,sys; print(json.load(open(sys.argv[1]))['ckpt_path'])" "$registry/ldm.json" > "$out/$name/ckpt"
  echo $((SECONDS - start)) > "$out/$name/train_seconds"
}

score() {  # model row, sampler, steps, extra...: evaluate.py into $out/<row>.<sampler>_<steps>
  local name=$1 sampler=$2 steps=$3; shift 3
  local dir="$out/$name.${sampler}_$steps"
  [[ -s $dir/metrics.json ]] && return
  local cmd=(python evaluate.py "ckpt=$(cat "$out/$name/ckpt")" "classifier_ckpt=$classifier" "num_samples=$n"
             "sampler=$sampler" "steps=$steps" "out=$dir" "paths.root_dir=$root" "$@")
  echo "+ ${cmd[*]}"
  "${cmd[@]}" > /dev/null
}

scores() {  # model row, evaluations (10 | 20 | 50): every sampler of its family at that many network evaluations
  local row=$1 nfe=$2
  case $row in
    *_ddpm) score "$row" ddim "$nfe"   # eta = 1: the diffusion default
            [[ $nfe != 50 ]] && score "$row" dpmpp "$nfe" ;;
    *_flow) score "$row" euler "$nfe"; score "$row" flow_ancestral "$nfe"
            score "$row" heun $(( (nfe + 1) / 2 )) ;;   # Heun: 2 steps - 1 = 9, 19, 49 evaluations
  esac
  return 0
}
rows=(${ROWS:-latent_ddpm latent_flow pixel_ddpm pixel_flow})
for row in "${rows[@]}"; do   # each model trained, then scored at 10 and 20 evaluations; the 50s come last
  case $row in
    latent_ddpm) fit $row "vae_ckpt=$vae" ;;
    latent_flow) fit $row "vae_ckpt=$vae" objective=flow ;;
    pixel_ddpm)  fit $row first_stage=pixel ;;
    pixel_flow)  fit $row first_stage=pixel objective=flow ;;
    *) echo "unknown row $row (latent_ddpm latent_flow pixel_ddpm pixel_flow)" >&2; exit 2 ;;
  esac
  echo "$row: trained in $(cat "$out/$row/train_seconds") s"
  scores $row 10; scores $row 20
done
for row in "${rows[@]}"; do scores $row 50; done
python experiments/results_table.py "$out"/*.*/metrics.json
