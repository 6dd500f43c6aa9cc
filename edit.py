"""`python edit.py ...` in a checkout: the same as the `ldm-edit` command (ldm/cli/edit.py)."""

from ldm.cli.edit import main

if __name__ == "__main__":
    main()
