"""The errors a user can fix, told apart from bugs.

Every error the framework raises for something the user controls (a config value, a missing or
wrong file, a full disk, a stop signal) is a `UserError`; its message names the problem and the
fix on one line. The command-line entry points (`ldm.cli`) print such an error as that one line
and exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal


def one_line(text: object) -> str:
    """A message on one line: its lines joined with '; ', whitespace collapsed."""
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    return "; ".join(line for line in lines if line)


class UserError(Exception):
    """Something the user can fix; the message says what and how, on one line."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value outside its valid range or of the wrong type; the message names the key."""


class Interrupted(UserError):
    """A run stopped by a signal (SIGTERM from a scheduler, Ctrl-C). Exit status 128 + signal."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
