"""Image IO: every format reads to the same float32 array, and bad files give one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from spine_app.data.io import ImageReadError, read_image, read_mask, write_atomic, write_dicom, write_png
from tests.helpers import lying_png, radiograph


def test_png_16bit_roundtrip_preserves_values(tmp_path: Path) -> None:
    image = radiograph()
    write_png(tmp_path / "a.png", image)
    array, meta = read_image(tmp_path / "a.png")
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, image.astype(np.float32))
    assert meta.bit_depth == 16 and meta.format == "png" and meta.shape == image.shape


def test_png_8bit_and_jpeg(tmp_path: Path) -> None:
    image = (radiograph() // 256).astype(np.uint8)
    write_png(tmp_path / "a.png", image)
    array, meta = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(array, image)
    assert meta.bit_depth == 8
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    jpeg, meta = read_image(tmp_path / "a.jpg")
    assert meta.format == "jpeg" and jpeg.shape == image.shape
    assert np.abs(jpeg - image).mean() < 3  # lossy but close


def test_tiff_16bit(tmp_path: Path) -> None:
    image = radiograph()
    Image.fromarray(image).save(tmp_path / "a.tif")
    array, meta = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(array, image)
    assert meta.bit_depth == 16 and meta.format == "tiff"


def test_dicom_monochrome1_and_2_read_the_same(tmp_path: Path) -> None:
    image = radiograph()
    write_dicom(tmp_path / "m2.dcm", image, spacing=(0.15, 0.16), view="AP", photometric="MONOCHROME2")
    write_dicom(tmp_path / "m1.dcm", image, spacing=(0.15, 0.16), view="LAT", photometric="MONOCHROME1")
    stored = pydicom.dcmread(tmp_path / "m1.dcm").pixel_array
    assert not np.array_equal(stored, image)  # MONOCHROME1 really stores inverted values
    a2, meta2 = read_image(tmp_path / "m2.dcm")
    a1, meta1 = read_image(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(a2, image)
    assert meta2.spacing == (0.15, 0.16) and meta2.spacing_source == "PixelSpacing"
    assert (meta2.view, meta1.view) == ("AP", "LAT")
    assert meta1.photometric == "MONOCHROME1"


def test_dicom_rescale_and_imager_spacing(tmp_path: Path) -> None:
    image = radiograph()
    write_dicom(tmp_path / "r.dcm", image, rescale=(2.0, -100.0), spacing=(0.2, 0.2), spacing_tag="ImagerPixelSpacing")
    array, meta = read_image(tmp_path / "r.dcm")
    np.testing.assert_allclose(array, image.astype(np.float64) * 2 - 100)
    assert meta.spacing == (0.2, 0.2) and meta.spacing_source == "ImagerPixelSpacing"
    write_dicom(tmp_path / "r1.dcm", image, rescale=(2.0, -100.0), photometric="MONOCHROME1")
    np.testing.assert_allclose(read_image(tmp_path / "r1.dcm")[0], array)


def test_dicom_without_extension_is_detected(tmp_path: Path) -> None:
    write_dicom(tmp_path / "IM0001", radiograph(), view="AP")
    assert read_image(tmp_path / "IM0001")[1].format == "dicom"


def test_nifti_orientation_and_spacing(tmp_path: Path) -> None:
    image = radiograph().astype(np.float32)
    nifti = nib.Nifti1Image(image.T[:, :, None], np.diag([0.3, 0.25, 1.0, 1.0]))
    nib.save(nifti, tmp_path / "a.nii.gz")
    array, meta = read_image(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(array, image)
    assert meta.spacing == pytest.approx((0.25, 0.3))


def test_rgb_and_rgba_are_converted_with_a_warning(tmp_path: Path) -> None:
    grey = (radiograph() // 256).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([grey] * 3 + [np.full_like(grey, 255)], -1)).save(tmp_path / "rgba.png")
    for name in ("rgb.png", "rgba.png"):
        with pytest.warns(UserWarning, match="converted to grey"):
            array, meta = read_image(tmp_path / name)
        assert meta.converted_from_rgb and array.ndim == 2
        np.testing.assert_allclose(array, grey, atol=1)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: p.write_bytes(b"not an image at all"), "cannot decode PNG"),
        (lambda p: None, "file not found"),
    ],
)
def test_bad_files_name_the_file_and_reason(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value).startswith(str(path)) and reason in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_png(tmp_path: Path) -> None:
    write_png(tmp_path / "full.png", radiograph((200, 200)))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png: cannot decode PNG"):
        read_image(tmp_path / "cut.png")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", radiograph())
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(tmp_path / "nopix.dcm")


def test_nan_nifti_is_refused(tmp_path: Path) -> None:
    data = np.full((80, 90, 1), np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(ImageReadError, match="nan.nii: 7200 of 7200 pixels are NaN or infinite"):
        read_image(tmp_path / "nan.nii")


def test_size_limits(tmp_path: Path) -> None:
    Image.new("L", (9000, 70)).save(tmp_path / "huge.png")
    with pytest.raises(ImageReadError, match="larger than the 8000 px limit"):
        read_image(tmp_path / "huge.png")
    Image.new("L", (40, 40)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageReadError, match="smaller than the 64 px minimum"):
        read_image(tmp_path / "tiny.png")


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="unsupported file type '.txt'"):
        read_image(tmp_path / "notes.txt")


def test_mask_binarizes_grey_values_and_checks_size(tmp_path: Path) -> None:
    mask = np.zeros((70, 80), np.uint8)
    mask[5:10, 5:10] = 1  # grey values > 0 are foreground, as in the seed dataset
    mask[20:30, 20:30] = 128
    write_png(tmp_path / "m.png", mask)
    assert read_mask(tmp_path / "m.png").sum() == 25 + 100
    with pytest.raises(ImageReadError, match="mask is 80x70 px but its image is 90x70 px"):
        read_mask(tmp_path / "m.png", shape=(70, 90))


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_palette_png_is_read_as_grey(tmp_path: Path) -> None:
    levels = np.array([0, 60, 120, 250], np.uint8)
    grey = levels[(np.arange(96 * 80).reshape(96, 80) // 7) % 4]
    Image.fromarray(np.stack([grey] * 3, -1)).quantize(colors=4, method=Image.Quantize.MEDIANCUT).save(
        tmp_path / "p.png"
    )
    assert Image.open(tmp_path / "p.png").mode == "P"
    with pytest.warns(UserWarning, match="converted to grey"):
        array, meta = read_image(tmp_path / "p.png")
    assert meta.converted_from_rgb and meta.bit_depth == 8
    np.testing.assert_allclose(array, grey, atol=1)


@pytest.mark.parametrize(("width", "height"), [(10000, 10000), (20000, 20000), (7000, 30000)])
def test_png_with_a_huge_lying_header_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    """A decompression bomb (PIL's warning or error) is a named ImageReadError, for images and masks."""
    path = lying_png(tmp_path / "bomb.png", width, height)
    for read in (read_image, read_mask):
        with pytest.raises(ImageReadError) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
        assert "decompression bomb" in str(err.value) or "larger than the 8000 px limit" in str(err.value)


def _native_dicom_with_short_pixel_data(path: Path, missing: int) -> np.ndarray:
    """A DICOM written by write_dicom whose PixelData element lost its last ``missing`` bytes."""
    image = radiograph()
    write_dicom(path, image, view="AP")
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:-missing]
    ds.save_as(path)
    return image


