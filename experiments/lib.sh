# Shared by the report scripts (source it): the checkpoint a registry entry names, or a one-line error.
latest() {
  [[ -s $1 ]] || { echo "no $1: train that stage first, or pass its checkpoint (see the header)" >&2; return 1; }
  python -c "import json,sys; print(json.load(open(sys.argv[1]))['ckpt_path'])" "$1"
}
