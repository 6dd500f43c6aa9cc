"""`python train.py ...` in a checkout: the same as the `ldm-train` command (ldm/cli/train.py)."""

from ldm.cli.train import main

if __name__ == "__main__":
    main()
