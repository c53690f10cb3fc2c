"""Transforms found inside a transform pipeline (nested MONAI ``Compose`` objects included), and
their settings changed for the length of a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def transforms_of(transform: Any, kind: type[T]) -> Iterator[T]:
    """Every transform of type ``kind`` in ``transform`` (a transform or a Compose, searched recursively)."""
    if isinstance(transform, kind):
        yield transform
    for inner in getattr(transform, "transforms", ()) or ():
        yield from transforms_of(inner, kind)


@contextlib.contextmanager
def transforms_changed(found: Sequence[Any], changes: Sequence[dict[str, Any]]) -> Iterator[int]:
    """Within the block each of ``found`` has the attributes of its entry of ``changes``; yields how
    many there are. The previous values are restored on leaving, also after an error."""
    saved = [{name: getattr(t, name) for name in change} for t, change in zip(found, changes, strict=True)]
    try:
        for t, change in zip(found, changes, strict=True):
            for name, value in change.items():
                setattr(t, name, value)
        yield len(found)
    finally:
        for t, old in zip(found, saved, strict=True):
            for name, value in old.items():
                setattr(t, name, value)


__all__ = ["transforms_changed", "transforms_of"]
