"""Studies from a DICOMweb PACS and results stored back (QIDO-RS, WADO-RS, STOW-RS with
``dicomweb-client``).

Credentials never go on the command line: ``SPINE_APP_DICOMWEB_USER`` / ``SPINE_APP_DICOMWEB_PASSWORD``
(HTTP basic) or ``SPINE_APP_DICOMWEB_TOKEN`` (bearer) from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spine_app.data.io import write_atomic
from spine_app.engines.dicom_out import report_description

#: film modalities the project reads (CR and DX; MONAI Label's own DICOMweb datastore lists CT only)
FILM_MODALITIES = ("DX", "CR")
#: SOP classes of the results (never fetched as films)
RESULT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33"}


class PacsError(RuntimeError):
    """A PACS operation that failed: ``str(err)`` is one line naming the study and the reason."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def connect(url: str) -> Any:
    """A DICOMweb client for ``url`` (e.g. http://127.0.0.1:8042/dicom-web) with the credentials of the
    environment (see the module docstring)."""
    import logging

    import requests
    from dicomweb_client.api import DICOMwebClient

    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # one line per request otherwise
    session = requests.Session()
    user, password = os.environ.get("SPINE_APP_DICOMWEB_USER"), os.environ.get("SPINE_APP_DICOMWEB_PASSWORD")
    if user and password:
        session.auth = (user, password)
    token = os.environ.get("SPINE_APP_DICOMWEB_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=url.rstrip("/"), session=session)


def _value(item: dict, tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def find_studies(client: Any, patient_id: str | None = None, dates: str | None = None) -> list[str]:
    """StudyInstanceUIDs of CR/DX studies (QIDO-RS), optionally of one patient and a StudyDate range
    ``YYYYMMDD-YYYYMMDD``."""
    found: list[str] = []
    for modality in FILM_MODALITIES:
        filters: dict[str, Any] = {"ModalitiesInStudy": modality}
        if patient_id:
            filters["PatientID"] = patient_id
        if dates:
            filters["StudyDate"] = dates
        try:
            answers = client.search_for_studies(search_filters=filters)
        except Exception as err:  # noqa: BLE001 - requests/HTTP errors: one line
            raise PacsError(
                f"{getattr(client, 'base_url', 'server')}: study search failed ({_one_line(err)})"
            ) from None
        for item in answers:
            uid = _value(item, "0020000D")
            if uid and uid not in found:
                found.append(uid)
    return found


def fetch_study(client: Any, study_uid: str, folder: str | Path) -> list[Path]:
    """Download the study's film instances (WADO-RS; not SEG/SR results) into ``folder``/<SOPInstanceUID>.dcm.

    Raises:
        PacsError: the study is unknown, has no film, or the server failed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        instances = client.search_for_instances(study_instance_uid=study_uid)
    except Exception as err:  # noqa: BLE001
        raise PacsError(f"study {study_uid}: cannot list its instances ({_one_line(err)})") from None
    films = [i for i in instances if _value(i, "00080016") not in RESULT_SOP_CLASSES]
    if not films:
        raise PacsError(f"study {study_uid}: not found on the server or no film in it")
    paths = []
    for item in films:
        series, sop = _value(item, "0020000E"), _value(item, "00080018")
        try:
            ds = client.retrieve_instance(study_uid, series, sop)
        except Exception as err:  # noqa: BLE001
            raise PacsError(f"study {study_uid}: cannot retrieve instance {sop} ({_one_line(err)})") from None
        path = folder / f"{sop}.dcm"
        write_atomic(path, lambda tmp, ds=ds: ds.save_as(str(tmp)))
        paths.append(path)
    return paths


def has_report(client: Any, study_uid: str, model_sha: str) -> bool:
    """True when the study already holds our SR made with the model ``model_sha`` (its series
    description names the model's SHA-256 prefix)."""
    try:
        series = client.search_for_series(
            study_instance_uid=study_uid, search_filters={"Modality": "SR"}, fields=["SeriesDescription"]
        )
    except Exception as err:  # noqa: BLE001
        raise PacsError(f"study {study_uid}: cannot list its series ({_one_line(err)})") from None
    wanted = report_description(model_sha)
    return any(_value(s, "0008103E") == wanted for s in series)


def store_results(client: Any, study_uid: str, files: list[Path]) -> None:
    """Store the study's SEG and SR files in one STOW-RS request (all or none is sent).

    Raises:
        PacsError: a file is missing or the server rejected the store.
    """
    import pydicom

    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise PacsError(f"study {study_uid}: results not built ({', '.join(missing)}): nothing stored")
    datasets = [pydicom.dcmread(str(f)) for f in files]
    try:
        client.store_instances(datasets=datasets, study_instance_uid=study_uid)
    except Exception as err:  # noqa: BLE001
        raise PacsError(f"study {study_uid}: the server did not store the results ({_one_line(err)})") from None
