"""Digit prompts: "one nine two 3 five 0" -> class labels [1, 9, 2, 3, 5, 0].

Tokens are number words (zero ... nine) or numerals (0 ... 9), case-insensitive, separated by
spaces and/or commas. One sample is drawn per token.
"""

from __future__ import annotations

import re

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TOKENS = {**{w: i for i, w in enumerate(WORDS)}, **{str(i): i for i in range(10)}}


def parse_digits(prompt: str) -> list[int]:
    """Labels for each token of `prompt`; an unknown token is a ValueError naming it."""
    tokens = [t for t in re.split(r"[\s,]+", str(prompt).strip().lower()) if t]
    if not tokens:
        raise ValueError("prompt is empty: give digits as words or numerals, e.g. prompt='one nine 2'")
    unknown = [t for t in tokens if t not in _TOKENS]
    if unknown:
        raise ValueError(f"prompt token(s) {unknown} are not digits: use zero..nine or 0..9")
    return [_TOKENS[t] for t in tokens]
