"""Clinical outputs for DICOM input films: a DICOM Segmentation (SEG) per film with the view's
structures as segments, written with highdicom.

One SEG per film (a DX/CR film has no frame of reference, so highdicom allows one source frame):
BINARY segments, one per structure of the view, numbered in the channel order of
:data:`spine_app.channels.MASK_NAMES` restricted to the view; each segment carries coded anatomy
(SNOMED CT where a concept exists, DICOM "Line" with an anterior/posterior modifier for the
vertebral lines, a local code for the disk-height space), the algorithm's identification (name and
bundle version) and references the source instance. Works with highdicom 0.22 (pydicom 2.4, the
MONAI Label install) and highdicom >= 0.23 (pydicom 3, the default install).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spine_app import __version__
from spine_app.channels import CHANNEL_VIEW, MASK_NAMES
from spine_app.metrics.levels import level_per_body

#: local coding scheme for concepts without a standard code (declared in every SEG that uses it)
LOCAL_SCHEME = "99SPINEAPP"
#: patient/study attributes DICOM requires (Type 2: present, may be empty) that a source may lack
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _numpy2_shim() -> None:
    """highdicom 0.22 (the last for pydicom 2.4, which MONAI Label's install pins) still names
    ``np.float_``, removed in NumPy 2: give it the alias it meant (float64). Newer highdicom does not
    need it."""
    if "float_" not in np.__dict__:
        np.float_ = np.float64  # type: ignore[attr-defined]


def _code(value: str, scheme: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


def segment_codes(name: str) -> tuple[Any, Any, Any | None]:
    """(category, type, type modifier or None) of one mask channel."""
    anatomy = _code("123037004", "SCT", "Anatomical Structure")  # the code both pydicom 2.4 and 3 resolve the same
    spatial = _code("309825002", "SCT", "Spatial and Relational Concept")
    kinds = {
        "Vertebra": (anatomy, _code("3572006", "SCT", "Vertebral body"), None),
        "Pedicle": (anatomy, _code("78972004", "SCT", "Pedicle of vertebra"), None),
        "Spinous_Process": (anatomy, _code("55678000", "SCT", "Spinous process of vertebra"), None),
        "Disk_Height": (spatial, _code("DISKSPACE", LOCAL_SCHEME, "Intervertebral disk space"), None),
        "Anterior_Vertebral_Line": (spatial, _code("112083", "DCM", "Line"), _code("255549009", "SCT", "Anterior")),
        "Posterior_Vertebral_Line": (spatial, _code("112083", "DCM", "Line"), _code("255551008", "SCT", "Posterior")),
    }
    kind = name.split("_", 1)[1]
    if kind not in kinds:
        raise ValueError(f"no DICOM code for mask {name!r}")
    return kinds[kind]


def write_seg(
    source_path: str | Path,
    masks: dict[int, np.ndarray],
    view: str,
    out_path: str | Path,
    model_version: str = "unknown",
    algorithm_type: str = "AUTOMATIC",
    series_description: str | None = None,
) -> Path:
    """Write the DICOM SEG of one film: ``masks`` channel index -> bool (rows, cols) of the view's
    channels, ``source_path`` the film's DICOM file. Written atomically. ``algorithm_type``:
    AUTOMATIC (the model's masks) or SEMIAUTOMATIC (an annotator corrected them); ``series_description``:
    the series description (default "spine-app <VIEW> structures").

    Raises:
        ValueError: a mask whose shape differs from the film's, or a channel of another view.
    """
    _numpy2_shim()
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    from spine_app.data.io import write_atomic

    source = pydicom.dcmread(str(source_path))
    for keyword in TYPE2_COPIED:  # (in memory) Type 2 attributes the film lacks: present and empty
        if keyword not in source:
            setattr(source, keyword, "")
    channels = sorted(masks)
    if any(CHANNEL_VIEW[c] != view for c in channels):
        raise ValueError(f"{source_path}: masks of another view than {view} given for its SEG")
    shape = (int(source.Rows), int(source.Columns))
    if any(masks[c].shape != shape for c in channels):
        raise ValueError(f"{source_path}: mask size differs from the film's {shape}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="spine-app", family=_code("123109", "DCM", "Artificial Intelligence"), version=str(model_version)
    )
    descriptions, uses_local = [], False
    for number, c in enumerate(channels, start=1):
        category, kind, modifier = segment_codes(MASK_NAMES[c])
        uses_local |= kind.scheme_designator == LOCAL_SCHEME
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=MASK_NAMES[c],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"{MASK_NAMES[c]} ({view})",
        )
        if modifier is not None:  # DICOM: the modifier sits inside the property type's code item
            item = description.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(modifier)]
        descriptions.append(description)
    pixels = np.stack([np.asarray(masks[c], dtype=bool) for c in channels], axis=-1)[None].astype(np.uint8)
    extra: dict[str, Any] = {}
    if uses_local:
        from highdicom.coding_schemes import CodingSchemeIdentificationItem

        extra["coding_schemes"] = [
            CodingSchemeIdentificationItem(designator=LOCAL_SCHEME, name="spine-app local codes")
        ]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="spine-app",
        manufacturer_model_name="spine-app multi-task network",
        software_versions=f"spine-app {__version__}, bundle {model_version}",
        device_serial_number="none",
        series_description=series_description or f"spine-app {view} structures",
        omit_empty_frames=False,
        **extra,
    )
    # highdicom does not copy Patient Orientation (Type 2C of the General Image module: present, may be empty)
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return write_atomic(out_path, lambda tmp: seg.save_as(str(tmp)))


SR_DESCRIPTION = "spine-app measurement report"


def report_description(model_sha: str | None) -> str:
    """The SeriesDescription of our SR for a model: how a re-run against a PACS finds it."""
    return f"{SR_DESCRIPTION} (model {model_sha[:12]})" if model_sha else SR_DESCRIPTION


#: local code values (at most 16 characters) of the morphometry's height ratios
RATIO_CODES = {"anterior_posterior": "RATIO_AP", "middle_posterior": "RATIO_MP", "posterior_expected": "RATIO_PE"}


def _local(value: str, meaning: str) -> Any:
    return _code(value, LOCAL_SCHEME, meaning)


def _vertebra_group(body: Any, lat: Any, level: dict[str, Any] | None, length_unit: Any, ratio_unit: Any) -> Any:
    """The SR measurement group of one measured vertebra of the LAT film ``lat``: heights, ratios,
    reduction, the level head's fracture probability (``level``, where it scored the body), the
    Genant grade and deformity type, on a circle of the body's area around its centre. The grade is
    the one result.json's ``levels`` reports for the body (and the overlay labels it with: 0 unless
    flagged) where the level head scored it, else the morphometry's."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    name = body.level or f"#{body.index + 1} from the top of the field"
    measurements = [
        hd.sr.Measurement(
            name=_local(f"H{k[0].upper()}", f"{k.capitalize()} vertebral body height"),
            value=float(body.heights_mm[k]),
            unit=length_unit,
        )
        for k in ("anterior", "middle", "posterior")
    ]
    measurements += [
        hd.sr.Measurement(
            name=_local(RATIO_CODES[key], f"Height ratio {key.replace('_', '/')}"),
            value=float(value),
            unit=ratio_unit,
        )
        for key, value in body.ratios.items()
        if key in RATIO_CODES and value == value
    ]
    measurements.append(
        hd.sr.Measurement(
            name=_local("REDUCTION", "Vertebral body height reduction"),
            value=float(body.reduction),
            unit=ratio_unit,
        )
    )
    if level is not None:  # the level head's fracture probability of the same body
        measurements.append(
            hd.sr.Measurement(
                name=_local("FRACTUREP", "Vertebral fracture probability (level head)"),
                value=float(level["fracture_probability"]),
                unit=_code("1", "UCUM", "no units"),
            )
        )
    grade = body.grade if level is None else int(level["grade"])
    row, col = body.centroid_px
    radius = max(1.0, float(np.sqrt(body.area_px / np.pi)))
    region = hd.sr.ImageRegion(
        graphic_type="CIRCLE",
        graphic_data=np.array([[col, row], [col + radius, row]], dtype=float),
        source_image=hd.sr.SourceImageForRegion(lat.SOPClassUID, lat.SOPInstanceUID),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"vertebra {name}"),
        referenced_region=region,
        finding_type=_code("51282000", "SCT", "Vertebra"),
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                _local("GENANT", "Genant semiquantitative grade"),
                _local(f"G{grade}", f"Genant grade {grade}"),
            ),
            hd.sr.QualitativeEvaluation(
                _local("DEFORMITY", "Vertebral deformity type"),
                _local(body.deformity.upper(), f"deformity: {body.deformity}"),
            ),
        ],
    )


