"""Transforms found inside a transform pipeline (nested MONAI ``Compose`` objects included)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def transforms_of(transform: Any, kind: type[T]) -> Iterator[T]:
    """Every transform of type ``kind`` in ``transform`` (a transform or a Compose, searched recursively)."""
    if isinstance(transform, kind):
        yield transform
    for inner in getattr(transform, "transforms", ()) or ():
        yield from transforms_of(inner, kind)


__all__ = ["transforms_of"]
