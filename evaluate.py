"""`python evaluate.py ...` in a checkout: the same as the `ldm-evaluate` command (ldm/cli/evaluate.py)."""

from ldm.cli.evaluate import main

if __name__ == "__main__":
    main()
