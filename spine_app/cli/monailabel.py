"""``spine-app monailabel ...``: the MONAI Label app folder, studies folder and server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from spine_app.cli.common import _refuse


def monailabel_app(out: str | None = None, model: str | None = None, force: bool = False) -> None:
    """Write the MONAI Label app folder and print its path (for ``monailabel start_server --app``).

    Args:
        out: app folder (default ~/.local/share/spine-app/monailabel-app).
        model: weights to serve (default the bundle's shipped model.pt); kept if the app already
            serves (possibly fine-tuned) weights, unless --force.
        force: replace the served weights with --model (or the shipped model).
    """
    from spine_app.monailabel.appdir import write_app

    print(write_app(out, model, force))


def monailabel_prepare(dataset: str, out: str, link: bool = False, overwrite: bool = False) -> None:
    """Flatten a dataset (canonical layout) into a MONAI Label studies folder: <study>_AP/_LAT files
    and study_classes.json from the Normal/Damaged folders.

    Args:
        dataset: dataset root (e.g. data/synthetic).
        out: studies folder to fill; must be new or empty unless --overwrite.
        link: symlink the films instead of copying them.
        overwrite: write into a non-empty OUT: replace only the films of DATASET's studies and merge
            study_classes.json; everything else (e.g. saved labels/) is kept.
    """
    from spine_app.data.importer import DuplicateStudyError
    from spine_app.data.io import FolderNotEmptyError
    from spine_app.monailabel.studies import prepare_studies

    try:
        done = prepare_studies(dataset, out, copy=not link, overwrite=overwrite)
    except (FolderNotEmptyError, NotADirectoryError) as err:
        _refuse(str(err))
    except DuplicateStudyError as err:
        _refuse(str(err), 1)
    for note in done["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(f"{done['images']} films of {done['studies']} studies -> {out} ({done['classes']} with a class)")


def _repeated_flag(names: tuple[str, ...]) -> list[str]:
    """Every value of a flag given more than once on the command line (python-fire keeps only the last)."""
    args, values = sys.argv[1:], []
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in names:
            values += [value] if value else args[i + 1 : i + 2]
    return values if len(values) > 1 else []


def monailabel_serve(
    studies: str,
    app: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | None = None,
    cors_origin: str | list[str] | tuple[str, ...] | None = None,
    allow_delete: bool = False,
    max_upload_mb: float = 64.0,
    insecure: bool = False,
    dicomweb: str | None = None,
    study: str | list[str] | tuple[str, ...] | None = None,
    patient: str | None = None,
    dates: str | None = None,
    **conf: str,
) -> None:
    """Start the MONAI Label server on a studies folder (writes the app folder first if needed).

    Ids and tags must be plain names (no paths); see docs/monailabel.md, "Security". With --dicomweb,
    the CR/DX films of the PACS studies are first pulled into STUDIES (<StudyInstanceUID>_<VIEW>.dcm)
    and final labels saved through the server go back to the PACS as DICOM SEG (docs/pacs.md).

    Args:
        studies: folder of films (<study>_AP.png, <study>_LAT.dcm, ...).
        app: app folder (default as `spine-app monailabel app`).
        host: interface to bind; 127.0.0.1 (this machine only) by default. Another address needs
            MONAI_LABEL_AUTH_ENABLE=true (MONAI Label's authentication) or --insecure.
        port: TCP port.
        model: weights to serve when the app folder is new.
        cors_origin: web origin allowed to call the server from a browser, e.g. http://viewer.local:3000
            (an OHIF viewer); repeated or comma-separated; default none (same origin only).
        allow_delete: allow DELETE of films and labels (refused with HTTP 403 by default).
        max_upload_mb: largest request body (label or film upload) in MB; larger answers HTTP 413.
        insecure: bind a non-loopback --host without authentication (anyone who reaches the port
            can read the films, overwrite labels and retrain the model).
        dicomweb: DICOMweb URL of a PACS (e.g. http://127.0.0.1:8042/dicom-web; credentials from
            SPINE_APP_DICOMWEB_USER/PASSWORD or SPINE_APP_DICOMWEB_TOKEN, never the command line).
        study: StudyInstanceUID(s) to pull (comma-separated); default every CR/DX study found,
            narrowed by --patient and --dates YYYYMMDD-YYYYMMDD.
        patient: PatientID to search for (with --dicomweb).
        dates: StudyDate range to search for (with --dicomweb).
        conf: extra --conf key value pairs for the app (e.g. --bundle PATH).
    """
    import ipaddress

    from spine_app.monailabel.appdir import LOOPBACK, server_command, write_app
    from spine_app.monailabel.security import ServerPolicy, parse_origins

    try:
        loopback = host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    auth = os.environ.get("MONAI_LABEL_AUTH_ENABLE", "").strip().lower() in ("1", "true", "yes", "on")
    if not loopback and not auth and not insecure:
        _refuse(
            f"--host {host} would let anyone who reaches the port read the films and change the model: "
            "set MONAI_LABEL_AUTH_ENABLE=true (with a Keycloak realm) or pass --insecure"
        )
    try:
        origins = parse_origins(_repeated_flag(("--cors-origin", "--cors_origin")) or cors_origin)
    except ValueError as err:
        _refuse(str(err))
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) or not max_upload_mb > 0:
        _refuse(f"--max-upload-mb must be a number > 0, got {max_upload_mb!r}")
    if dicomweb is None and (study or patient or dates):
        _refuse("--study, --patient and --dates choose studies of a PACS: give --dicomweb URL too")
    if dicomweb is not None:
        _pull_from_pacs(dicomweb, studies, study, patient, dates, model)
    if not Path(studies).is_dir():
        raise FileNotFoundError(f"{studies}: no such studies folder")
    folder = write_app(app, model)
    if not loopback:
        print(f"warning: binding {host}" + ("" if auth else " without authentication (--insecure)"), file=sys.stderr)
    if os.environ.get("MONAI_LABEL_CORS_ORIGINS"):
        print("warning: MONAI_LABEL_CORS_ORIGINS is ignored; allow origins with --cors-origin", file=sys.stderr)
    policy = ServerPolicy(origins, bool(allow_delete), int(max_upload_mb * 2**20))
    os.environ.update(policy.environment())
    os.environ["MONAI_LABEL_SESSIONS"] = "false"  # sessions keep uploads outside the studies folder
    print(
        f"app {folder}; serving {studies} on http://{host}:{port}; CORS origins: "
        f"{', '.join(origins) or 'none (same origin only)'}",
        file=sys.stderr,
        flush=True,
    )
    cmd = server_command(folder, Path(studies), host, port, conf)
    os.execv(cmd[0], cmd)  # the server takes this process (and its id): stop it with that id


def _pull_from_pacs(
    url: str, studies: str, study: Any, patient: str | None, dates: str | None, model: str | None
) -> None:
    """``monailabel serve --dicomweb``: pull the studies' films into STUDIES; one line per failing
    study; exit 1 when the folder then holds no film to serve."""
    from spine_app.monailabel.pacs import pull_studies

    if not str(url).startswith(("http://", "https://")):
        _refuse(f"--dicomweb must be an http(s) URL, got {url!r}")
    uids = [
        u.strip()
        for part in ([study] if isinstance(study, str) else list(study or []))
        for u in str(part).split(",")
        if u.strip()
    ]
    summary = pull_studies(url, studies, uids, patient, dates, model)
    for line in summary.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in summary.errors:
        print(f"failed: {line}", file=sys.stderr)
    print(
        f"PACS: {len(summary.images)} films of {len(summary.studies)} studies pulled into {studies}",
        file=sys.stderr,
        flush=True,
    )
    if not any(
        p.is_file() and not p.name.startswith(".") and p.name != "pacs_sources.json" for p in Path(studies).iterdir()
    ):
        print(f"error: {studies}: no film to serve (nothing pulled from {url})", file=sys.stderr)
        raise SystemExit(1)
