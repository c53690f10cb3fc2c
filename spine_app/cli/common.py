"""Helpers the command modules share: refusing a bad command line, comma-separated values."""

from __future__ import annotations

import sys
from typing import NoReturn


def _refuse(message: str, status: int = 2) -> NoReturn:
    """Print one line "error: MESSAGE" to stderr and exit with ``status`` (2: a bad command line)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _names(value: str | tuple | list | None) -> list[str] | None:
    """A comma-separated CLI value (fire may already have split it into a tuple) as a list."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()] or None
