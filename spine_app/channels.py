"""The eight-mask channel contract (docs/design.md): names, views, file-name aliases and the
per-view keys of a study batch (:func:`seg_key`, :func:`avail_key`, :func:`geom_key`).

Channel order is fixed everywhere: network output, mask files, metadata ``channel_def`` and reports.
"""

from __future__ import annotations

import re

VIEWS: tuple[str, str] = ("AP", "LAT")

MASK_NAMES: tuple[str, ...] = (
    "Ap_Vertebra",
    "Ap_Pedicle",
    "Ap_Spinous_Process",
    "Lat_Vertebra",
    "Lat_Spinous_Process",
    "Lat_Disk_Height",
    "Lat_Anterior_Vertebral_Line",
    "Lat_Posterior_Vertebral_Line",
)

#: a view's name in batch keys ("AP" -> "ap"), in VIEWS order
VIEW_KEYS: tuple[str, str] = ("ap", "lat")


def view_key(view: str) -> str:
    """The batch-key name of ``view``: "AP"/"ap" -> "ap", "LAT"/"lat" -> "lat"."""
    key = view.lower()
    if key not in VIEW_KEYS:
        raise ValueError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    return key


# The per-view keys of a study sample/batch (LoadStudyd writes them, prepare_study_batch moves them,
# the network's outputs use seg_<view> too): the view's image is the key itself ("ap", "lat").
def seg_key(view: str) -> str:
    """Key of a view's eight-channel masks (truth in a batch, logits in the network's outputs): "seg_ap"."""
    return f"seg_{view_key(view)}"


def avail_key(view: str) -> str:
    """Key of a view's per-channel availability of the truth masks (eight flags): "avail_ap"."""
    return f"avail_{view_key(view)}"


def geom_key(view: str) -> str:
    """Key of a view's film geometry (``FilmGeometry.to_tensor()``): "geom_ap"."""
    return f"geom_{view_key(view)}"


#: view of each channel, in channel order
CHANNEL_VIEW: tuple[str, ...] = tuple("AP" if name.startswith("Ap_") else "LAT" for name in MASK_NAMES)

#: channels drawn as thin lines (scored additionally with clDice / NSD)
LINE_CHANNELS: tuple[str, ...] = ("Lat_Anterior_Vertebral_Line", "Lat_Posterior_Vertebral_Line")


def channels_of_view(view: str) -> list[int]:
    """Indices of the channels annotated on ``view`` ("AP" or "LAT")."""
    return [i for i, v in enumerate(CHANNEL_VIEW) if v == view]


def normalize_name(name: str) -> str:
    """Lower-case a file stem and drop every non-alphanumeric character ("Lat_Disk-Height" -> "latdiskheight")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


# Structure names without the view prefix, with the spellings seen in the seed reports and common variants.
_STRUCTURE_ALIASES: dict[str, tuple[str, ...]] = {
    "Vertebra": ("vertebra", "vertebrae", "vertebralbody", "body"),
    "Pedicle": ("pedicle", "pedicles"),
    "Spinous_Process": ("spinousprocess", "spinousproc", "spinous", "spinousprocesses"),
    "Disk_Height": ("diskheight", "discheight", "disk", "disc", "diskspace", "discspace"),
    "Anterior_Vertebral_Line": ("anteriorvertebralline", "anteriorline", "antline", "anteriorvertebrallines"),
    "Posterior_Vertebral_Line": ("posteriorvertebralline", "posteriorline", "postline", "posteriorvertebrallines"),
}
_VIEW_PREFIXES: dict[str, tuple[str, ...]] = {"AP": ("ap",), "LAT": ("lat", "lateral", "ll")}


def _build_alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for mask_name in MASK_NAMES:
        view = "AP" if mask_name.startswith("Ap_") else "LAT"
        structure = mask_name.split("_", 1)[1]
        for prefix in _VIEW_PREFIXES[view]:
            for alias in _STRUCTURE_ALIASES[structure]:
                table[prefix + alias] = mask_name
    return table


_MASK_ALIASES = _build_alias_table()


def mask_name_for(stem: str, view_hint: str | None = None) -> str | None:
    """Canonical mask name for a file stem, or None if the stem names no mask.

    ``view_hint`` ("AP"/"LAT") resolves unprefixed names found in an ``AP/`` or ``LAT/`` sub-folder,
    e.g. ``LAT/Disk_Height.png`` -> ``Lat_Disk_Height``.
    """
    key = normalize_name(stem)
    if key in _MASK_ALIASES:
        return _MASK_ALIASES[key]
    if view_hint is not None:
        for prefix in _VIEW_PREFIXES[view_hint]:
            if prefix + key in _MASK_ALIASES:
                return _MASK_ALIASES[prefix + key]
    return None


_VIEW_IMAGE_STEMS: dict[str, str] = {
    "ap": "AP",
    "apview": "AP",
    "apimage": "AP",
    "pa": "AP",
    "lat": "LAT",
    "lateral": "LAT",
    "latview": "LAT",
    "latimage": "LAT",
    "lateralview": "LAT",
}


def view_for_image_stem(stem: str) -> str | None:
    """View named by an image file stem ("AP", "lat", "Lateral_view" ...), or None."""
    return _VIEW_IMAGE_STEMS.get(normalize_name(stem))


def view_for_folder(name: str) -> str | None:
    """View named by a sub-folder ("AP/", "LAT/", "Lateral/"), or None."""
    return view_for_image_stem(name)