def _study_group(result: dict[str, Any], datasets: dict[str, Any]) -> Any:
    """The SR measurement group of the study: the Normal/Damaged finding and its probability."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    damaged = result.get("label") == "Damaged"
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="study decision"),
        finding_type=_local("SPINESTUDY", "Thoracolumbar spine, AP and lateral films"),
        measurements=[
            hd.sr.Measurement(
                name=_local("DAMAGEDP", "Probability of a damaged (fractured) spine"),
                value=float(result.get("damaged_probability") or 0.0),
                unit=_code("1", "UCUM", "no units"),
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                _code("121071", "DCM", "Finding"),
                _code("263654008", "SCT", "Abnormal") if damaged else _code("17621005", "SCT", "Normal"),
            )
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets.values()
        ],
    )


def write_sr(
    films: dict[str, str | Path],
    segs: list[str | Path],
    result: dict[str, Any],
    bodies: list[Any],
    out_path: str | Path,
    model_version: str = "unknown",
    model_sha: str | None = None,
) -> Path:
    """Write the study's DICOM Structured Report (Comprehensive SR, TID 1500 measurement report):
    per measured vertebra of the LAT film (a circular region of the body's area around its centre) the
    anterior/middle/posterior heights, the height ratios and reduction, the Genant grade and the
    deformity type; for the study the Normal/Damaged finding and its probability. ``films``: view ->
    the DICOM file of each view read from DICOM; ``segs``: the study's SEG files (evidence).
    Written atomically.
    """
    _numpy2_shim()
    import highdicom as hd
    import pydicom
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.uid import generate_uid

    from spine_app.data.io import write_atomic

    datasets = {view: pydicom.dcmread(str(path)) for view, path in films.items()}
    for ds in datasets.values():
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    evidence = list(datasets.values()) + [pydicom.dcmread(str(p)) for p in segs]
    observer = hd.sr.ObserverContext(
        observer_type=_code("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(),
            name="spine-app",
            manufacturer_name="spine-app",
            model_name=f"spine-app multi-task network, bundle {model_version}",
        ),
    )
    mm = (result.get("morphometry") or {}).get("units", "mm") == "mm"
    length_unit = _code("mm", "UCUM", "millimeter") if mm else _code("{pixels}", "UCUM", "pixels")
    ratio_unit = _code("{ratio}", "UCUM", "ratio")
    groups: list[Any] = []
    lat = datasets.get("LAT")
    level_of_body = level_per_body((result.get("levels") or {}).get("levels", []))
    for body in bodies if lat is not None else []:
        if body.grade < 0:  # not measurable / not graded: listed in result.json with the reason
            continue
        groups.append(_vertebra_group(body, lat, level_of_body.get(body.index + 1), length_unit, ratio_unit))
    groups.append(_study_group(result, datasets))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_local("SPINEXR", "Spine radiographs, AP and lateral"),
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="spine-app",
        is_complete=True,
        coding_schemes=[CodingSchemeIdentificationItem(designator=LOCAL_SCHEME, name="spine-app local codes")],
        series_description=report_description(model_sha),
    )
    return write_atomic(out_path, lambda tmp: sr.save_as(str(tmp)))
