"""The command-line layer: `train`, `sample` and `evaluate` (the `ldm-train`, `ldm-sample` and
`ldm-evaluate` commands; the repo's train.py, sample.py and evaluate.py call them), and the Python
API's `compose` / `train` (`api`). The only part of ldm that knows Hydra: the library below it
takes plain values and built objects.

* `resolvers`: the `${...}` resolvers the configs use (run folders, the latest checkpoints, precision);
* `handler`: one-line user errors, exit statuses, stop signals, failed multirun jobs;
* `typecheck`: config values checked against the annotations of the classes they build,
  before anything is built.
"""

from pathlib import Path


def _conf_dir() -> Path:
    """The repo's conf/ in a checkout (editable install), else the copy installed as `ldm/conf`."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return checkout if (checkout / "train.yaml").is_file() else Path(__file__).resolve().parents[1] / "conf"


CONF_DIR = _conf_dir()
