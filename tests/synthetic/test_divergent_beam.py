"""The generator's divergent beam: magnification as the geometry says on a phantom, oblique endplates
seen as double contours, masks that still match their films, and the parallel default left alone."""

from __future__ import annotations

import numpy as np
import pytest

from spine_app.synthetic.config import SynthConfig
from spine_app.synthetic.generator import generate_study
from spine_app.synthetic.geometry import ellipsoid_sdf, occupancy
from spine_app.synthetic.render import Film, Projections, project_block

SOD = 800.0  # source to isocentre (mm)


def _film(sod: float) -> Film:
    """A 300 x 300 mm render grid at 1 mm, central ray through the world origin on both films."""
    return Film(step=1.0, upsample=1, z_top=150.0, rows=300, ap_x0=-150.0, ap_cols=300, lat_y0=-150.0,
                lat_cols=300, sod_mm=sod)  # fmt: skip


def _sphere_width(film: Film, centre: tuple[float, float, float], radius: float = 20.0) -> dict[str, float]:
    """Projected diameter (mm, from the area of the shadow) of a sphere at ``centre`` on each film."""
    proj = Projections.empty(film)
    c = np.asarray(centre, dtype=np.float32)

    def evaluate(x, y, z):
        sdf = ellipsoid_sdf(x, y, z, c, (radius, radius, radius))
        return {"density": occupancy(sdf, film.step)}

    project_block(film, proj, c - radius - 2, c + radius + 2, evaluate)
    return {view: 2.0 * np.sqrt((proj.attenuation[view] > 1.0).sum() / np.pi) * film.step for view in ("AP", "LAT")}


@pytest.mark.parametrize("offset", [-100.0, 0.0, 120.0])
def test_a_sphere_is_magnified_by_sod_over_sod_minus_its_distance_towards_the_source(offset: float) -> None:
    # AP: the source is anterior (-y); LAT: on the -x side. A sphere moved towards the source by d
    # (y = -d on AP, x = -d on LAT) grows by SOD / (SOD - d); the parallel beam never magnifies.
    parallel = _sphere_width(_film(0.0), (0.0, 0.0, 0.0))
    d = offset
    ap = _sphere_width(_film(SOD), (0.0, -d, 0.0))["AP"]
    lat = _sphere_width(_film(SOD), (-d, 0.0, 0.0))["LAT"]
    expected = SOD / (SOD - d)
    assert ap / parallel["AP"] == pytest.approx(expected, rel=0.03)
    assert lat / parallel["LAT"] == pytest.approx(expected, rel=0.03)
    assert _sphere_width(_film(0.0), (0.0, -d, 0.0))["AP"] == pytest.approx(parallel["AP"], rel=0.01)


def test_a_sphere_off_the_central_ray_moves_outwards_by_the_same_factor() -> None:
    film = _film(SOD)
    proj = Projections.empty(film)
    centre = np.array([0.0, -150.0, 80.0], np.float32)  # 150 mm towards the AP source, 80 mm above the ray

    def evaluate(x, y, z):
        return {"density": occupancy(ellipsoid_sdf(x, y, z, centre, (10, 10, 10)), 1.0)}

    project_block(film, proj, centre - 12, centre + 12, evaluate)
    rows, _ = np.nonzero(proj.attenuation["AP"] > 1.0)
    z_seen = film.z_top - (rows.mean() + 0.5) * film.step
    assert z_seen == pytest.approx(80.0 * SOD / (SOD - 150.0), abs=1.0)
    # the mapping of points (disk and line masks, truth.json) agrees with the rendered shadow
    row, _ = film.to_detector("AP", centre[None].astype(np.float64))[0]
    assert row == pytest.approx(rows.mean() + 0.5, abs=1.0)


SMALL = {"render_voxel_mm": 1.2, "pixel_spacing_mm": (0.6, 0.6)}


def test_divergent_studies_keep_masks_on_their_films_and_record_the_beam() -> None:
    parallel = generate_study(SynthConfig(**SMALL), 5, 1)
    divergent = generate_study(SynthConfig(projection="divergent", **SMALL), 5, 1)
    truth = divergent.truth
    assert truth["projection"] == "divergent" and 850.0 <= truth["source_isocentre_mm"] <= 1650.0
    assert parallel.truth["projection"] == "parallel" and "source_isocentre_mm" not in parallel.truth
    assert divergent.images["LAT"].shape == parallel.images["LAT"].shape  # same framing, other beam
    assert not np.array_equal(divergent.images["LAT"], parallel.images["LAT"])
    for name, mask in divergent.masks.items():
        assert mask.any(), name
    vertebra, disk = divergent.masks["Lat_Vertebra"], divergent.masks["Lat_Disk_Height"]
    # the disk spaces stay open between the bodies: the masks are the bodies' mid-plane sections, not
    # their whole shadows, whose oblique endplates would close them (about half the area then)
    assert disk.sum() > 0.8 * parallel.masks["Lat_Disk_Height"].sum()
    for level in truth["levels"]:  # each body's centre (point mapping) lies on its mask (rendering)
        if level["in_view_lat"] and level["in_roi"]:
            row, col = (int(round(x)) for x in level["center_lat_px"])
            assert vertebra[row, col], level["name"]


def test_bad_beam_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="projection"):
        SynthConfig(projection="cone")
    with pytest.raises(ValueError, match="source_isocentre_mm"):
        SynthConfig(projection="divergent", source_isocentre_mm=(100.0, 200.0))
