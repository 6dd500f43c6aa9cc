# Shared by the report scripts (source it before they cd to the repository).

# The checkpoint a registry entry names, or a one-line error.
latest() {
  [[ -s $1 ]] || { echo "no $1: train that stage first, or pass its checkpoint (see the header)" >&2; return 1; }
  python -c "import json,sys; print(json.load(open(sys.argv[1]))['ckpt_path'])" "$1"
}

# Paths the user gave relative to where they started the script, made absolute before it cds away:
# the named variables (VAE_CKPT, LDM_DATA_DIR, ...) when set.
absolute_env() {
  local name
  for name in "$@"; do
    if [[ -n ${!name:-} ]]; then export "$name=$(realpath -m "${!name}")"; fi
  done
}

# One line and exit 2 unless $1 is a readable checkpoint written by an ldm system of kind $2 (vae, ldm,
# classifier); $3 names the setting that gave it (e.g. CLASSIFIER_CKPT). Called before any training.
need_checkpoint() {
  python - "$@" <<'PY' || exit 2
import sys

from ldm.checkpoints import checkpoint_kind
from ldm.errors import UserError

path, kind, name = sys.argv[1:]
try:
    found = checkpoint_kind(path)
except UserError as e:
    sys.exit(f"{name}={path}: {e}")
if found != kind and not (kind == "vae" and found == "ae"):
    sys.exit(f"{name}={path} is a {found} checkpoint; it must be a {kind} one")
PY
}

# The checkpoint of one stage, printed: the variable $1 (e.g. VAE_CKPT) when set, else the latest run in
# the registry file $3; one line and exit 2 unless it exists and was written by a $2 run (vae, ldm, classifier).
#   vae=$(stage_checkpoint VAE_CKPT vae "$root/logs/latest/vae.json")
stage_checkpoint() {
  local path
  path=${!1:-$(latest "$3")}
  [[ -f $path ]] || { echo "$1=$path does not exist" >&2; exit 2; }
  need_checkpoint "$path" "$2" "$1"
  echo "$path"
}
