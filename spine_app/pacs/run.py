"""``spine-app infer --dicomweb URL``: fetch studies from a PACS, run the bundle as for a folder, store
the DICOM SEG and SR back by STOW-RS.

Per study: skipped when the PACS already holds our SR for the same model (unless ``force``);
otherwise its films are fetched (WADO-RS) into a temporary folder, inferred with the bundle (the same
local outputs as a folder run, into OUT), and its SEGs and SR are stored in one request once they are
all built. Every failure (network, unknown study, a rejected store) is one line for that study; the
other studies go on.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from spine_app.pacs.dicomweb import PacsError, connect, fetch_study, find_studies, has_report, store_results

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def infer_from_pacs(
    url: str,
    study_uids: list[str],
    out: str | Path,
    model: str | Path | None,
    device: str,
    bundle_dir: str | Path,
    force: bool = False,
    progress: bool = False,
    patient: str | None = None,
    dates: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the PACS round trip; returns run_inference's {"written", "skipped", "errors"} plus
    "stored" (study UIDs whose results the PACS accepted) and "already_in_pacs"."""
    from spine_app.engines.writer import sha256_of, write_run_files
    from spine_app.inference.run import check_model, resolve_inputs, run_inference

    model_path = check_model(bundle_dir, model, **overrides)
    model_sha = sha256_of(model_path)
    client = connect(url)
    errors: list[dict[str, str]] = []
    uids = list(study_uids)
    if not uids:
        uids = find_studies(client, patient, dates)
    stored: list[str] = []
    in_pacs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spine-app-pacs-") as tmp:
        entries: list[dict[str, Any]] = []
        uid_of: dict[str, str] = {}
        for n, uid in enumerate(uids):
            if not _UID.fullmatch(uid):
                errors.append({"study_id": uid[:64], "error": f"study {uid!r}: not a DICOM UID (digits and dots)"})
                continue
            try:
                if not force and has_report(client, uid, model_sha):
                    in_pacs.append(uid)
                    continue
                folder = Path(tmp) / f"study{n:05d}"
                fetch_study(client, uid, folder)
            except PacsError as err:
                errors.append({"study_id": uid, "error": str(err)})
                continue
            found, problems = resolve_inputs([str(folder)], model=model, out=out)
            errors += problems
            for entry in found:
                uid_of[entry["study_id"]] = uid
            entries += found
        if not entries:
            Path(out).mkdir(parents=True, exist_ok=True)
            write_run_files(
                out, [{"study_id": e["study_id"], "status": "failed", "error": e["error"]} for e in errors], errors
            )
            return {"written": [], "skipped": [], "errors": errors, "stored": [], "already_in_pacs": in_pacs}
        result = run_inference(
            entries, out, model, device, bundle_dir, errors, force=force, progress=progress, **overrides
        )
    for row in result["written"] + result.get("skipped", []):
        uid = uid_of.get(row["study_id"])
        folder = Path(out) / row["study_id"]
        files = sorted(folder.glob("seg_*.dcm")) + [folder / "report.dcm"]
        try:
            store_results(client, uid, files)
            stored.append(uid)
        except PacsError as err:
            result["errors"].append({"study_id": row["study_id"], "error": str(err)})
    return {**result, "stored": stored, "already_in_pacs": in_pacs}
