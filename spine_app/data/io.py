"""Reading radiographs and masks in the formats hospitals produce, and writing outputs atomically.

``read_image`` returns one float32 2-D array (rows, cols) plus an :class:`ImageMeta`. Supported:
PNG (8/16-bit), JPEG, TIFF (PIL, ITK as fallback), DICOM (pydicom; ITK for transfer syntaxes pydicom
cannot decode) and NIfTI (nibabel). Every failure raises :class:`ImageReadError` whose message names
the file and the reason in one line.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}
MAX_SIDE = 8000  # larger images are refused before decoding (a 16-bit 8000^2 film is 128 MB)
MIN_SIDE = 64


class ImageReadError(ValueError):
    """An image could not be used; ``str(err)`` is "<path>: <reason>"."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageMeta:
    """What is known about a read image besides its pixels."""

    path: str
    format: str  # png | jpeg | tiff | dicom | nifti
    shape: tuple[int, int]  # (rows, cols)
    bit_depth: int  # bits per stored sample (8, 12, 16, 32)
    dtype: str  # numpy dtype of the stored samples
    spacing: tuple[float, float] | None = None  # (row, col) mm
    spacing_source: str | None = None  # e.g. "PixelSpacing", "ImagerPixelSpacing", "NIfTI header"
    view: str | None = None  # "AP" / "LAT" from DICOM tags, if any
    photometric: str | None = None
    converted_from_rgb: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def file_stem(path: str | Path) -> str:
    """A file name without its extension, ``.nii.gz`` counting as one (``AP.nii.gz`` -> ``AP``)."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def file_suffix(path: str | Path) -> str:
    """A file name's extension, lower-cased, ``.nii.gz`` counting as one (``AP.NII.GZ`` -> ``.nii.gz``)."""
    name = Path(path).name
    return ".nii.gz" if name.lower().endswith(".nii.gz") else Path(name).suffix.lower()


def image_format(path: str | Path) -> str | None:
    """Format of ``path`` from its suffix (``.nii.gz`` included), or DICOM by its magic bytes."""
    name = str(path).lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    fmt = IMAGE_SUFFIXES.get(Path(name).suffix)
    if fmt is None and Path(path).is_file() and Path(path).stat().st_size > 132:
        with open(path, "rb") as fh:
            fh.seek(128)
            if fh.read(4) == b"DICM":
                return "dicom"
    return fmt


def _check_size(path: str | Path, rows: int, cols: int, min_side: int, max_side: int) -> None:
    if rows > max_side or cols > max_side:
        raise ImageReadError(path, f"image is {cols}x{rows} px, larger than the {max_side} px limit")
    if rows < min_side or cols < min_side:
        raise ImageReadError(path, f"image is {cols}x{rows} px, smaller than the {min_side} px minimum")


