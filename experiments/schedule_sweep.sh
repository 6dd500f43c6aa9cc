#!/usr/bin/env bash
# Issue 16 item 6: every schedule x {eps, v} x two seeds at equal steps -- one multirun -- then each
# job scored with evaluate.py (N samples, default 2000) and summarised in one table and one figure.
#
#   bash experiments/schedule_sweep.sh cpu  ROOT [N]   # the objective ablation's budget: 1.0M UNet, 4 epochs
#                                                      # at batch 256 = 860 steps per job (~5 min each on 2 cores)
#   bash experiments/schedule_sweep.sh tiny ROOT [N]   # a smoke run of the script (seconds per job, after
#                                                      # the one-time latent cache of MNIST: ~2 min on 2 cores)
#
# Needs a VAE and a classifier: VAE_CKPT / CLASSIFIER_CKPT, else the latest runs under ROOT. MNIST from
# LDM_DATA_DIR. SWEEP: more overrides for every job (e.g. data.images.val_size=64 on a small dataset);
# EVAL_EXTRA: more evaluate.py overrides (data overrides in SWEEP, e.g. a val_size, must be repeated here
# as data.val_size=...); GRID: another grid (e.g. GRID="schedule=linear,sigmoid seed=0,1"). Writes ROOT/logs/ldm/multiruns/<time>/{sweep.json, fid.png}.
set -euo pipefail
shopt -s inherit_errexit
profile=${1:?usage: schedule_sweep.sh cpu|tiny ROOT [N]}
root=$(realpath -m "${2:?usage: schedule_sweep.sh cpu|tiny ROOT [N]}")
n=${3:-2000}
case $profile in
  cpu)  budget=(trainer=cpu model.unet.base_channels=32 data.batch_size=256 model.scheduler.warmup_steps=200
                trainer.max_epochs=4) ;;
  tiny) budget=(trainer=cpu model.unet.base_channels=8 model.unet.num_res_blocks=1 data.batch_size=64
                trainer.max_epochs=1 +trainer.limit_train_batches=2 model.scheduler.warmup_steps=1) ;;
  *) echo "unknown profile $profile (cpu | tiny)" >&2; exit 2 ;;
esac
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "N=$n must be a positive number of samples" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/experiments/lib.sh"  # latest, absolute_env, stage_checkpoint
absolute_env VAE_CKPT CLASSIFIER_CKPT LDM_DATA_DIR
cd "$here"
vae=$(stage_checkpoint VAE_CKPT vae "$root/logs/latest/vae.json")
classifier=$(stage_checkpoint CLASSIFIER_CKPT classifier "$root/logs/latest/classifier.json")
python -c "import matplotlib" 2>/dev/null || { echo 'fid.png needs matplotlib: pip install -e ".[plot]"' >&2; exit 2; }
grid=(${GRID:-schedule=linear,scaled_linear,cosine,sigmoid,interpolation parameterization=eps,v seed=0,1})
before=$(ls -d "$root"/logs/ldm/multiruns/*/ 2>/dev/null | sort | tail -1 || true)
cmd=(python train.py -m model=ldm "${grid[@]}" "${budget[@]}" "vae_ckpt=$vae" "paths.root_dir=$root"
     callbacks.sample_quality=null callbacks.images.every_n_epochs=4 test=false logger=csv ${SWEEP:-})
echo "+ ${cmd[*]}"
"${cmd[@]}"
sweep=$(ls -d "$root"/logs/ldm/multiruns/*/ | sort | tail -1)
[[ $sweep != "$before" ]] || { echo "no new multirun folder under $root/logs/ldm/multiruns" >&2; exit 1; }
python experiments/schedule_sweep.py "$sweep" --classifier "$classifier" --num "$n" --extra paths.root_dir="$root" ${EVAL_EXTRA:-}
