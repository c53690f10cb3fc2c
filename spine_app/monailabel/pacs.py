"""MONAI Label on films from a DICOMweb PACS: the CR/DX films of the chosen studies are pulled into the
studies folder (``<StudyInstanceUID>_<VIEW>.dcm``, so a study's AP and LAT pair up by name as for any
studies folder), and a *final* label saved through the server goes back to the PACS as a DICOM SEG of
its film.

Why a pull instead of MONAI Label's own DICOMweb datastore: MONAI Label 0.8.5's datastore lists CT
only, takes a series for one image (an AP and a LAT in one series are stacked), converts films to 3-D
NIfTI and cannot read or write a SEG of a DX film. The pulled folder is served by the same guarded
datastore, infer and train tasks as a local folder, so every rule of the local server holds.

``pacs_sources.json`` in the studies folder records, per pulled image id, the server URL (never
credentials: those come from the environment, :func:`spine_app.pacs.dicomweb.connect`) and the
film's study, series and SOP instance UIDs. A file the pull did not write is never replaced; a film
pulled again is refreshed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spine_app.data.io import read_image, write_atomic
from spine_app.pacs.dicomweb import PacsError, connect, fetch_study, find_studies, store_results

logger = logging.getLogger(__name__)

SOURCES_FILE = "pacs_sources.json"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass
class PullSummary:
    """What :func:`pull_studies` did: image ids written, studies served, and one line per problem."""

    images: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_sources(studies: str | Path) -> dict[str, dict[str, str]]:
    """image id -> {"url", "study", "series", "sop"} of the films pulled into ``studies`` (empty without any)."""
    path = Path(studies) / SOURCES_FILE
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("images", {}))


def _film_view(path: Path, model: str | Path | None) -> str:
    """AP/LAT of a pulled film: its DICOM tags, else its pixels (confident guesses only).

    Raises:
        ValueError: neither tells the view (one line naming the film).
    """
    from spine_app.inference.run import view_of_file
    from spine_app.inference.view_guess import guess_view

    view = view_of_file(path)
    if view:
        return view
    guess = guess_view(path, model=model)
    if guess.confident:
        return guess.view
    raise ValueError(f"{path.name}: the film's DICOM tags do not name its view and its pixels do not show it clearly")


def pull_studies(
    url: str,
    studies: str | Path,
    study_uids: list[str] | None = None,
    patient: str | None = None,
    dates: str | None = None,
    model: str | Path | None = None,
) -> PullSummary:
    """Pull the CR/DX films of ``study_uids`` (default: every CR/DX study the server finds, optionally of
    one ``patient`` and a ``dates`` range YYYYMMDD-YYYYMMDD) into the studies folder ``studies``.

    Each film becomes ``<StudyInstanceUID>_<VIEW>.dcm`` (view from its tags, else its pixels, guessed
    with ``model``); a study's second film of the same view is not served (a warning names it). A
    failing study is one line in ``errors``; the others go on.
    """
    import pydicom

    studies = Path(studies)
    studies.mkdir(parents=True, exist_ok=True)
    summary = PullSummary()
    client = connect(url)
    try:
        uids = list(study_uids or []) or find_studies(client, patient, dates)
    except PacsError as err:
        summary.errors.append(str(err))
        return summary
    sources = read_sources(studies)
    for uid in uids:
        if not _UID.fullmatch(uid):
            summary.errors.append(f"study {uid[:64]!r}: not a DICOM UID (digits and dots)")
            continue
        with tempfile.TemporaryDirectory(prefix="spine-app-pull-") as tmp:
            try:
                films = fetch_study(client, uid, tmp)
            except PacsError as err:
                summary.errors.append(str(err))
                continue
            served: dict[str, str] = {}
            for film in films:
                header = pydicom.dcmread(str(film), stop_before_pixels=True)
                try:
                    view = _film_view(film, model)
                    read_image(film)  # a film the server sends but nobody can read is reported here
                except ValueError as err:
                    summary.errors.append(f"study {uid}: {str(err).splitlines()[0]}")
                    continue
                if view in served:
                    summary.warnings.append(
                        f"study {uid}: a second {view} film ({header.SOPInstanceUID}) is not served; {served[view]} is"
                    )
                    continue
                image_id = f"{uid}_{view}"
                target = studies / f"{image_id}.dcm"
                if target.exists() and image_id not in sources:
                    summary.warnings.append(
                        f"{target}: a file the PACS pull did not write; kept, study {uid} {view} not served"
                    )
                    continue
                write_atomic(target, lambda tmp_path, src=film: shutil.copyfile(src, tmp_path))
                served[view] = str(header.SOPInstanceUID)
                sources[image_id] = {
                    "url": url,
                    "study": uid,
                    "series": str(header.SeriesInstanceUID),
                    "sop": str(header.SOPInstanceUID),
                }
                summary.images.append(image_id)
            if served:
                summary.studies.append(uid)
    document = {"images": dict(sorted(sources.items()))}
    write_atomic(studies / SOURCES_FILE, lambda tmp_path: tmp_path.write_text(json.dumps(document, indent=1) + "\n"))
    return summary


def push_final_label(
    studies: str | Path, image_id: str, label_path: str | Path, model_version: str = "unknown"
) -> str | None:
    """Store the final label of a pulled film in its PACS study as a DICOM SEG (semi-automatic: an
    annotator corrected the model's pre-segmentation); returns the SEG's SOPInstanceUID, or None
    when ``image_id`` was not pulled from a PACS.

    Raises:
        PacsError: the SEG could not be built or the server did not store it (the local label stays).
    """
    from spine_app.engines.dicom_out import write_seg
    from spine_app.monailabel.encoding import decode_masks
    from spine_app.monailabel.studies import split_image_id

    source = read_sources(studies).get(image_id)
    if source is None:
        return None
    view = split_image_id(image_id)[1]
    film = Path(studies) / f"{image_id}.dcm"
    if view is None or not film.is_file():
        raise PacsError(f"image {image_id}: its pulled film {film.name} is missing: label kept locally only")
    with tempfile.TemporaryDirectory(prefix="spine-app-label-") as tmp:
        try:
            masks = decode_masks(read_image(label_path)[0], view)
            seg = write_seg(
                film,
                masks,
                view,
                Path(tmp) / "seg.dcm",
                model_version,
                algorithm_type="SEMIAUTOMATIC",
                series_description=f"spine-app {view} annotation (MONAI Label, final)",
            )
        except ValueError as err:
            raise PacsError(f"image {image_id}: cannot build its SEG ({str(err).splitlines()[0]})") from None
        store_results(connect(source["url"]), source["study"], [seg])
        import pydicom

        return str(pydicom.dcmread(str(seg), stop_before_pixels=True).SOPInstanceUID)


def push_quietly(
    studies: str | Path, image_id: str, label_path: str | Path, model_version: str = "unknown"
) -> dict[str, Any]:
    """:func:`push_final_label` for the server: never raises; {"stored": SOPInstanceUID} or
    {"error": one line} (logged), {} for a film that did not come from a PACS."""
    try:
        uid = push_final_label(studies, image_id, label_path, model_version)
    except PacsError as err:
        logger.warning("final label of %s kept locally; not stored in the PACS: %s", image_id, err)
        return {"error": str(err)}
    if uid is None:
        return {}
    logger.info("final label of %s stored in the PACS as SEG %s", image_id, uid)
    return {"stored": uid}


__all__ = ["SOURCES_FILE", "PullSummary", "pull_studies", "push_final_label", "push_quietly", "read_sources"]
