"""Wording shared by the service's messages."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and the noun in the number it needs: "1 point", "0 points", "2 dimensions"."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