@pytest.mark.parametrize("missing", [2, 4000])
def test_truncated_dicom_pixel_data_is_refused_not_filled_from_memory(tmp_path: Path, missing: int) -> None:
    """pydicom refuses the short pixel data; the ITK fallback used to fill the gap with stale memory."""
    path = tmp_path / "short.dcm"
    _native_dicom_with_short_pixel_data(path, missing)
    expected = 96 * 80 * 2
    for _ in range(2):  # the same named error every time, never an array
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        assert str(err.value) == (
            f"{path}: pixel data is {expected - missing} bytes but the header needs {expected}"
            " (80x96 px, 1 sample(s), 16 bits allocated): truncated or damaged file"
        )


def test_dicom_file_cut_short_names_the_missing_pixel_bytes(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", radiograph(), view="LAT")
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-1000])
    with pytest.raises(ImageReadError, match=r"cut.dcm: pixel data is 14360 bytes but the header needs 15360"):
        read_image(tmp_path / "cut.dcm")


def test_rle_dicom_with_a_short_fragment_is_refused(tmp_path: Path) -> None:
    """Damaged RLE data that pydicom's own decoder refuses is not handed to ITK (which decodes it wrongly)."""
    from pydicom.encaps import encapsulate, generate_pixel_data_frame
    from pydicom.uid import RLELossless

    image = (np.random.default_rng(0).integers(0, 4000, (96, 80))).astype(np.uint16)
    write_dicom(tmp_path / "a.dcm", image, view="AP")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(read_image(tmp_path / "rle.dcm")[0], image)  # the intact file reads exactly
    fragment = next(generate_pixel_data_frame(ds.PixelData))
    ds.PixelData = encapsulate([fragment[:-4]])
    ds.save_as(tmp_path / "short_rle.dcm")
    with pytest.raises(ImageReadError, match=r"short_rle.dcm: cannot decode DICOM pixel data: .*RLE"):
        read_image(tmp_path / "short_rle.dcm")


def test_file_stem_and_suffix_count_nii_gz_as_one_extension() -> None:
    from spine_app.data.io import file_stem, file_suffix

    names = ["AP.nii.gz", "s1_LAT.NII.GZ", "case.7_AP.png", "LAT.DCM", "AP", "x/y/Lat_Vertebra.nii"]
    assert [file_stem(n) for n in names] == ["AP", "s1_LAT", "case.7_AP", "LAT", "AP", "Lat_Vertebra"]
    assert [file_suffix(n) for n in names] == [".nii.gz", ".nii.gz", ".png", ".dcm", "", ".nii"]
