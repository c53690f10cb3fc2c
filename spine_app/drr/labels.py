"""Vertebra label-map conventions: which label value is which vertebra.

Presets (values as the public datasets/tools document them; no file of theirs is read):

* ``verse`` (VerSe 2019/2020 challenge): 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum,
  28 T13 (a transitional thirteenth thoracic vertebra, placed between T12 and L1).
* ``ctspine1k`` (CTSpine1K): the same vertebra values as VerSe, 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6;
  value 26, where present, is read as the sacrum.
* ``totalsegmentator`` (TotalSegmentator v2, task ``total``): 25 sacrum, 26 S1, 27 L5, 28 L4, 29 L3,
  30 L2, 31 L1, 32 T12 ... 43 T1, 44 C7 ... 50 C1 (top to bottom runs *down* in value). Every other
  value (organs, ribs, ...) is ignored; ``26 vertebrae_S1`` and ``25 sacrum`` are both read as the sacrum.

Levels are returned top to bottom; the sacrum, when labelled, is the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

CERVICAL = tuple(f"C{i}" for i in range(1, 8))
THORACIC = tuple(f"T{i}" for i in range(1, 13))
LUMBAR = tuple(f"L{i}" for i in range(1, 7))
SACRUM = "S1"
#: anatomical order top to bottom (T13 between T12 and L1)
ORDER: tuple[str, ...] = CERVICAL + THORACIC + ("T13",) + LUMBAR + (SACRUM,)


@dataclass(frozen=True)
class LabelConvention:
    """A named mapping of label values to vertebra names (others are background)."""

    name: str
    values: dict[int, str]

    def level(self, value: int) -> str | None:
        return self.values.get(int(value))

    def sorted_levels(self, present: list[int]) -> list[tuple[int, str]]:
        """(value, level) of the ``present`` values that name a vertebra, top to bottom."""
        found = [(int(v), self.values[int(v)]) for v in present if int(v) in self.values]
        # a sacrum labelled twice (TotalSegmentator's sacrum and S1) keeps the S1 body
        return sorted(found, key=lambda item: (ORDER.index(item[1]), -item[0]))


_VERSE = {i + 1: name for i, name in enumerate(CERVICAL + THORACIC + LUMBAR)} | {26: SACRUM, 28: "T13"}
_CTSPINE1K = {i + 1: name for i, name in enumerate(CERVICAL + THORACIC + LUMBAR)} | {26: SACRUM}
_TOTAL = (
    {25: SACRUM, 26: SACRUM}
    | {27 + i: f"L{5 - i}" for i in range(5)}
    | {32 + i: f"T{12 - i}" for i in range(12)}
    | {44 + i: f"C{7 - i}" for i in range(7)}
)

CONVENTIONS: dict[str, LabelConvention] = {
    "verse": LabelConvention("verse", _VERSE),
    "ctspine1k": LabelConvention("ctspine1k", _CTSPINE1K),
    "totalsegmentator": LabelConvention("totalsegmentator", _TOTAL),
}


def convention(name: str) -> LabelConvention:
    """The preset ``name``; ValueError (one line, listing the presets) for any other."""
    key = str(name).lower()
    if key not in CONVENTIONS:
        raise ValueError(f"unknown label convention {name!r}; choose from {', '.join(CONVENTIONS)}")
    return CONVENTIONS[key]
