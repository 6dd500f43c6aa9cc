#!/usr/bin/env bash
# The whole pipeline, timed: VAE -> latent cache -> LDM -> samples (-> FID when a classifier exists).
#
#   bash experiments/pipeline.sh tiny [ROOT]   # CPU smoke profile: real MNIST, small nets (target <= 3 min)
#   bash experiments/pipeline.sh cpu  [ROOT]   # the CPU profile (experiment=vae_cpu, ldm_cpu): <= 30 min on 2 cores,
#                                              # then FID with 10k samples (target: <= 3x the floor)
#   bash experiments/pipeline.sh gpu  [ROOT]   # the default configs on one GPU, scored with 10k samples
#
# ROOT (default: a fresh folder under /tmp) receives logs/, the latent cache and samples, so the
# run never picks up checkpoints from elsewhere. MNIST comes from LDM_DATA_DIR (default: the repo's data/).
# The classifier for the FID is evaluation infrastructure: trained first, outside the clock,
# with profiles cpu and gpu (or reuse one: CLASSIFIER_CKPT=path). VAE_EXTRA / LDM_EXTRA: more overrides
# for the two stages (e.g. LDM_EXTRA="data.images.val_size=64" for a small dataset).
set -euo pipefail
profile=${1:?usage: pipeline.sh tiny|cpu|gpu [ROOT]}
root=${2:-$(mktemp -d /tmp/ldm-pipeline-XXXX)}
mkdir -p "$root"
here=$(cd "$(dirname "$0")/.." && pwd)
export LDM_DATA_DIR=${LDM_DATA_DIR:-$here/data}  # as train.py's default, not under ROOT
common=("paths.root_dir=$root" "logger=csv")

case $profile in
  tiny)
    vae=(model=vae trainer=cpu trainer.max_epochs=2 data.subset=10000 data.val_size=1000 data.batch_size=64
         "model.vae.hidden_channels=[16,32,32]" model.scheduler.warmup_steps=50 callbacks.images=null test=false)
    ldm=(model=ldm trainer=cpu trainer.max_epochs=6 data.images.subset=10000 data.images.val_size=1000
         data.batch_size=128 model.unet.base_channels=32 model.unet.num_res_blocks=1 model.optimizer.lr=2e-3
         model.scheduler.warmup_steps=50 callbacks.images=null callbacks.sample_quality=null test=false)
    sample=(num_samples=64 steps=20 device=cpu)
    evaluate=() judge=() ;;
  cpu)
    vae=(experiment=vae_cpu)
    ldm=(experiment=ldm_cpu)
    sample=(num_samples=64)
    evaluate=(num_samples=10000)
    judge=(trainer=cpu trainer.max_epochs=2) ;;
  gpu)
    vae=(experiment=vae_mnist trainer=gpu test=false)
    ldm=(experiment=ldm_mnist trainer=gpu callbacks.sample_quality=null test=false)
    sample=(num_samples=64)
    evaluate=(num_samples=10000 sampler=ddim steps=50)
    judge=(trainer=gpu) ;;
  *) echo "unknown profile $profile (tiny | cpu | gpu)" >&2; exit 2 ;;
esac

cd "$here"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
report() { local t=$(( $(ms) - $2 )); printf '%-8s %5d.%d s\n' "$1" $((t / 1000)) $((t % 1000 / 100)) | tee -a "$root/pipeline_times.txt"; }
stage() {  # name, command...: run it, print its wall-clock seconds
  local name=$1 start; shift
  start=$(ms)
  echo "+ $*"
  "$@"
  report "$name" "$start"
}

if [[ ${#evaluate[@]} -gt 0 && -z ${CLASSIFIER_CKPT:-} ]]; then  # outside the clock
  python train.py model=classifier "${judge[@]}" "${common[@]}" callbacks.images=null
fi
: > "$root/pipeline_times.txt"
total_start=$(ms)
stage vae python train.py "${vae[@]}" "${common[@]}" ${VAE_EXTRA:-}
stage ldm python train.py "${ldm[@]}" "${common[@]}" ${LDM_EXTRA:-}   # includes encoding the latent cache once
stage samples python sample.py "${sample[@]}" "registry_dir=$root/logs/latest" "out=$root/samples"
report total "$total_start"
if [[ ${#evaluate[@]} -gt 0 ]]; then
  python evaluate.py "${evaluate[@]}" "paths.root_dir=$root" "out=$root/eval" \
    ${CLASSIFIER_CKPT:+classifier_ckpt=$CLASSIFIER_CKPT}
fi
echo "outputs in $root (samples: $root/samples/grid.png)"