def _rgb_to_grey(path: str | Path, array: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, 3|4) array; alpha is dropped."""
    warnings.warn(f"{path}: colour image converted to grey (luma)", stacklevel=3)
    logger.warning("%s: colour image converted to grey (luma)", path)
    rgb = array[..., :3].astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


_PIL_BITS = {
    "1": 1,
    "L": 8,
    "P": 8,
    "RGB": 8,
    "RGBA": 8,
    "LA": 8,
    "I;16": 16,
    "I;16B": 16,
    "I;16L": 16,
    "I": 32,
    "F": 32,
}


def _read_pil(path: str | Path, fmt: str, min_side: int, max_side: int) -> tuple[np.ndarray, ImageMeta]:
    try:
        with Image.open(path) as img:
            _check_size(path, img.height, img.width, min_side, max_side)
            if getattr(img, "n_frames", 1) > 1:
                raise ImageReadError(path, f"multi-frame {fmt.upper()} ({img.n_frames} frames); expected one image")
            mode = img.mode
            dpi = img.info.get("dpi")
            array = np.asarray(img.convert("RGB") if mode == "P" else img)  # a palette image is a colour image
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # never decoded, not even by ITK
        raise ImageReadError(path, f"refused before decoding, a possible decompression bomb: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if fmt == "tiff":
            return _read_itk(path, fmt, min_side, max_side)
        raise ImageReadError(path, f"cannot decode {fmt.upper()}: {err}") from err
    bits = _PIL_BITS.get(mode, 8)
    if mode == "I" and fmt == "png" and array.size and array.max() < 65536:
        bits = 16
    rgb = array.ndim == 3
    if rgb:
        array = _rgb_to_grey(path, array)
    spacing = None
    if fmt == "tiff" and dpi and dpi[0] > 1 and dpi[0] != 72:
        spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))
    meta = ImageMeta(
        str(path),
        fmt,
        array.shape[:2],
        bits,
        str(np.asarray(array).dtype),
        spacing,
        "TIFF resolution" if spacing else None,
        converted_from_rgb=rgb,
    )
    return array, meta


def _read_itk(path: str | Path, fmt: str, min_side: int, max_side: int) -> tuple[np.ndarray, ImageMeta]:
    import itk

    try:
        image = itk.imread(str(path))
    except Exception as err:  # ITK raises RuntimeError subclasses with long C++ traces
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise ImageReadError(path, f"cannot decode {fmt.upper()}: {reason}") from err
    array = itk.array_view_from_image(image).copy()
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    if rgb:
        array = _rgb_to_grey(path, array)
    if array.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D image, got shape {array.shape}")
    _check_size(path, *array.shape, min_side, max_side)
    sx, sy = (float(s) for s in list(image.GetSpacing())[:2])
    spacing = (sy, sx) if (sx, sy) != (1.0, 1.0) else None
    bits = array.dtype.itemsize * 8
    return array, ImageMeta(
        str(path), fmt, array.shape, bits, str(array.dtype), spacing, "ITK" if spacing else None, converted_from_rgb=rgb
    )


_VIEW_POSITIONS = {
    "AP": "AP",
    "PA": "AP",
    "LL": "LAT",
    "RL": "LAT",
    "LAT": "LAT",
    "LATERAL": "LAT",
    "LLD": "LAT",
    "RLD": "LAT",
}


def dicom_view(ds: Any) -> str | None:
    """ "AP"/"LAT" from ViewPosition, else from the series/protocol description, else None."""
    position = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    if position in _VIEW_POSITIONS:
        return _VIEW_POSITIONS[position]
    text = " ".join(str(getattr(ds, tag, "") or "") for tag in ("SeriesDescription", "ProtocolName")).upper()
    words = set(text.replace("_", " ").replace("-", " ").split())
    if words & {"LAT", "LATERAL", "LL", "RL"}:
        return "LAT"
    if words & {"AP", "PA"}:
        return "AP"
    return None


def _dicom_stored_range(ds: Any) -> tuple[float, float]:
    bits = int(getattr(ds, "BitsStored", getattr(ds, "BitsAllocated", 16)))
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _encapsulated_problem(data: bytes) -> str | None:
    """Why encapsulated (compressed) pixel data is incomplete, or None: every item must fit in the data."""
    offset, items = 0, 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, offset)
        if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimiter: the end
            return None if items else "encapsulated pixel data holds no item"
        if (group, element) != (0xFFFE, 0xE000):
            return f"encapsulated pixel data has an unexpected tag ({group:04X},{element:04X}) at byte {offset}"
        if offset + 8 + length > len(data):
            return f"encapsulated pixel data item {items} needs {length} bytes, only {len(data) - offset - 8} present"
        offset, items = offset + 8 + length, items + 1
    if offset != len(data) or items < 2:  # the basic offset table item plus at least one fragment
        return f"encapsulated pixel data ends after {items} item(s) and {len(data) - offset} stray bytes"
    return None


def _check_pixel_data(path: str | Path, ds: Any) -> None:
    """Refuse pixel data that the header's size does not account for (a truncated or damaged file).

    Native data must hold rows x cols x samples x bits allocated / 8 bytes; encapsulated data must
    be complete items. Without this check a decoder fallback fills the missing bytes from memory.
    """
    element = ds["PixelData"]
    data = element.value if isinstance(element.value, (bytes, bytearray)) else b""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if element.is_undefined_length or (syntax is not None and syntax.is_encapsulated):
        problem = _encapsulated_problem(bytes(data))
        if problem:
            raise ImageReadError(path, f"{problem}: truncated or damaged file")
        return
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 0) or 0)
    expected = (rows * cols * samples * bits + 7) // 8
    if bits not in (1, 8, 16, 32, 64):
        raise ImageReadError(path, f"DICOM BitsAllocated is {bits}; expected 1, 8, 16, 32 or 64")
    if len(data) < expected:
        raise ImageReadError(
            path,
            f"pixel data is {len(data)} bytes but the header needs {expected} ({cols}x{rows} px, {samples} sample(s),"
            f" {bits} bits allocated): truncated or damaged file",
        )


def _read_dicom(path: str | Path, min_side: int, max_side: int) -> tuple[np.ndarray, ImageMeta]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import RLELossless

    try:  # pydicom 3; pydicom 2.4 (pinned beside MONAI Label 0.8.5) keeps it in pixel_data_handlers
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(str(path), force=True)
        except Exception as err:
            raise ImageReadError(path, f"not a readable DICOM file: {err}") from err
    except Exception as err:
        raise ImageReadError(path, f"not a readable DICOM file: {err}") from err
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM has no pixel data (no PixelData element)")
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    _check_size(path, rows, cols, min_side, max_side)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames); expected a single-frame DX/CR image")
    _check_pixel_data(path, ds)
    try:
        stored = ds.pixel_array
    except Exception as err:  # compressed syntaxes without a pydicom plugin: let ITK (GDCM) decode
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and (not syntax.is_encapsulated or syntax == RLELossless):
            # pydicom's own decoders (native, RLE) are complete: when they refuse, the data are damaged
            # on one line: pydicom 3 puts each decoder's own reason on the lines after its summary
            reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:300]
            raise ImageReadError(path, f"cannot decode DICOM pixel data: {reason or type(err).__name__}") from err
        logger.info("%s: pydicom could not decode (%s); trying ITK", path, err)
        stored, _ = _read_itk(path, "dicom", min_side, max_side)
        if stored.shape[:2] != (rows, cols):
            decoded = f"{stored.shape[1]}x{stored.shape[0]}"
            raise ImageReadError(path, f"ITK decoded {decoded} px, the header says {cols}x{rows}") from err
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    rgb = stored.ndim == 3
    if rgb:
        array = _rgb_to_grey(path, stored)
    else:
        array = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        if photometric == "MONOCHROME1":  # low values are white: flip within the value range
            lo, hi = _dicom_stored_range(ds)
            slope, intercept = (
                float(getattr(ds, "RescaleSlope", 1) or 1),
                float(getattr(ds, "RescaleIntercept", 0) or 0),
            )
            lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
            array = (lo + hi) - array
    spacing, source = None, None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, tag, None)
        if value is not None and len(value) == 2 and float(value[0]) > 0:
            spacing, source = (float(value[0]), float(value[1])), tag
            break
    bits = int(getattr(ds, "BitsStored", stored.dtype.itemsize * 8))
    meta = ImageMeta(
        str(path), "dicom", array.shape[:2], bits, str(stored.dtype), spacing, source, dicom_view(ds), photometric, rgb
    )
    return array, meta


def _read_nifti(path: str | Path, min_side: int, max_side: int) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as err:
        raise ImageReadError(path, f"cannot decode NIfTI: {err}") from err
    spatial = [s for s in shape if s != 1]
    if len(spatial) != 2:
        raise ImageReadError(path, f"expected a 2-D NIfTI image, got shape {shape}")
    _check_size(path, spatial[1], spatial[0], min_side, max_side)
    try:
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise ImageReadError(path, f"cannot decode NIfTI: {err}") from err
    array = np.squeeze(data).T  # NIfTI stores (x, y); images are (rows=y, cols=x)
    zooms = [float(z) for z in img.header.get_zooms()[:2]]
    spacing = (zooms[1], zooms[0]) if len(zooms) == 2 and zooms != [1.0, 1.0] else None
    bits = data.dtype.itemsize * 8
    return array, ImageMeta(
        str(path), "nifti", array.shape, bits, str(data.dtype), spacing, "NIfTI header" if spacing else None
    )


def read_image(
    path: str | Path, *, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE, allow_nonfinite: bool = False
) -> tuple[np.ndarray, ImageMeta]:
    """Read a radiograph as float32 (rows, cols) and its metadata.

    DICOM values have the modality LUT (rescale slope/intercept) applied and MONOCHROME1 is inverted,
    so a bright pixel is dense tissue in every format. Colour images are converted to grey with a
    warning.

    Raises:
        ImageReadError: missing, empty, undecodable, not 2-D, too small/large, or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    fmt = image_format(path)
    if fmt is None:
        raise ImageReadError(path, f"unsupported file type {''.join(path.suffixes) or '(no extension)'!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if fmt in ("png", "jpeg", "tiff"):
            array, meta = _read_pil(path, fmt, min_side, max_side)
        elif fmt == "dicom":
            array, meta = _read_dicom(path, min_side, max_side)
        else:
            array, meta = _read_nifti(path, min_side, max_side)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D image, got shape {array.shape}")
    if not allow_nonfinite:
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ImageReadError(path, f"{bad} of {array.size} pixels are NaN or infinite")
    return array, replace(meta, shape=tuple(array.shape))


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask as bool (rows, cols): any value > 0 is foreground (colour masks: any channel).

    Raises:
        ImageReadError: unreadable, or its size differs from ``shape`` (the image it belongs to).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a colour mask is common and harmless
        array, meta = read_image(path, min_side=1)
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ImageReadError(
            path, f"mask is {array.shape[1]}x{array.shape[0]} px but its image is {shape[1]}x{shape[0]} px"
        )
    return array > 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk; a no-op on Windows."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; file systems that cannot sync a folder are skipped."""
    try:
        fsync_path(folder)
    except OSError as err:  # e.g. EINVAL on some network file systems: the rename itself already happened
        logger.debug("%s: folder fsync skipped (%s)", folder, err)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file (``.<name>.<random>.tmp`` in the same folder) is fsynced before the rename and
    the folder after it, so a crash or ``kill -9`` at any moment leaves either the previous ``path``
    or the complete new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


TEST_PAUSE_ENV = "SPINE_APP_TEST_PAUSE_IN_SAVE"  # "<seconds>[:<part of the file name>]", for crash tests only
_test_pause_done = False


class _PausingWriter:
    """A file wrapper that, once per process, stops for a while after its first bytes are written: a
    test sets ``SPINE_APP_TEST_PAUSE_IN_SAVE`` to catch a real training run in the middle of a save."""

    def __init__(self, fh: Any, path: Path, seconds: float) -> None:
        self.fh, self.path, self.seconds, self.written = fh, path, seconds, 0

    def write(self, data: Any) -> int:
        global _test_pause_done
        count = self.fh.write(data)
        self.written += count
        if not _test_pause_done:
            _test_pause_done = True
            self.fh.flush()
            message = f"{TEST_PAUSE_ENV}: paused writing {self.path} after {self.written} bytes"
            print(message, file=sys.stderr, flush=True)
            time.sleep(self.seconds)
        return count

    def flush(self) -> None:
        self.fh.flush()


def _test_pause(path: Path) -> float | None:
    """Seconds to pause while writing ``path`` under ``SPINE_APP_TEST_PAUSE_IN_SAVE``, else None."""
    value = os.environ.get(TEST_PAUSE_ENV)
    if not value or _test_pause_done:
        return None
    seconds, _, name_part = value.partition(":")
    return float(seconds) if name_part in path.name else None


def write_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, fsync, rename): a crash during the
    save leaves the previous file as it was. The same ``obj`` gives the same bytes (saved through a
    file handle, the archive is not named after the random temporary name), so equal weights have
    equal SHA-256."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pause = _test_pause(path)
        torch.save(obj, fh if pause is None else _PausingWriter(fh, path, pause))
    return path


