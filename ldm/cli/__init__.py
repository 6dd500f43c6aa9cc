"""The command-line layer of train.py, sample.py and evaluate.py: the only part of ldm that knows
Hydra. The library below it takes plain values and built objects.

* `resolvers`: the `${...}` resolvers the configs use (run folders, the latest checkpoints, precision);
* `handler`: one-line user errors, exit statuses, stop signals, failed multirun jobs;
* `typecheck`: config values checked against the annotations of the classes they build,
  before anything is built.
"""
