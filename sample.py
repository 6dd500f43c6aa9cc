"""`python sample.py ...` in a checkout: the same as the `ldm-sample` command (ldm/cli/sample.py)."""

from ldm.cli.sample import main

if __name__ == "__main__":
    main()