class FolderNotEmptyError(FileExistsError):
    """A command would write into a folder that already holds files; ``str(err)`` is one line."""


def check_output_folder(folder: str | Path, overwrite: bool, what: str = "output folder") -> None:
    """Refuse a ``folder`` holding anything but hidden files unless ``overwrite`` (created or empty is fine).

    Raises:
        FolderNotEmptyError: names the folder and the way out (``--overwrite``).
        NotADirectoryError: ``folder`` is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    if overwrite or not folder.is_dir():
        return
    if any(not entry.name.startswith(".") for entry in folder.iterdir()):
        raise FolderNotEmptyError(
            f"{folder}: {what} is not empty; choose an empty or new folder, or pass --overwrite to replace"
            " only the files this command writes (other files are kept)"
        )


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` then rename ``tmp`` onto ``path``: readers never see a half-written file."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


Z_RLE = 3  # zlib strategy: faster than the default and smaller for noisy radiographs and binary masks


def write_png(path: str | Path, array: np.ndarray, compress_level: int = 1) -> Path:
    """Write a uint8/uint16 grey image (bool masks become 0/255) as PNG, atomically."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: PNG needs uint8 or uint16 pixels, got {array.dtype}")
    image = Image.fromarray(array)
    return write_atomic(
        path, lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level, compress_type=Z_RLE)
    )


def write_dicom(
    path: str | Path,
    array: np.ndarray,
    *,
    spacing: tuple[float, float] | None = None,
    view: str | None = None,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] = (1.0, 0.0),
    patient_id: str = "ANON",
    spacing_tag: str = "PixelSpacing",
    study_uid: str | None = None,
) -> Path:
    """Write a single-frame DX image (uint8/uint16) with pydicom, atomically.

    ``photometric="MONOCHROME1"`` stores the inverted values, so reading gives back ``array``.
    ``study_uid``: the StudyInstanceUID the films of one study share (default: a new one).
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if array.dtype not in (np.uint8, np.uint16) or array.ndim != 2:
        raise ValueError(f"{path}: DICOM writer needs a 2-D uint8/uint16 array, got {array.dtype} {array.shape}")
    bits = array.dtype.itemsize * 8
    stored = ((1 << bits) - 1 - array).astype(array.dtype) if photometric == "MONOCHROME1" else array
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", patient_id, f"{patient_id}^"
    ds.BodyPartExamined = "SPINE"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", {"AP": 1, "LAT": 2}.get(view or "", 3), 1
    for keyword in (
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "AccessionNumber",
        "PatientBirthDate",
        "PatientSex",
        "PatientOrientation",
    ):
        setattr(ds, keyword, "")  # Type 2: present, unknown here
    if view:
        ds.ViewPosition = {"AP": "AP", "LAT": "LL"}.get(view, view)
        ds.SeriesDescription = f"{view} spine"
        ds.PatientOrientation = {"AP": ["L", "F"], "LAT": ["P", "F"]}.get(view, "")  # columns, rows point to
    # the DX Image modules' attributes a validator (dciodvfy) expects
    ds.Manufacturer, ds.DetectorType, ds.PositionerType = "spine-app", "", ""
    ds.ImageLaterality, ds.BurnedInAnnotation, ds.LossyImageCompression = "U", "NO", "00"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign, ds.RescaleType = "LIN", 1, "US"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "421060004", "SCT", "Spine"
    ds.AnatomicRegionSequence, ds.AcquisitionContextSequence = [region], []
    low, high = (float(v) for v in np.percentile(array, (0.5, 99.5)))
    ds.WindowCenter, ds.WindowWidth = f"{(low + high) / 2:.1f}", f"{max(high - low, 1.0):.1f}"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
    if spacing is not None:
        setattr(ds, spacing_tag, [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"])
        ds.ImagerPixelSpacing = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]  # parallel beam: the same at the detector
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return write_atomic(path, lambda tmp: _save_dicom_file(ds, tmp))


def _save_dicom_file(ds: Any, path: Path) -> None:
    """Save ``ds`` as a DICOM Part 10 file (preamble + file meta) with pydicom 3 or 2.4."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False  # explicit VR little endian, as in the file meta
        ds.save_as(str(path), write_like_original=False)


def write_nifti(path: str | Path, array: np.ndarray, spacing: tuple[float, float] | None = None) -> Path:
    """Write a (rows, cols) array as a 2-D NIfTI (x = cols, y = rows; spacing in mm), atomically.

    ``read_image`` gives back the same array and spacing. Bool masks are stored as uint8 0/1.
    """
    import nibabel as nib

    data = np.asarray(array, dtype=np.uint8) if array.dtype == bool else np.asarray(array)
    row_mm, col_mm = spacing if spacing else (1.0, 1.0)
    image = nib.Nifti1Image(np.ascontiguousarray(data.T), np.diag([col_mm, row_mm, 1.0, 1.0]))
    image.header.set_zooms((col_mm, row_mm))
    payload = image.to_bytes()
    if str(path).endswith(".gz"):
        import gzip

        payload = gzip.compress(payload, compresslevel=1)
    return write_atomic(path, lambda tmp: tmp.write_bytes(payload))
